"""``expunge demo unlearning`` end to end on a tiny model saved to disk: every stage is a run
directory, the retrained model is the reference of the others, the table, report and plot are
written; the shipped YAML is the config class's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from expunge.cli import app
from expunge.config import build_config, load_yaml
from expunge.demo_unlearning import UnlearningDemoConfig, run_unlearning_demo
from expunge.errors import ConfigError
from expunge.models.loading import save_model
from expunge.models.tiny import tiny_model
from expunge.records import read_record

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "unlearning_demo.yaml"


def test_shipped_yaml_is_the_default_config() -> None:
    from_yaml = build_config(UnlearningDemoConfig, load_yaml(CONFIG), source=str(CONFIG))
    assert from_yaml == UnlearningDemoConfig()
    text = CONFIG.read_text()
    assert text.startswith("# expunge demo unlearning")  # opens with the command that runs it


def test_demo_on_a_tiny_model(tmp_path) -> None:
    model, tok = tiny_model("llama", seed=0)
    save_model(model, tok, tmp_path / "base")
    cfg = build_config(
        UnlearningDemoConfig, {"model": {"name": str(tmp_path / "base")}},
        ["world.n_people=4", "world.n_holdout=1", "finetune.max_steps=2",
         "finetune.progress=false", "unlearn_overrides=[train.max_steps=2,train.progress=false]",
         "methods={GA: [objective=ga], RMU: [objective=rmu, rmu.layer=1]}",
         "coreset_method=GA", "coreset_ratio=0.2", "audit.max_retain=5",
         "audit.max_new_tokens=4"],
    )  # fmt: skip
    record = run_unlearning_demo(cfg, tmp_path / "demo")
    out = tmp_path / "demo"
    for name in ("finetuned", "retrained", "audit_retrained", "audit_finetuned", "unlearn_ga",
                 "unlearn_rmu", "unlearn_ga_20_coreset", "audit_unlearn_rmu"):  # fmt: skip
        assert read_record(out / name).status == "ok", name
    assert (out / "report.md").is_file() and (out / "unlearning.png").stat().st_size > 1000
    retrained = read_record(out / "audit_retrained")
    assert "truth_ratio" in retrained.metrics and "forget_mia_auc" in retrained.metrics
    ga = read_record(out / "audit_unlearn_ga")
    assert ga.metric_details["forget_quality"]["reference"].startswith("record ")
    assert read_record(out / "finetuned").inputs["n_examples"] == 4 * 6  # 4 people, bio + 5 Q/A
    assert read_record(out / "retrained").inputs["n_examples"] == 3 * 6
    coreset = read_record(out / "unlearn_ga_20_coreset")
    assert coreset.inputs["coreset"]["n_selected"] == 1  # round(0.2 * 6)
    assert record.metrics["retrained (gold standard)/forget_quality"] == 1.0
    assert record.metrics["GA/train_steps"] == 2
    report = (out / "report.md").read_text()
    assert "| retrained (gold standard) |" in report and "| GA (20% coreset) |" in report


def test_bad_demo_configs_fail_before_any_work(tmp_path) -> None:
    with pytest.raises(ConfigError, match="coreset_method"):
        build_config(UnlearningDemoConfig, {}, ["coreset_method=SCRUB"])
    with pytest.raises(ConfigError, match="methods is empty"):
        build_config(UnlearningDemoConfig, {}, ["methods={}", "coreset_method=null"])
    result = CliRunner().invoke(app, ["demo", "unlearnin", "-o", str(tmp_path / "x")])
    assert isinstance(result.exception, ConfigError)
    assert "did you mean 'unlearning'" in str(result.exception)
