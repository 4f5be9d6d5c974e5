"""``expunge demo fingerprint`` end to end on a tiny Llama saved to disk, at the smallest sizes."""

from __future__ import annotations

import json

from expunge.config import build_config
from expunge.demo_fingerprint import FingerprintDemoConfig, run_fingerprint_demo
from helpers import save_wide_tiny_llama

TRAIN = ["train.mode=full", "train.lr=3e-3", "train.epochs=40", "train.progress=false"]


def test_lifecycle_table_and_transfer(tmp_path):
    model = save_wide_tiny_llama(tmp_path)
    pool = tmp_path / "pool.jsonl"
    rows = [{"prompt": f"{w} {i}?", "response": f"reply number {i} about {w.lower()}"}
            for i in range(6) for w in ("What is", "Why is", "How is", "Name")]  # fmt: skip
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = build_config(FingerprintDemoConfig, {
        "model": {"name": str(model)},
        "implant_overrides": [*TRAIN, "n_keys=2", "n_negatives=2", "n_decoys=2",
                              "regularization=0.5"],
        "second_overrides": [*TRAIN, "n_keys=2", "n_negatives=2", "n_decoys=2",
                             "regularization=0.5"],
        "meraser_overrides": [f"data={pool}", "n_erase=16", "n_recover=8", "erase.lr=1e-2",
                              "erase.epochs=8", "recover.epochs=1", "erase.progress=false",
                              "recover.progress=false"],
    })  # fmt: skip
    record = run_fingerprint_demo(config, tmp_path / "demo")
    out = tmp_path / "demo"
    assert record.metrics["fingerprinted/fsr"] == 1.0
    assert record.metrics["MEraser: erased/fsr"] == 0.0
    assert "MEraser: recovered/fsr" in record.metrics
    assert record.metrics["2nd fingerprint/fsr"] == 1.0
    # the transferred adapter was trained on another model's fingerprint: it must at least run
    # and be audited; whether it erases at this size is the experiment, not the contract
    assert "2nd + transferred adapter/fsr" in record.metrics
    transfer = json.loads((out / "transfer_b" / "record.json").read_text())
    assert transfer["inputs"]["erase_adapter"].endswith("erase_a/erase_adapter")
    report = (out / "report.md").read_text()
    assert "| 2nd + transferred adapter |" in report
    for step in ("implant_a", "erase_a", "implant_b", "transfer_b"):
        assert (out / step / "record.json").is_file()
    keys = [p["key"] for step in ("implant_a", "implant_b")
            for p in json.loads((out / step / "imprint.json").read_text())["pairs"]]  # fmt: skip
    assert not any(key in report for key in keys)
