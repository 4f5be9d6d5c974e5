"""``expunge demo backdoor`` (configs/demos/backdoor.yaml) end to end on the tiny encoder, at the
smallest sizes: the shipped YAML with overrides, run through the pipeline."""

from __future__ import annotations

import json

import pytest

from expunge.errors import ConfigError
from expunge.pipeline import load_pipeline, plan_pipeline, run_pipeline
from helpers import DEMOS

TRAIN = "{mode: full, epochs: 1, batch_size: 8, progress: false}"
STUDY = "imprints.tiny-bert"
SMALL = [
    "imprints.smollm2.skip=true",
    f"{STUDY}.stages.pretrained.train={TRAIN}",
    f"{STUDY}.stages.pretrained.task.n_train=40",
    f"{STUDY}.stages.pretrained.task.n_test=10",
    f"{STUDY}.stages.clean.train={TRAIN}",
    f"{STUDY}.stages.clean.task.n_train=40",
    f"{STUDY}.stages.clean.task.n_test=10",
    f"{STUDY}.imprint.implant.train={TRAIN}",
    f"{STUDY}.imprint.implant.task.n_train=40",
    f"{STUDY}.imprint.implant.task.n_test=10",
    f"{STUDY}.erasers=[{{name: FT, method: finetune, train: {TRAIN}}},"
    f" {{name: rho-0.0, method: fine_mixing, ratio: 0.0, train: {TRAIN}}},"
    f" {{name: rho-1.0, method: fine_mixing, ratio: 1.0, train: {TRAIN}}}]",
    "report.tables.0.rows=[{label: clean fine-tune, stage: tiny-bert/clean},"
    " {label: backdoored, stage: tiny-bert/audit/imprinted},"
    " {label: FT, stage: tiny-bert/audit/FT}]",
]  # fmt: skip


def test_demo_writes_the_table_the_sweep_and_every_step(tmp_path):
    config, locate = load_pipeline(DEMOS / "backdoor.yaml", SMALL)
    out = tmp_path / "demo"
    run_pipeline(config, out, locate=locate)
    study = out / "tiny-bert"
    metrics = {step: json.loads((study / step / "record.json").read_text())["metrics"]
               for step in ("pretrained", "clean", "audit/imprinted")}  # fmt: skip
    erased = {name: json.loads((study / "audit" / name / "record.json").read_text())["metrics"]
              for name in ("FT", "rho-0.0", "rho-1.0")}  # fmt: skip
    for values in [*metrics.values(), *erased.values()]:
        assert {"asr", "clean_accuracy", "clean_trigger_rate"} <= set(values)
    top = json.loads((out / "record.json").read_text())["metrics"]
    assert top["tiny-bert/audit/imprinted/asr"] == metrics["audit/imprinted"]["asr"]
    report = (out / "report.md").read_text()
    assert "| backdoored |" in report and "| clean fine-tune |" in report
    assert "§" not in report  # the trigger is a secret
    sweeps = list((out / "report_files").glob("*sweep*fine_mixing*.png"))
    assert sweeps and sweeps[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ratio" in report  # the sweep's axis


def test_unknown_method_fails_before_training(tmp_path):
    config, locate = load_pipeline(DEMOS / "backdoor.yaml",
                                   [*SMALL, f"{STUDY}.erasers.FT.method=fine_mixin"])  # fmt: skip
    with pytest.raises(ConfigError, match="did you mean 'fine_mixing'"):
        run_pipeline(config, tmp_path / "demo", locate=locate)
    assert not (tmp_path / "demo").exists()


def test_quick_keeps_the_encoder(tmp_path):
    full, _ = load_pipeline(DEMOS / "backdoor.yaml")
    quick, locate = load_pipeline(DEMOS / "backdoor.yaml", quick=True)
    assert [s.name for s in full.studies()] == ["tiny-bert", "smollm2"]
    assert [s.name for s in quick.studies()] == ["tiny-bert"]
    plan = plan_pipeline(quick, tmp_path / "q", locate)
    ratios = sorted(s.config.ratio for s in plan.stages if s.what == "fine_mixing")
    assert ratios == [0.1, 0.5, 0.5, 0.9]  # ρ 0.1/0.5/0.9, and E-PUR + Fine-mixing at 0.5
