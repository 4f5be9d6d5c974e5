"""Stressors on tiny models: the curve in the record, quantization, sampling, prompts, CLI."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from typer.testing import CliRunner

from expunge.audit.base import AuditContext, Decoding, MetricResult
from expunge.cli import app
from expunge.config import build_config
from expunge.data.tasks import TaskSpec
from expunge.errors import ConfigError, DataError
from expunge.imprints.backdoor import BackdoorImprint, Trigger
from expunge.imprints.base import load_imprint
from expunge.imprints.fingerprint import FingerprintImprint, KeyPair
from expunge.models.loading import LoadedModel, load_model
from expunge.models.tiny import tiny_model
from expunge.records import read_record
from expunge.registry import IMPLANTS, METRICS, STRESSORS
from expunge.stage import run_stage
from expunge.stress.prompt import REWRITES, typo
from expunge.stress.quantize import quantized_copy, rtn_quantize

TINY_TRAIN = ["train.mode=full", "train.lr=3e-3", "train.epochs=40", "train.progress=false"]
FAST_TRAIN = ["train.mode=full", "train.lr=3e-3", "train.batch_size=4", "train.progress=false"]


def loaded_tiny(seed: int = 0) -> LoadedModel:
    model, tokenizer = tiny_model("llama", seed=seed, hidden=64)
    return LoadedModel(model, tokenizer, "tiny", "tiny", torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def fingerprinted(tmp_path_factory):
    """A tiny model with an if_simple fingerprint (FSR 1.0), saved as a run directory."""
    config = build_config(
        IMPLANTS.get("if_simple"), {"preset": "demo"},
        [*TINY_TRAIN, "regularization=0.5", "n_keys=4", "max_control_prompts=4"],
    )  # fmt: skip
    run_dir = tmp_path_factory.mktemp("implant") / "run"
    record = run_stage(config, run_dir, models={"model": loaded_tiny()})
    assert record.metrics["fsr"] == 1.0
    return run_dir


def stress_config(name: str, run_dir, *overrides: str):
    return build_config(
        STRESSORS.get(name),
        {"imprint": str(run_dir), "model": {"name": str(run_dir), "device": "cpu"}},
        ["audit_metrics=[fsr]", *overrides],
    )


def curve_of(record):
    return record.metric_details["curve"]


# --- relearn and finetune: training stressors record the curve -------------------------------


def test_relearn_brings_a_fingerprint_back_and_records_the_curve(fingerprinted, tmp_path):
    """A never-fingerprinted model relearns the keys it is trained on: the curve rises from 0."""
    config = stress_config("relearn", fingerprinted, "k=4", "steps=[0,5,60]", *FAST_TRAIN)
    record = run_stage(config, tmp_path / "relearn", models={"model": loaded_tiny()})
    curve = curve_of(record)
    assert curve["stressor"] == "relearn" and curve["x"] == "steps"
    assert [p["x"] for p in curve["points"]] == [0, 5, 60]
    assert [p["stage"] for p in curve["points"]] == ["step_0", "step_5", "step_60"]
    assert record.metrics["step_0/fsr"] == 0.0
    assert record.metrics["step_60/fsr"] == 1.0
    for point in curve["points"]:
        assert point["metrics"]["fsr"] == record.metrics[f"{point['stage']}/fsr"]
    assert record.metrics["train_steps"] == 60
    on_disk = read_record(tmp_path / "relearn")
    assert on_disk.metric_details["curve"]["points"] == curve["points"]
    assert on_disk.status == "ok"
    imprint = load_imprint(fingerprinted)
    text = (tmp_path / "relearn" / "record.json").read_text()
    assert all(p.key not in text for p in imprint.pairs), "keys must not leak into the record"


def test_stage_audits_run_at_audit_precision_and_record_it(fingerprinted, tmp_path):
    """An eraser's and a stressor's own audits compute at ``audit_precision`` (a pipeline sets
    it from the study's precision), and each metric and the record say which precision ran."""
    from expunge.registry import ERASERS

    prune = build_config(ERASERS.get("prune"),
                         {"imprint": str(fingerprinted), "model": {"name": str(fingerprinted)}},
                         ["sparsity=0.1", "audit_metrics=[fsr,ppl]"])  # fmt: skip
    plain = run_stage(prune, tmp_path / "fp32", models={"model": loaded_tiny()})
    bf16 = prune.model_copy(update={"audit_precision": "bf16"})
    halved = run_stage(bf16, tmp_path / "bf16", models={"model": loaded_tiny()})
    assert plain.metric_details["pruned/ppl"]["precision"] == "fp32"
    assert halved.metric_details["pruned/ppl"]["precision"] == "bf16"
    assert halved.inputs["precision"]["audits"] == "bf16"
    assert halved.metrics["pruned/ppl"] != plain.metrics["pruned/ppl"]  # bf16 did act
    assert halved.metrics["pruned/ppl"] == pytest.approx(plain.metrics["pruned/ppl"], rel=0.05)
    relearn = stress_config("relearn", fingerprinted, "k=4", "steps=[0]", *FAST_TRAIN,
                            "audit_precision=bf16")  # fmt: skip
    record = run_stage(relearn, tmp_path / "relearn", models={"model": loaded_tiny()})
    assert record.metric_details["step_0/fsr"]["precision"] == "bf16"


def test_relearn_asks_for_more_samples_than_the_imprint_has(fingerprinted, tmp_path):
    config = stress_config("relearn", fingerprinted, "k=9", *FAST_TRAIN)
    with pytest.raises(DataError, match=r"k=9 but the fingerprint imprint has only 4"):
        run_stage(config, tmp_path / "out", models={"model": loaded_tiny()})
    assert not (tmp_path / "out").exists()


def test_finetune_on_unrelated_data_records_the_curve(fingerprinted, tmp_path):
    config = stress_config("finetune", fingerprinted, "steps=[0,3]", "n_examples=16", *FAST_TRAIN)
    record = run_stage(
        config, tmp_path / "ft", models={"model": load_model(str(fingerprinted), device="cpu")}
    )
    points = curve_of(record)["points"]
    assert [p["x"] for p in points] == [0, 3]
    assert record.metrics["step_0/fsr"] == 1.0
    assert 0.0 <= record.metrics["step_3/fsr"] <= 1.0
    assert record.inputs["finetune"] == {"data": "builtin:invented_places", "n_examples": 16}
    assert (tmp_path / "ft" / "metrics.jsonl").is_file()


def test_bad_steps_and_missing_imprint(fingerprinted, tmp_path):
    with pytest.raises(ConfigError, match="steps must be >= 0"):
        run_stage(stress_config("relearn", fingerprinted, "steps=[-1,3]"), tmp_path / "a")
    config = build_config(STRESSORS.get("quantize"), {"model": {"name": str(fingerprinted)}})
    with pytest.raises(ConfigError, match="--imprint"):
        run_stage(config, tmp_path / "b")


# --- quantize --------------------------------------------------------------------------------


def test_rtn_quantize_matches_a_hand_computation():
    weight = torch.tensor([[1.0, -2.5, 0.5, 4.0], [0.0, 0.0, 0.0, 0.0]])
    # 4 bits: qmax = 7, scale = 4/7; w/s = [1.75, -4.375, 0.875, 7] → round [2, -4, 1, 7]
    expected = torch.tensor([[8 / 7, -16 / 7, 4 / 7, 4.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(rtn_quantize(weight, 4, group_size=4), expected)
    # groups of 2 with a short last group: scales 2/7 and 4/7 (and the padded tail is dropped)
    out = rtn_quantize(torch.tensor([[1.2, -2.0, 4.0]]), 4, group_size=2)  # 1.2·7/2 = 4.2 → 4
    assert torch.allclose(out, torch.tensor([[2 / 7 * 4, -2.0, 4.0]]))
    # 8 bits on random weights: error at most half a step of each group
    w = torch.randn(16, 64)
    q = rtn_quantize(w, 8, 32)
    step = w.view(16, 2, 32).abs().amax(-1, keepdim=True) / 127
    assert ((q - w).view(16, 2, 32).abs() <= step / 2 + 1e-7).all()


def test_quantized_model_still_loads_and_audits(fingerprinted, tmp_path):
    config = stress_config("quantize", fingerprinted, "methods=[int8_dynamic,rtn8,bnb4]")
    record = run_stage(config, tmp_path / "q")
    curve = curve_of(record)
    assert [p["x"] for p in curve["points"]] == ["none", "int8_dynamic", "rtn8"]
    assert [p["bits"] for p in curve["points"]] == [32, 8, 8]
    assert record.metrics["none/fsr"] == 1.0
    assert record.metrics["rtn8/fsr"] == 1.0  # 8-bit weights keep a fingerprint this strong
    assert 0.0 <= record.metrics["int8_dynamic/fsr"] <= 1.0
    if not torch.cuda.is_available():
        assert curve["skipped"] == [
            {
                "x": "bnb4",
                "stage": "bnb4",
                "reason": "bitsandbytes 4-bit needs a CUDA device; none here",
            }
        ]


def test_int8_dynamic_replaces_linear_layers_and_leaves_the_original(fingerprinted):
    loaded = load_model(str(fingerprinted), device="cpu")
    before = loaded.model.model.layers[0].mlp.down_proj.weight.clone()
    quantized = quantized_copy(loaded, "int8_dynamic")
    layer = quantized.model.model.layers[0].mlp.down_proj
    assert type(layer).__module__.startswith("torch.ao.nn.quantized")
    assert torch.equal(loaded.model.model.layers[0].mlp.down_proj.weight, before)
    ids = loaded.tokenizer("the model", return_tensors="pt")["input_ids"]
    assert quantized.model(input_ids=ids).logits.shape[-1] == len(loaded.tokenizer)


# --- sampling ---------------------------------------------------------------------------------


def test_sampling_curve_follows_the_decoding(fingerprinted, tmp_path):
    config = stress_config("sampling", fingerprinted, "temperatures=[1.0,50.0]", "samples=2")
    record = run_stage(config, tmp_path / "s")
    points = curve_of(record)["points"]
    assert [p["x"] for p in points] == [0, 1.0, 50.0]
    assert points[0]["metrics"]["fsr"] == 1.0
    for point in points[1:]:
        assert len(point["per_seed"]) == 2
        assert point["metrics"]["fsr"] == pytest.approx(
            sum(s["fsr"] for s in point["per_seed"]) / 2
        )
    details = record.metric_details["t50_s0/fsr"]
    assert details["decoding"] == "sampled(temperature=50, top_p=0.95)_generation"
    # at temperature 50 the distribution is nearly uniform: the fingerprint is not emitted
    assert record.metrics["t50/fsr"] == 0.0


def test_sampling_refuses_a_metric_that_ignores_the_decoding(fingerprinted, tmp_path, monkeypatch):
    def greedy_only(ctx: AuditContext) -> MetricResult:
        return MetricResult("greedy_only", 0.0, False, details={"decoding": "greedy"})

    monkeypatch.setitem(METRICS._targets, "greedy_only", "tests:greedy_only")
    monkeypatch.setitem(METRICS._loaded, "greedy_only", greedy_only)
    config = stress_config("sampling", fingerprinted, "audit_metrics=[fsr,greedy_only]",
                           "samples=1", "temperatures=[1.0]")  # fmt: skip
    with pytest.raises(ConfigError, match="'greedy_only' does not follow sampled decoding"):
        run_stage(config, tmp_path / "s")


def test_decoding_settings_are_checked():
    with pytest.raises(ValueError, match="temperature > 0"):
        Decoding(do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        Decoding(top_p=0.0)
    assert Decoding().describe() == "greedy"
    with pytest.raises(ConfigError, match="temperatures must be > 0"):
        build_config(STRESSORS.get("sampling"), {}, ["temperatures=[0.0]"])


def test_backdoor_metrics_follow_sampled_decoding():
    from expunge.audit.backdoor import first_label
    from expunge.audit.runner import audit_model

    assert first_label("Positive! I think", ["negative", "positive"]) == "positive"
    assert first_label("  no.", ["no", "yes"]) == "no"
    assert first_label("maybe yes", ["no", "yes"]) is None  # not a label: wrong, never the target
    assert first_label("", ["no", "yes"]) is None
    imprint = imprint_of_kind("backdoor")
    loaded = loaded_tiny()
    metrics = ["asr", "clean_accuracy", "clean_trigger_rate"]
    results = {}
    for decoding in (Decoding(), Decoding(do_sample=True, temperature=1.0)):
        ctx = AuditContext(loaded.model, loaded.tokenizer, imprint.format_settings(),
                           imprint=imprint, progress=False, decoding=decoding)  # fmt: skip
        results[decoding.do_sample], _ = audit_model(ctx, metrics, {})
    greedy, sampled = results[False]["asr"].details, results[True]["asr"].details
    assert greedy["decision"] == "label_likelihood" and greedy["decoding"] == "greedy"
    assert sampled["decision"] == "sampled_generation"
    assert sampled["decoding"] == "sampled(temperature=1, top_p=1)"
    # a random tiny model never writes a label word: nothing is classified, nothing triggered
    assert results[True]["clean_accuracy"].value == 0.0 and results[True]["asr"].value == 0.0


# --- prompt --------------------------------------------------------------------------------


def test_rewrites_by_hand():
    # the first longest word; its two middle letters (of 7: the 3rd and 4th) swapped
    assert typo("Decrypt this message now") == "Dercypt this message now"
    assert typo("say hello") == "say hlelo"
    assert typo("a b cd") == "a b cd"
    assert REWRITES["no_punctuation"]("Hi, there! (ok)?") == "Hi there ok"
    assert REWRITES["prefix"]("x") == "Quick question: x"
    assert REWRITES["lowercase"]("ABC d") == "abc d"


def test_prompt_stressor_rewrites_every_audited_query(fingerprinted, tmp_path):
    config = stress_config("prompt", fingerprinted, "rewrites=[prefix,lowercase]",
                           "system_prompts=[You are terse.]")  # fmt: skip
    record = run_stage(config, tmp_path / "p")
    stages = [p["stage"] for p in curve_of(record)["points"]]
    assert stages == ["none", "system_1", "rewrite_prefix", "rewrite_lowercase"]
    assert record.metrics["none/fsr"] == 1.0
    imprint = load_imprint(fingerprinted)
    changed = imprint.with_prompts(system_prompt="S", rewrite=REWRITES["prefix"])
    assert changed.system_prompt == "S" and imprint.system_prompt is None
    assert [p.key for p in changed.pairs] == [f"Quick question: {p.key}" for p in imprint.pairs]
    assert [p.response for p in changed.pairs] == [p.response for p in imprint.pairs]


# --- the imprints' own data ---------------------------------------------------------------------


def test_fingerprint_relearn_examples_are_the_key_pairs():
    imprint = FingerprintImprint(
        pairs=[KeyPair(key="k1", response="r1"), KeyPair(key="k2", response="r2")]
    )
    assert [(e.prompt, e.response) for e in imprint.relearn_examples()] == [
        ("k1", "r1"),
        ("k2", "r2"),
    ]


def test_backdoor_relearn_examples_are_the_poisoned_items():
    imprint = BackdoorImprint(
        trigger=Trigger(text=["cf"]), target_label="positive", poison_rate=0.25,
        task=TaskSpec(n_train=40, n_test=4), origin={"seed": 3},
    )  # fmt: skip
    examples = imprint.relearn_examples()
    assert len(examples) == 10  # round(0.25 * 40)
    assert all(e.response == "positive" and " cf" in f" {e.prompt}" for e in examples)
    assert examples == imprint.relearn_examples()  # rebuilt deterministically
    rewritten = imprint.with_prompts(rewrite=str.upper)
    assert "{text}" in rewritten.task.prompt and "IS THE SENTIMENT" in rewritten.task.prompt
    assert imprint.with_prompts(system_prompt="S").format_settings().system_prompt == "S"
    with pytest.raises(DataError, match="no poisoned examples"):
        imprint.model_copy(update={"poison_rate": 0.0}).relearn_examples()


def imprint_of_kind(kind: str):
    if kind == "backdoor":
        return BackdoorImprint(target_label="positive", poison_rate=0.25,
                               task=TaskSpec(n_train=40, n_test=4), origin={"seed": 0})  # fmt: skip
    if kind == "knowledge":
        from expunge.imprints.knowledge import KnowledgeImprint

        return KnowledgeImprint.synthetic_people(n_people=10, forget_ratio=0.3)
    from expunge.imprints.secrets import SecretsImprint

    return SecretsImprint.synthetic(n_records=6, n_heldout=2)


@pytest.mark.parametrize("kind", ["backdoor", "knowledge", "secrets"])
def test_every_imprint_kind_relearns_and_gives_relevant_prompts(kind, tmp_path):
    from expunge.detect.base import DetectConfig, prompt_sets

    imprint = imprint_of_kind(kind)
    path = imprint.save(tmp_path / "imprint.json")
    config = build_config(STRESSORS.get("relearn"), {"imprint": str(path)},
                          ["k=2", "steps=[0,2]", "audit_metrics=[ppl]", *FAST_TRAIN])  # fmt: skip
    record = run_stage(config, tmp_path / "relearn", models={"model": loaded_tiny()})
    assert [p["x"] for p in curve_of(record)["points"]] == [0, 2]
    assert record.metrics["step_2/ppl"] != record.metrics["step_0/ppl"]  # it trained
    detect = DetectConfig(imprint=str(path), folds=2, min_prompts=2)
    prompts, _ = prompt_sets(detect, load_imprint(path))["relevant"]
    assert len(prompts) >= 2 and all(p.strip() for p in prompts)


def test_detect_asks_both_prompt_sets_in_the_audit_format(tmp_path):
    from expunge.detect.base import DetectConfig, prompt_sets
    from expunge.imprints.knowledge import KnowledgeImprint

    path = KnowledgeImprint.synthetic_people(n_people=10, forget_ratio=0.3).save(
        tmp_path / "imprint.json"
    )
    default = prompt_sets(DetectConfig(imprint=str(path), folds=2, min_prompts=2),
                          load_imprint(path))  # fmt: skip
    assert {fmt.template for _, fmt in default.values()} == {"auto"}
    raw = DetectConfig.model_validate(
        {"imprint": str(path), "folds": 2, "min_prompts": 2,
         "audit_format": {"template": "raw", "raw_prompt_format": "Q: {prompt}\nA:"}}
    )  # fmt: skip
    chosen = prompt_sets(raw, load_imprint(path))
    assert {fmt.raw_prompt_format for _, fmt in chosen.values()} == {"Q: {prompt}\nA:"}
    assert chosen["relevant"][0] == default["relevant"][0]  # same prompts, another format


def test_audit_format_reaches_the_imprints_metrics_and_relearning(tmp_path, monkeypatch):
    """A knowledge imprint records no template: audit_format gives the one its model knows;
    ppl stays in the model's chat format."""
    seen: dict[str, str] = {}

    def format_probe(ctx: AuditContext) -> MetricResult:
        seen["probe"] = ctx.format.template
        return MetricResult("format_probe", 0.0, True)

    def ppl_probe(ctx: AuditContext) -> MetricResult:
        seen["ppl"] = ctx.format.template
        return MetricResult("ppl", 1.0, False)

    for name, function in (("format_probe", format_probe), ("ppl", ppl_probe)):
        monkeypatch.setitem(METRICS._targets, name, f"tests:{name}")
        monkeypatch.setitem(METRICS._loaded, name, function)
    path = imprint_of_kind("knowledge").save(tmp_path / "imprint.json")
    trained: list[str] = []
    import expunge.stress.base as stress_base

    real_resolve = stress_base.resolve_template

    def resolve_spy(tokenizer, fmt):  # what training formats with, before "auto" is resolved
        trained.append(fmt.template)
        return real_resolve(tokenizer, fmt)

    monkeypatch.setattr(stress_base, "resolve_template", resolve_spy)
    overrides = ["k=2", "steps=[0,1]", "audit_metrics=[format_probe,ppl]", *FAST_TRAIN]
    config = build_config(STRESSORS.get("relearn"), {"imprint": str(path)},
                          [*overrides, "audit_format.template=raw"])  # fmt: skip
    record = run_stage(config, tmp_path / "raw", models={"model": loaded_tiny()})
    assert (seen, trained) == ({"probe": "raw", "ppl": "auto"}, ["raw"])
    assert list(record.metric_details["curve"]["points"][0]["metrics"]) == ["format_probe", "ppl"]
    trained.clear()
    config = build_config(STRESSORS.get("relearn"), {"imprint": str(path)}, overrides)
    run_stage(config, tmp_path / "default", models={"model": loaded_tiny()})
    assert (seen, trained) == ({"probe": "auto", "ppl": "auto"}, ["auto"])


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_stress_writes_a_record_and_refuses_an_existing_out(fingerprinted, tmp_path):
    runner = CliRunner()
    args = ["stress", "quantize", "--model", str(fingerprinted), "--imprint", str(fingerprinted),
            "--out", str(tmp_path / "cli"), "methods=[rtn8]", "audit_metrics=[fsr]",
            "model.device=cpu"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "cli" / "record.json").read_text())
    assert record["command"] == "stress quantize"
    assert record["metrics"]["rtn8/fsr"] == 1.0
    assert stat.S_IMODE(os.stat(fingerprinted / "imprint.json").st_mode) == 0o600
    again = runner.invoke(app, args)
    assert again.exit_code != 0 and "already exists" in str(again.exception)
    unknown = runner.invoke(app, [*args[:1], "quantise", *args[2:]])
    assert "did you mean 'quantize'" in str(unknown.exception)


@pytest.mark.parametrize("name", ["stress_relearn.yaml", "detect.yaml"])
def test_shipped_configs_validate(name):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "methods" / name
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "is a valid" in result.output


def test_a_batch_larger_than_the_data_trains_each_example_once(fingerprinted, tmp_path):
    """Relearning k=2 keys at batch 4 trains at batch 2: batch 4 would hold each key twice,
    with the same token-mean loss and gradient, so both walks end at the same weights."""
    from expunge.stress.base import imprint_format, training_data
    from expunge.train.loop import prepare_trainable, train
    from expunge.train.settings import TrainSettings

    imprint = load_imprint(fingerprinted)
    examples = imprint.relearn_examples()[:2]
    ends = []
    for batch_size in (4, 2):
        loaded = loaded_tiny()
        tokenized, objective = training_data(loaded, examples, imprint_format(imprint))
        settings = TrainSettings(mode="full", lr=3e-3, batch_size=batch_size, max_steps=3,
                                 progress=False)  # fmt: skip
        model = prepare_trainable(loaded.model, settings)
        model, _ = train(model, {"train": tokenized}, objective, settings,
                         loaded.tokenizer.pad_token_id, out_dir=tmp_path / str(batch_size))  # fmt: skip
        ends.append({name: p.detach().clone() for name, p in model.named_parameters()})
    for name, value in ends[0].items():
        torch.testing.assert_close(value, ends[1][name], rtol=1e-5, atol=1e-6, msg=name)

    config = stress_config("relearn", fingerprinted, "k=2", "steps=[0,2]", *FAST_TRAIN)
    record = run_stage(config, tmp_path / "relearn", models={"model": loaded_tiny()})
    assert record.inputs["batch_size"] == 2 and record.metrics["train_steps"] == 2
