"""``expunge erase unlearn`` on tiny models: knowledge imprints, the four objectives and ILU
through which tensors train, and bad inputs (empty forget set, forget/retain overlap,
RMU patterns that match nothing, beta <= 0, a missing retain set)."""

from __future__ import annotations

import json

import pytest
import torch

from expunge.config import build_config
from expunge.data import FormatSettings, collate, tokenize_examples
from expunge.data.loaders import write_jsonl
from expunge.errors import ConfigError, DataError
from expunge.imprints.base import load_imprint
from expunge.imprints.knowledge import KnowledgeImprint
from expunge.models.loading import LoadedModel
from expunge.models.tiny import tiny_model
from expunge.registry import ERASERS
from expunge.stage import run_stage
from expunge.train.objectives import token_nll

FAST = ["train.max_steps=4", "train.progress=false", "train.batch_size=4", "audit_metrics=[ppl]"]


def loaded_tiny() -> LoadedModel:
    model, tok = tiny_model("llama", seed=0)
    return LoadedModel(model, tok, "tiny", "tiny", torch.device("cpu"), torch.float32)


@pytest.fixture
def world(tmp_path):
    imprint = KnowledgeImprint.synthetic_people(n_people=6, forget_ratio=0.34, seed=0)
    return imprint, imprint.save(tmp_path / "world")


def config(*overrides: str, preset: str = "demo"):
    return build_config(ERASERS.get("unlearn"), {"preset": preset}, [*FAST, *overrides])


@torch.no_grad()
def mean_nll(model, tok, examples) -> float:
    batch = collate(tokenize_examples(examples, tok, FormatSettings()), tok.pad_token_id)
    nll, mask = token_nll(model, batch)
    return float((nll * mask).sum() / mask.sum())


