"""``expunge demo unlearning`` (configs/demos/unlearning.yaml) end to end on a tiny model saved to
disk: every stage is a run directory, the retrained model is the reference of the others, the
tables and plots are written; bad edits fail before any work."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from expunge.audit.runner import AuditConfig
from expunge.cli import app
from expunge.errors import ConfigError
from expunge.models.loading import save_model
from expunge.models.tiny import tiny_model
from expunge.pipeline import load_pipeline, plan_pipeline, run_pipeline
from expunge.records import read_record
from expunge.stage import run_stage
from helpers import DEMOS

TINY = [
    "imprint.implant.n_people=4", "imprint.implant.n_holdout=1",
    "imprint.implant.train.max_steps=2", "imprint.implant.train.progress=false",
    "stages.retrained.train.max_steps=2", "stages.retrained.train.progress=false",
    "audit.options.retain_qa_acc.max_examples=5", "audit.options.forget_qa_acc.max_new_tokens=4",
    "audit.reference.options.retain_qa_acc.max_examples=5",
    "erasers=[{name: GA, method: unlearn, objective: ga, audit_metrics: [ppl],"
    " train: {max_steps: 2, progress: false}},"
    " {name: RMU, method: unlearn, objective: rmu, rmu: {layer: 1}, audit_metrics: [ppl],"
    " train: {max_steps: 2, progress: false}},"
    " {name: GA-coreset-20pct, method: unlearn, objective: ga, audit_metrics: [ppl],"
    " coreset: {method: random, ratio: 0.2, match_steps: true},"
    " train: {max_steps: 2, progress: false}}]",
    "report.tables.0.rows=[{label: retrained (gold standard), stage: audit/reference},"
    " {label: GA, stage: audit/GA}, {label: GA (20% coreset), stage: audit/GA-coreset-20pct}]",
]  # fmt: skip


def test_demo_on_a_tiny_model(tmp_path) -> None:
    model, tok = tiny_model("llama", seed=0)
    save_model(model, tok, tmp_path / "base")
    config, locate = load_pipeline(DEMOS / "unlearning.yaml",
                                   [f"model.name={tmp_path / 'base'}", *TINY])  # fmt: skip
    out = tmp_path / "demo"
    run_pipeline(config, out, locate=locate)
    for name in ("implant", "retrained", "audit/reference", "audit/imprinted", "erase/GA",
                 "erase/RMU", "erase/GA-coreset-20pct", "audit/RMU"):  # fmt: skip
        assert read_record(out / name).status == "ok", name
    assert (out / "report.md").is_file()
    assert any(p.stat().st_size > 1000 for p in (out / "report_files").glob("*.png"))
    retrained = read_record(out / "audit/reference")
    assert "truth_ratio" in retrained.metrics and "forget_mia_auc" in retrained.metrics
    ga = read_record(out / "audit/GA")
    assert ga.metric_details["forget_quality"]["reference"].startswith("record ")
    assert read_record(out / "implant").inputs["n_examples"] == 4 * 6  # 4 people, bio + 5 Q/A
    assert read_record(out / "retrained").inputs["n_examples"] == 3 * 6
    coreset = read_record(out / "erase/GA-coreset-20pct")
    assert coreset.inputs["coreset"]["n_selected"] == 1  # round(0.2 * 6)
    assert read_record(out / "erase/GA").metrics["train_steps"] == 2
    report = (out / "report.md").read_text()
    assert "| retrained (gold standard) |" in report and "| GA (20% coreset) |" in report
    # the retrained model against its own record: forget quality 1 by definition
    own = AuditConfig(model={"name": str(out / "retrained")},
                      imprint=str(out / "implant" / "imprint.json"), metrics=["forget_quality"],
                      format={"template": "raw"}, progress=False,
                      options={"forget_quality": {"reference": str(out / "audit/reference")}})  # fmt: skip
    assert run_stage(own, tmp_path / "self").metrics["forget_quality"] == 1.0


def test_bad_demo_edits_fail_before_any_work(tmp_path) -> None:
    config, locate = load_pipeline(DEMOS / "unlearning.yaml", ["erasers.GA.objective=SCRUB"])
    with pytest.raises(ConfigError, match="unknown objective 'SCRUB'"):
        plan_pipeline(config, tmp_path / "run", locate)
    with pytest.raises(ConfigError, match="no entry named 'SCRUB'"):
        load_pipeline(DEMOS / "unlearning.yaml", ["erasers.SCRUB.train.lr=1"])
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(app, ["demo", "unlearnin", "-o", str(tmp_path / "x")])
    assert isinstance(result.exception, ConfigError)
    assert "did you mean 'unlearning'" in str(result.exception)
