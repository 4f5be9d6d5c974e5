"""The lm_eval metric: the harness scores our loaded model, and its accuracy is the one we
compute by hand from the same model's log-likelihoods."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from expunge.audit.base import AuditContext
from expunge.audit.lm_eval import lm_eval_metric, primary_number, resolve_tasks
from expunge.data.formatting import FormatSettings
from expunge.errors import ConfigError
from expunge.models.tiny import tiny_model
from helpers import MC_DOCS

pytest.importorskip("lm_eval", reason="the lmeval extra is not installed")

DOCS = MC_DOCS


def write_task(folder: Path, name: str = "expunge_tiny_mc") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    spec = folder / f"{name}.yaml"
    spec.write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return spec


@torch.no_grad()
def hand_accuracy(model, tokenizer) -> float:
    """acc as the harness defines it: argmax over choices of log P(' ' + choice | question)."""
    correct = 0
    for doc in DOCS:
        context = tokenizer(doc["question"], add_special_tokens=False).input_ids
        scores = []
        for choice in doc["choices"]:
            whole = tokenizer(doc["question"] + " " + choice, add_special_tokens=False).input_ids
            ids = torch.tensor([whole])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
            targets = ids[0, 1:]
            picked = logp.gather(-1, targets[:, None])[:, 0]
            scores.append(float(picked[len(context) - 1 :].sum()))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == doc["answer"])
    return correct / len(DOCS)


def context(model, tokenizer, **options) -> AuditContext:
    return AuditContext(model=model, tokenizer=tokenizer, format=FormatSettings(),
                        options=options, batch_size=4, progress=False)  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_harness_accuracy_matches_hand_computed(tmp_path, seed) -> None:
    model, tokenizer = tiny_model("llama", seed=seed)
    model.eval()
    spec = write_task(tmp_path / "tasks")
    result = lm_eval_metric(context(model, tokenizer, tasks=[str(spec)]))
    assert result.value == pytest.approx(hand_accuracy(model, tokenizer))
    assert result.details["tasks"]["expunge_tiny_mc"]["metric"] == "acc"
    assert result.higher_is_better


def test_two_tasks_average_and_limit(tmp_path) -> None:
    model, tokenizer = tiny_model("llama", seed=0)
    model.eval()
    first = write_task(tmp_path / "a", "expunge_mc_a")
    second = write_task(tmp_path / "b", "expunge_mc_b")
    result = lm_eval_metric(context(model, tokenizer, tasks=[str(first), str(second)], limit=3))
    per_task = result.details["tasks"]
    assert set(per_task) == {"expunge_mc_a", "expunge_mc_b"}
    assert result.value == pytest.approx((per_task["expunge_mc_a"]["value"]
                                          + per_task["expunge_mc_b"]["value"]) / 2)  # fmt: skip
    assert result.details["n_samples"]["expunge_mc_a"]["effective"] == 3


def test_bad_task_options(tmp_path) -> None:
    model, tokenizer = tiny_model("llama", seed=0)
    with pytest.raises(ConfigError, match="needs tasks"):
        lm_eval_metric(context(model, tokenizer))
    with pytest.raises(ConfigError, match="does not exist"):
        lm_eval_metric(context(model, tokenizer, tasks=[str(tmp_path / "nope.yaml")]))
    (tmp_path / "bad.yaml").write_text("dataset_path: json\n")
    with pytest.raises(ConfigError, match="no 'task: NAME'"):
        resolve_tasks([str(tmp_path / "bad.yaml")], [])


def test_primary_number_prefers_acc() -> None:
    assert primary_number({"alias": "x", "acc_norm,none": 0.5, "acc,none": 0.25,
                           "acc_stderr,none": 0.1}) == ("acc", 0.25)  # fmt: skip
    assert primary_number({"alias": "x", "exact_match,strict": 0.75}) == ("exact_match", 0.75)
    with pytest.raises(ConfigError):
        primary_number({"alias": "x"})


def test_audit_command_records_lm_eval(tmp_path, capsys) -> None:
    from expunge.models.tiny import save_tiny_model
    from helpers import run_cli

    model_dir = save_tiny_model(tmp_path / "tiny", "llama")
    spec = write_task(tmp_path / "tasks")
    code, _, err = run_cli(
        ["audit", "--model", str(model_dir), "--metrics", "lm_eval,ppl", "--out",
         str(tmp_path / "audit"), f"options.lm_eval.tasks=[{spec}]", "progress=false"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    record = json.loads((tmp_path / "audit" / "record.json").read_text())
    assert 0.0 <= record["metrics"]["lm_eval"] <= 1.0
    assert "expunge_tiny_mc" in record["metric_details"]["lm_eval"]["tasks"]


def test_a_benchmark_imprint_brings_its_own_tasks(tmp_path) -> None:
    """WMDP-style: no tasks option, the imprint's lm_eval_tasks run, each kept in the details
    (the hazardous task and MMLU side by side); the value is their mean."""
    from expunge.data.examples import Example
    from expunge.imprints.knowledge import BenchmarkSource, KnowledgeImprint

    model, tokenizer = tiny_model("llama", seed=0)
    hazard = write_task(tmp_path / "a", "wmdp_like")
    kept = write_task(tmp_path / "b", "mmlu_like")
    imprint = KnowledgeImprint(
        forget=[Example(text="a hazardous paragraph")],
        benchmark=BenchmarkSource(name="wmdp", source=str(tmp_path), split="cyber",
                                  lm_eval_tasks=[str(hazard), str(kept)]),
    )  # fmt: skip
    ctx = context(model, tokenizer, limit=3)
    ctx.imprint = imprint
    result = lm_eval_metric(ctx)
    tasks = result.details["tasks"]
    assert set(tasks) == {"wmdp_like", "mmlu_like"}
    assert result.value == pytest.approx(
        (tasks["wmdp_like"]["value"] + tasks["mmlu_like"]["value"]) / 2
    )
