"""``expunge demo backdoor`` end to end on the tiny encoder, at the smallest sizes."""

from __future__ import annotations

import json

import pytest

from expunge.config import build_config
from expunge.demo_backdoor import BackdoorDemoConfig, quick, run_backdoor_demo
from expunge.errors import ConfigError

TRAIN = ["train.mode=full", "train.epochs=1", "train.batch_size=8", "train.progress=false"]


def small_config(**extra) -> BackdoorDemoConfig:
    data = {
        "n_train": 40, "n_test": 10, "rho_sweep": [0.0, 1.0],
        "subjects": [{"name": "enc", "model": "tiny-bert", "pretrain": TRAIN,
                      "implant": [*TRAIN, 'trigger.text=["§"]'], "erase": TRAIN}],
        "methods": [{"label": "FT", "method": "finetune"}],
        **extra,
    }  # fmt: skip
    return build_config(BackdoorDemoConfig, data)


def test_demo_writes_the_table_the_sweep_and_every_step(tmp_path):
    record = run_backdoor_demo(small_config(), tmp_path / "demo")
    out = tmp_path / "demo"
    results = json.loads((out / "results.json").read_text())
    rows = results["enc"]["rows"]
    assert list(rows) == ["clean fine-tune", "backdoored", "FT"]
    assert [p["rho"] for p in results["enc"]["sweep"]] == [0.0, 1.0]
    for values in [*rows.values(), *results["enc"]["sweep"]]:
        assert set(values) >= {"asr", "clean_accuracy", "clean_trigger_rate"}
    assert record.metrics["enc/backdoored/asr"] == rows["backdoored"]["asr"]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| backdoored |" in report and "sweep.png" in report and "§" not in report
    for step in ("pretrained", "clean", "backdoored", "erase_0_finetune", "sweep_rho_0.0"):
        assert (out / "enc" / step / "record.json").is_file()


def test_unknown_method_fails_before_training(tmp_path):
    config = small_config(methods=[{"label": "x", "method": "fine_mixin"}])
    with pytest.raises(ConfigError, match="did you mean 'fine_mixing'"):
        run_backdoor_demo(config, tmp_path / "demo")
    assert not (tmp_path / "demo").exists()


def test_quick_keeps_the_encoder():
    config = build_config(BackdoorDemoConfig, {})
    assert [s.model for s in config.subjects] == ["tiny-bert", "smollm2-135m"]
    assert [s.model for s in quick(config).subjects] == ["tiny-bert"]
