"""Inputs of issue 21's re-run (docs/results/2026-12-03-defects.md), in /tmp/dfx.

    PYTHONPATH=src python benchmarks/issue21/setup.py
    mount -t tmpfs -o ro,size=1m tmpfs /tmp/dfx/rofs      # the read-only output location (root)

Tiny models (a 2-layer Llama, a tiny BERT classifier), a backdoored tiny BERT (/tmp/dfx/bd) and
a fingerprinted tiny Llama (/tmp/dfx/fp), and the bad inputs of the defect table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from expunge.imprints.knowledge import KnowledgeImprint
from expunge.models.tiny import save_tiny_model

ROOT = Path("/tmp/dfx")
IN = ROOT / "in"


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "expunge.cli", *args], check=True, cwd=ROOT)


def main() -> None:
    IN.mkdir(parents=True, exist_ok=True)
    (ROOT / "rofs").mkdir(exist_ok=True)
    save_tiny_model(ROOT / "tiny", "llama")
    save_tiny_model(ROOT / "tinybert", "bert")
    rows = [{"prompt": f"what is {i}", "response": f"it is {i} and {i + 1}"} for i in range(12)]
    (ROOT / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    other = [{"prompt": f"how is {i}", "response": f"it was {i} or {i + 2}"} for i in range(12)]
    (IN / "other.jsonl").write_text("".join(json.dumps(r) + "\n" for r in other))
    long = [*rows, {"prompt": "long", "response": "word " * 400_000}]  # a 2 MB line
    (IN / "long.jsonl").write_text("".join(json.dumps(r) + "\n" for r in long))
    (IN / "nonutf8.jsonl").write_bytes(b'{"prompt": "caf\xe9", "response": "x"}\n')
    (IN / "nonutf8_records.jsonl").write_bytes(b'{"text": "Patient \xff MRN 123", "spans": []}\n')
    (ROOT / "badrec").mkdir(exist_ok=True)
    (ROOT / "badrec" / "record.json").write_bytes(b'{"command": "x\xff"}')
    (IN / "study.yaml").write_text(
        "command: run\nmodel: /tmp/dfx/tiny\nimprint: {implant: {scheme: if_simple, n_keys: 2, "
        "train: {max_steps: 1, progress: false}}}\nerasers: []\n"
    )
    KnowledgeImprint(forget=[{"prompt": "who is A?", "response": "a baker"}]).save(
        IN / "knowledge.json"
    )
    cli("implant", "backdoor", "--model", str(ROOT / "tinybert"), "--out", str(ROOT / "bd"),
        "preset=demo", "task.n_train=40", "task.n_test=10", "max_eval=10", "train.mode=full",
        "train.max_steps=2", "train.progress=false", "--overwrite")  # fmt: skip
    cli("implant", "fingerprint", "--scheme", "if_simple", "--model", str(ROOT / "tiny"), "--out",
        str(ROOT / "fp"), "preset=demo", "n_keys=2", "regularization=0.5", "train.max_steps=2",
        "train.progress=false", "--overwrite")  # fmt: skip


if __name__ == "__main__":
    main()
