"""Bad arguments fail fast: building and checking a stage's config imports no heavy library.

An unknown key or a missing file took 6-8 s to report because torch, transformers, peft and
accelerate were imported before the config was read (expunge.lazy). Each case runs in a fresh
interpreter, where nothing else has imported them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from expunge.registry import ERASERS, IMPLANTS, STRESSORS

SRC = str(Path(__file__).resolve().parents[1] / "src")
# SANI and the methods that share its repair step import torch at the top of erase/secrets/
# (being changed elsewhere); they are the ones still slow to refuse a bad argument.
STILL_HEAVY = {"sani", "repair_only", "scrub_retrain", "span_ga"}

PROBE = """
import json, sys
from expunge.config import build_config
from expunge.errors import ExpungeError
from expunge.lazy import HEAVY
from expunge.cli import config_class
command, name = sys.argv[1], sys.argv[2] or None
if command == "run":  # a whole study: every stage's config is built and checked
    from expunge.pipeline import load_pipeline, plan_pipeline

    pipeline, locate = load_pipeline(name)
    plan_pipeline(pipeline, "runs/probe", locate)
else:
    config = build_config(config_class(command, name), {})
    try:
        config.validate_inputs()
    except ExpungeError:
        pass  # what a missing input says is not the point here
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))))
"""


def heavy_after(command: str, name: str = "") -> list[str]:
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1"}  # no hub retries
    out = subprocess.run([sys.executable, "-c", PROBE, command, name], capture_output=True,
                         text=True, env=env, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


DEMOS = Path(__file__).resolve().parents[1] / "configs" / "demos"
CASES = [("finetune", ""), ("audit", ""), ("detect", ""), ("run", str(DEMOS / "main.yaml"))]
CASES += [("implant", n) for n in IMPLANTS.names()]
CASES += [("erase", n) for n in ERASERS.names() if n not in STILL_HEAVY]
CASES += [("stress", n) for n in STRESSORS.names()]


# checking a benchmark implant's inputs reads the benchmark (its splits and columns): datasets
NEEDED = {("implant", "benchmark"): ["datasets"]}


@pytest.mark.parametrize(("command", "name"), CASES)
def test_checking_a_config_imports_no_heavy_library(command, name):
    assert heavy_after(command, name) == NEEDED.get((command, name), [])


def test_the_cli_refuses_a_bad_argument_without_importing_torch(tmp_path):
    """The two cases the issue timed (7.6 s each before; see docs/results/2026-12-03-defects.md)."""
    code = (
        "import sys, runpy\n"
        "sys.argv = ['expunge'] + sys.argv[1:]\n"
        "try:\n"
        "    runpy.run_module('expunge.cli', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    from expunge.lazy import HEAVY\n"
        "    print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & set(HEAVY)))\n"
        "    raise\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1"}  # no hub retries
    for args in (["erase", "meraser", "--out", str(tmp_path / "a"), "n_eras=4"],
                 ["finetune", "--data", "missing.jsonl", "--out", str(tmp_path / "b")]):  # fmt: skip
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                             env=env, cwd=tmp_path, timeout=120)  # fmt: skip
        assert out.returncode == 2, out.stderr
        assert "HEAVY []" in out.stdout, out.stdout
        assert out.stderr.strip().splitlines()[-1].startswith("error: ")
