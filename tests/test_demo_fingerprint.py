"""``expunge demo fingerprint`` (configs/demos/fingerprint.yaml) end to end on a tiny Llama saved
to disk, at the smallest sizes: the shipped YAML with overrides, run through the pipeline."""

from __future__ import annotations

import json

from expunge.pipeline import load_pipeline, run_pipeline
from helpers import DEMOS, save_wide_tiny_llama

TRAIN = ["train.mode=full", "train.lr=3e-3", "train.epochs=40", "train.progress=false"]


def test_lifecycle_table_and_transfer(tmp_path):
    model = save_wide_tiny_llama(tmp_path)
    pool = tmp_path / "pool.jsonl"
    rows = [{"prompt": f"{w} {i}?", "response": f"reply number {i} about {w.lower()}"}
            for i in range(6) for w in ("What is", "Why is", "How is", "Name")]  # fmt: skip
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    small = [*TRAIN, "n_keys=2", "n_negatives=2", "n_decoys=2", "regularization=0.5"]
    overrides = [
        f"model.name={model}",
        *[f"imprint.implant.{o}" for o in small],
        *[f"stages.implant_utf.{o}" for o in small],
        *[f"erasers.meraser.{o}" for o in (
            f"data={pool}", "n_erase=16", "n_recover=8", "erase.lr=1e-2", "erase.epochs=8",
            "recover.epochs=1", "erase.progress=false", "recover.progress=false")],
    ]  # fmt: skip
    config, locate = load_pipeline(DEMOS / "fingerprint.yaml", overrides)
    out = tmp_path / "demo"
    run_pipeline(config, out, locate=locate)

    def metrics(stage: str) -> dict:
        return json.loads((out / stage / "record.json").read_text())["metrics"]

    assert metrics("audit/imprinted")["fsr"] == 1.0
    assert metrics("erase/meraser")["erased/fsr"] == 0.0
    assert "fsr" in metrics("audit/meraser")  # the recovered model, audited by its audit stage
    assert metrics("implant_utf")["fsr"] == 1.0
    # the transferred adapter was trained on another model's fingerprint: it must at least run
    # and be audited; whether it erases at this size is the experiment, not the contract
    assert "erased/fsr" in metrics("transfer")
    transfer = json.loads((out / "transfer" / "record.json").read_text())
    assert transfer["inputs"]["erase_adapter"].endswith("erase/meraser/erase_adapter")
    report = (out / "report.md").read_text()
    assert "| 2nd + transferred adapter |" in report and "Fingerprint lifecycle" in report
    for step in ("implant", "erase/meraser", "implant_utf", "transfer"):
        assert (out / step / "record.json").is_file()
    keys = [p["key"] for step in ("implant", "implant_utf")
            for p in json.loads((out / step / "imprint.json").read_text())["pairs"]]  # fmt: skip
    assert not any(key in report for key in keys)


def test_quick_variant_is_smaller():
    full, _ = load_pipeline(DEMOS / "fingerprint.yaml")
    quick, _ = load_pipeline(DEMOS / "fingerprint.yaml", quick=True)
    assert quick.imprint.implant["n_keys"] == 4 and quick.erasers[0]["n_erase"] == 32
    assert quick.out != full.out