def test_knowledge_imprint_round_trips_and_summarizes(world) -> None:
    imprint, path = world
    loaded = load_imprint(path)
    assert isinstance(loaded, KnowledgeImprint)
    assert loaded.forget == imprint.forget and loaded.retain == imprint.retain
    assert loaded.summary() == {"kind": "knowledge", "scheme": "synthetic_people",
                                "n_forget": 10, "n_retain": 20, "n_holdout": 0, "forget_kinds": ["prompt_response"]}  # fmt: skip
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_npo_unlearns_the_imprint_forget_set_with_lora(world, tmp_path) -> None:
    imprint, path = world
    loaded = loaded_tiny()
    sets = (imprint.forget, imprint.retain)
    before = [mean_nll(loaded.model, loaded.tokenizer, s) for s in sets]
    cfg = config(f"imprint={path}", "objective=npo", "train.lr=5e-2", "npo.retain_weight=0.5",
                 "train.max_steps=8")  # fmt: skip
    record = run_stage(cfg, tmp_path / "out", models={"model": loaded})
    after = [mean_nll(loaded.model, loaded.tokenizer, s) for s in sets]
    # forget and retain share templates, so what matters is the gap: forget rises against retain
    assert after[0] - before[0] > after[1] - before[1] + 0.1, (before, after)
    assert record.inputs["n_forget"] == 10 and record.inputs["n_retain"] == 20
    assert record.inputs["forget_retain_overlap"] == 0
    assert record.metrics["train_steps"] == 8
    # the frozen reference's cache: NPO asks only for exact label log-probs (no top-k to report),
    # computed once per example and reused
    cache = record.inputs["training"]["train"]["reference_cache"]
    assert cache["served"] == ["label_logprobs"] and "mode" not in cache
    # one entry per forget example; a row drawn twice into one batch misses twice
    assert cache["entries"] == 10 and cache["misses"] >= 10 and cache["hits"] > 0
    assert record.inputs["training"]["train"]["precision"] == "fp32"
    assert "train/forget/npo" in record.metrics and "train/retain/nll" in record.metrics
    assert "unlearned/ppl" in record.metrics
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "out" / "model" / "config.json").is_file()
    first = json.loads((tmp_path / "out" / "train" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["forget/npo"] == pytest.approx(2 / 0.1 * 0.6931471805599453, rel=1e-6)


def test_rmu_through_the_eraser_trains_only_its_tensors(world, tmp_path) -> None:
    _, path = world
    loaded = loaded_tiny()
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    cfg = config(f"imprint={path}", "objective=rmu", "rmu.layer=1", "rmu.alpha=10",
                 "train.mode=lora")  # fmt: skip
    record = run_stage(cfg, tmp_path / "out", models={"model": loaded})
    after = dict(loaded.model.named_parameters())
    changed = sorted(n for n in before if not torch.equal(before[n], after[n].detach()))
    expected = ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    assert changed == expected == record.inputs["rmu_trained_tensors"]
    assert not (tmp_path / "out" / "adapter").exists()


@pytest.mark.parametrize("objective", ["ga", "graddiff"])
def test_ga_and_graddiff_run_full(world, tmp_path, objective: str) -> None:
    imprint, path = world
    loaded = loaded_tiny()
    before = mean_nll(loaded.model, loaded.tokenizer, imprint.forget)
    # lambda=1 (TOFU's): the demo's lambda=5 is sized for 20 epochs, not for FAST's few steps
    weight = ["graddiff.retain_weight=1"] if objective == "graddiff" else []
    cfg = config(f"imprint={path}", f"objective={objective}", "train.mode=full", "train.lr=3e-3",
                 *weight)  # fmt: skip
    record = run_stage(cfg, tmp_path / "out", models={"model": loaded})
    assert mean_nll(loaded.model, loaded.tokenizer, imprint.forget) > before
    assert ("train/retain/nll" in record.metrics) == (objective == "graddiff")


def test_npo_with_ilu_uses_auxiliary_streams(world, tmp_path) -> None:
    _, path = world
    aux = tmp_path / "aux.jsonl"
    write_jsonl(aux, [{"prompt": f"What is {i} plus {i}?", "response": f"It is {2 * i}."}
                      for i in range(6)])  # fmt: skip
    cfg = config(f"imprint={path}", "regularizer=ilu", f"ilu.data=[synthetic:places,{aux}]",
                 "ilu.max_examples=8", "ilu.weight=0.05")  # fmt: skip
    record = run_stage(cfg, tmp_path / "out", models={"model": loaded_tiny()})
    assert record.inputs["ilu_aux_sizes"] == [8, 6]
    assert record.metrics["train/aux0/irm_penalty"] >= 0
    assert "train/aux1/irm_penalty" in record.metrics


def test_forget_and_retain_files_with_overlap_warn_and_report(tmp_path) -> None:
    imprint = KnowledgeImprint.synthetic_people(n_people=4, forget_ratio=0.25, seed=1)
    forget, retain = tmp_path / "forget.jsonl", tmp_path / "retain.jsonl"
    write_jsonl(forget, imprint.forget)
    write_jsonl(retain, imprint.retain + imprint.forget[:3])
    cfg = config(f"forget={forget}", f"retain={retain}", "objective=graddiff")
    with pytest.warns(UserWarning, match="3 of 18 retain examples also appear in the forget set"):
        record = run_stage(cfg, tmp_path / "out", models={"model": loaded_tiny()})
    assert record.inputs["forget_retain_overlap"] == 3
    assert record.inputs["overlap_dropped"] is True
    assert record.inputs["n_retain"] == 15


# -- bad inputs -----------------------------------------------------------------------------------


def test_empty_forget_file_is_a_data_error(tmp_path) -> None:
    empty = tmp_path / "forget.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="holds no examples"):
        run_stage(
            config(f"forget={empty}", "objective=ga"),
            tmp_path / "out",
            models={"model": loaded_tiny()},
        )
    assert not (tmp_path / "out").exists()


def test_no_forget_set_at_all_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="needs a forget set"):
        run_stage(config("objective=ga"), tmp_path / "out", models={"model": loaded_tiny()})


def test_empty_forget_list_in_an_imprint_is_rejected(tmp_path) -> None:
    path = tmp_path / "imprint.json"
    path.write_text(json.dumps({"kind": "knowledge", "forget": [], "retain": []}))
    with pytest.raises(DataError, match="at least one example to forget"):
        load_imprint(path)


def test_objective_needing_retain_without_one_is_a_data_error(tmp_path) -> None:
    forget = tmp_path / "forget.jsonl"
    write_jsonl(forget, [{"text": "Megan Chang keeps a goat named Todd."}])
    with pytest.raises(DataError, match="needs a retain set"):
        run_stage(
            config(f"forget={forget}", "objective=rmu"),
            tmp_path / "o",
            models={"model": loaded_tiny()},
        )


def test_rmu_pattern_matching_nothing_names_real_parameters(world, tmp_path) -> None:
    _, path = world
    cfg = config(f"imprint={path}", "objective=rmu", "rmu.layer=1", "rmu.params=[mlp.c_proj]")
    with pytest.raises(
        ConfigError, match=r"matches no parameter.*model\.layers\.0\.mlp\.down_proj"
    ):
        run_stage(cfg, tmp_path / "out", models={"model": loaded_tiny()})


@pytest.mark.parametrize("beta", ["0", "-0.5"])
def test_npo_beta_not_positive_is_a_config_error(beta: str) -> None:
    with pytest.raises(ConfigError, match="beta must be > 0"):
        config(f"npo.beta={beta}")


def test_presets_pick_objective_defaults_and_user_values_win() -> None:
    paper_rmu = build_config(ERASERS.get("unlearn"), {"objective": "rmu"})
    assert (paper_rmu.train.max_steps, paper_rmu.train.lr, paper_rmu.train.mode) == (
        150,
        5e-5,
        "full",
    )
    assert (paper_rmu.rmu.steering_coeff, paper_rmu.rmu.alpha, paper_rmu.rmu.layer) == (
        6.5,
        1200.0,
        7,
    )
    paper_npo = build_config(ERASERS.get("unlearn"), {}, ["train.lr=2e-5"])
    assert (paper_npo.train.epochs, paper_npo.train.lr, paper_npo.npo.beta) == (10, 2e-5, 0.1)
    with pytest.raises(ConfigError, match=r"leave train\.trainable unset"):
        build_config(ERASERS.get("unlearn"), {"objective": "rmu"}, ["train.trainable=[lm_head]"])
    with pytest.raises(ConfigError, match="objective"):
        build_config(ERASERS.get("unlearn"), {}, ["objective=npoo"])


def test_demo_preset_has_measured_settings_per_objective_and_user_values_win() -> None:
    def demo(objective: str, *overrides: str):
        return build_config(ERASERS.get("unlearn"), {"preset": "demo", "objective": objective},
                            list(overrides))  # fmt: skip

    simnpo, graddiff, ga = demo("simnpo"), demo("graddiff"), demo("ga")
    assert (simnpo.train.lr, simnpo.train.epochs, simnpo.simnpo.retain_weight) == (1e-3, 20, 1.0)
    assert (graddiff.train.lr, graddiff.train.epochs) == (2e-4, 20)
    assert graddiff.graddiff.retain_weight == 5.0
    assert (ga.train.lr, ga.train.epochs) == (1e-4, 5)  # no measured setting holds retain for GA
    for objective in ("idknll", "idkdpo"):
        assert (demo(objective).train.lr, demo(objective).train.epochs) == (1e-3, 20)
    assert all(c.train.mode == "lora" for c in (simnpo, graddiff, ga))
    mine = demo("graddiff", "graddiff.retain_weight=2", "train.epochs=3")
    assert (mine.graddiff.retain_weight, mine.train.epochs, mine.train.lr) == (2.0, 3, 2e-4)


def test_knowledge_imprint_gets_knowledge_audits_before_and_after(tmp_path) -> None:
    imprint = KnowledgeImprint.synthetic_people(n_people=3, forget_ratio=0.34, seed=0)
    path = imprint.save(tmp_path / "world")
    cfg = build_config(
        ERASERS.get("unlearn"), {"preset": "demo"},
        [f"imprint={path}", "objective=ga", "train.max_steps=2", "train.progress=false"],
    )  # fmt: skip
    record = run_stage(cfg, tmp_path / "out", models={"model": loaded_tiny()})
    for stage in ("input", "unlearned"):
        for name in ("forget_qa_acc", "retain_qa_acc", "forget_rouge_l", "retain_rouge_l", "ppl"):
            assert f"{stage}/{name}" in record.metrics
    assert record.metric_details["input/forget_qa_acc"]["n_examples"] == 5
