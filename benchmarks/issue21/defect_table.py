"""Issue 21's defect table re-run: input -> exit code -> stderr (last line) -> what was written.

    python benchmarks/issue21/defect_table.py SRC_DIR   # after setup.py; SRC_DIR: the code tested

Each row runs ``expunge`` in a fresh process from /tmp/dfx; "written" lists every path that
appeared under the output locations and the answer cache (checkpoints folded).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

SRC = sys.argv[1] if len(sys.argv) > 1 else "src"
ROOT = Path("/tmp/dfx")
WORK, INPUTS, RO = ROOT / "w", ROOT / "in", ROOT / "rofs"
TINY, BACKDOOR, FINGERPRINT = str(ROOT / "tiny"), str(ROOT / "bd"), str(ROOT / "fp")
ENV = {**os.environ, "PYTHONPATH": str(Path(SRC).resolve()), "OMP_NUM_THREADS": "1"}
CLI = ["nice", "-n", "15", sys.executable, "-m", "expunge.cli"]
DATA = str(ROOT / "train.jsonl")
FT = ["finetune", "--model", TINY, "--data", DATA, "train.max_steps=1", "train.progress=false"]
LONG = ["finetune", "--model", TINY, "--data", DATA, "--out", "w/ft", "train.mode=full",
        "train.max_steps=4000", "train.save_every=20", "train.progress=false"]  # fmt: skip
INTERRUPT = ["INTERRUPT"]
ROWS: list[tuple[str, list[str]]] = [
    ("non-UTF-8 data", ["finetune", "--model", TINY, "--data", f"{INPUTS}/nonutf8.jsonl", "--out", "w/a"]),
    ("non-UTF-8 secrets records", ["implant", "secrets", "--model", TINY, "--records",
                                   f"{INPUTS}/nonutf8_records.jsonl", "--out", "w/a"]),
    ("non-UTF-8 record.json (report)", ["report", str(ROOT / "badrec"), "--out", "w/r.html"]),
    ("train.lora.r=0", [*FT, "--out", "w/a", "train.lora.r=0"]),
    ("train.lora.dropout=1.5", [*FT, "--out", "w/a", "train.lora.dropout=1.5"]),
    ("train.lora.targets=[]", [*FT, "--out", "w/a", "train.lora.targets=[]"]),
    ("format.max_length=0", [*FT, "--out", "w/a", "format.max_length=0"]),
    ("finetune, read-only --out", [*FT, "--out", f"{RO}/a"]),
    ("report, read-only --out", ["report", FINGERPRINT, "--out", f"{RO}/r.html"]),
    ("run, read-only --out", ["run", f"{INPUTS}/study.yaml", "--out", f"{RO}/s"]),
    ("audit model.device=cuda (no GPU)", ["audit", "--model", TINY, "--metrics", "ppl", "--out",
                                          "w/a", "model.device=cuda"]),
    ("finetune model.device=cuda (no GPU)", [*FT, "--out", "w/a", "model.device=cuda"]),
    ("--model tinyy (mistyped path)", ["finetune", "--model", "tinyy", "--data", DATA, "--out", "w/a"]),
    ("train.max_steps=0", [*FT[:-2], "--out", "w/a", "train.max_steps=0"]),
    ("wrong-kind imprint given", ["audit", "--model", TINY, "--metrics", "fsr", "--imprint",
                                  f"{INPUTS}/knowledge.json", "--out", "w/a"]),
    ("erase meraser, unknown key", ["erase", "meraser", "--model", TINY, "--out", "w/a", "n_eras=4"]),
    ("finetune, missing data file", ["finetune", "--model", TINY, "--data", "missing.jsonl", "--out", "w/a"]),
    ("no --model (embedded default)", ["finetune", "--data", "missing.jsonl", "--out", "w/a"]),
    ("2 MB line", [*FT, "--out", "w/a", "--data", f"{INPUTS}/long.jsonl"]),
    ("stress relearn, encoder backdoor", ["stress", "relearn", "--model", BACKDOOR, "--imprint",
                                          BACKDOOR, "--out", "w/a", "k=4", "steps=[0,2]",
                                          "train.progress=false"]),
    ("stress finetune, encoder backdoor", ["stress", "finetune", "--model", BACKDOOR, "--imprint",
                                           BACKDOOR, "--out", "w/a", "n_examples=16",
                                           "steps=[0,2]", "train.progress=false"]),
    ("detect, encoder backdoor", ["detect", "--original", BACKDOOR, "--erased", BACKDOOR,
                                  "--imprint", BACKDOOR, "--out", "w/a", "min_prompts=4",
                                  "folds=2", "bootstrap=100", "progress=false"]),
    ("Ctrl-C at a checkpoint", INTERRUPT),
    ("plain re-run after Ctrl-C", LONG),
    ("--resume, train.lr=5e-2", [*LONG, "--resume", "train.lr=5e-2"]),
    ("--resume, other data", [*[a if a != DATA else f"{INPUTS}/other.jsonl" for a in LONG], "--resume"]),
    ("--resume, other model", [*[a if a != TINY else BACKDOOR for a in LONG], "--resume"]),
]  # fmt: skip
KEEP_WORK = ("plain re-run", "--resume")  # rows that run on the interrupted run's leftovers
TWO_LINES = ("no --model", "2 MB")  # rows whose first line is the point (a note, a warning)


def snapshot() -> set[str]:
    found = {str(p) for root in (WORK, RO) for p in root.rglob("*") if "checkpoints/" not in str(p)}
    answers = Path.home() / ".cache" / "expunge" / "answers"
    return found | {str(p) for p in answers.glob("*")}


def run(args: list[str]) -> tuple[int, str]:
    if args != INTERRUPT:
        done = subprocess.run(CLI + args, cwd=ROOT, env=ENV, capture_output=True, text=True)
        return done.returncode, done.stderr
    process = subprocess.Popen(CLI + LONG, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    while not list((WORK / ".ft.partial").glob("checkpoints/step-*")) and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate()
    return process.returncode, err


def main() -> None:
    print("| input | exit | s | stderr (last line) | stderr lines | written |")
    print("|---|---|---|---|---|---|")
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    for label, args in ROWS:
        if not label.startswith(KEEP_WORK):
            for path in WORK.iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        before, started = snapshot(), time.monotonic()
        code, err = run(args)
        seconds = time.monotonic() - started
        lines = [line for line in err.splitlines()
                 if line.strip() and not line.lstrip().startswith(("╭", "│", "╰"))]  # fmt: skip
        shown = lines[-2:] if label.startswith(TWO_LINES) else lines[-1:]
        message = " / ".join(shown).replace("|", "\\|")[:230]
        written = ", ".join(p.replace(f"{ROOT}/", "") for p in sorted(snapshot() - before))
        print(f"| {label} | {code} | {seconds:.1f} | {message} | {len(lines)} | "
              f"{written[:140] or 'nothing'} |", flush=True)  # fmt: skip
    kept = sorted(p.name for p in (WORK / ".ft.partial").glob("checkpoints/step-*"))
    print(f"\nkept checkpoints of the interrupted run: {kept}")


if __name__ == "__main__":
    main()
