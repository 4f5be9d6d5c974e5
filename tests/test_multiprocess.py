"""Two processes (accelerate launch, gloo on CPU) train exactly like one process with the same
global batch: the loss is normalized over the label tokens of the whole step on all processes,
so splitting a batch of examples of very different lengths across ranks changes nothing.

The helper script is tests/mp_train_script.py; the launch uses configs/accelerate/cpu_2proc.yaml.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "mp_train_script.py"
CPU_CONFIG = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
MODES = ("full", "lora")

pytestmark = pytest.mark.multiprocess


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def offline_cpu_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "CUDA_VISIBLE_DEVICES": "",
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONWARNINGS": "ignore",
    })  # fmt: skip
    return env


def run_script(command: list[str], out: Path) -> None:
    result = subprocess.run(
        command, cwd=ROOT, env=offline_cpu_env(), capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, (
        f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )


def load(out: Path, rank: int) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    report = json.loads((out / f"rank{rank}.json").read_text())
    tensors = {mode: torch.load(out / f"rank{rank}-{mode}.pt") for mode in MODES}
    return report, tensors


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys() and a
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available")
    one, two = tmp_path_factory.mktemp("one-process"), tmp_path_factory.mktemp("two-processes")
    # One process, a micro-batch of 8; two processes with 4 each: the same 8 examples per
    # micro-batch (grad_accum=2 in both, so the no_sync path runs too).
    run_script([sys.executable, str(SCRIPT), str(one), "--batch-size", "8"], one)
    launch = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(CPU_CONFIG), "--num_processes", "2",
        "--main_process_port", str(free_port()), "--num_cpu_threads_per_process", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        str(SCRIPT), str(two), "--batch-size", "4",
    ]  # fmt: skip
    run_script(launch, two)
    return {"one": load(one, 0), "rank0": load(two, 0), "rank1": load(two, 1)}


@pytest.mark.parametrize("mode", MODES)
def test_two_processes_match_one_process(runs, mode: str) -> None:
    single, single_params = runs["one"]
    double, double_params = runs["rank0"]
    assert single[mode]["world_size"] == 1 and double[mode]["world_size"] == 2
    # Every step counts the same global label tokens, so the same examples were drawn.
    assert double[mode]["label_tokens"] == single[mode]["label_tokens"]
    losses_1, losses_2 = single[mode]["loss"], double[mode]["loss"]
    assert len(losses_1) == len(losses_2) == 4
    diffs = [abs(a - b) for a, b in zip(losses_1, losses_2, strict=True)]
    print(f"{mode}: 1-proc {losses_1}\n{mode}: 2-proc {losses_2}\nmax |diff| {max(diffs):.3g}")
    assert max(diffs) < 1e-4, diffs
    norms = zip(single[mode]["grad_norm"], double[mode]["grad_norm"], strict=True)
    assert all(abs(a - b) < 1e-4 * max(1.0, a) for a, b in norms)
    param_diff = max_abs_diff(single_params[mode], double_params[mode])
    print(f"{mode}: max |param diff| {param_diff:.3g}")
    assert param_diff < 5e-5  # a per-process mean would be off by ~1e-2 (Adam, lr 1e-2)
    assert abs(single[mode]["checksum"] - double[mode]["checksum"]) < 1e-3


def test_both_ranks_hold_the_same_model(runs) -> None:
    (report0, params0), (report1, params1) = runs["rank0"], runs["rank1"]
    for mode in MODES:
        assert report0[mode]["loss"] == report1[mode]["loss"]
        assert max_abs_diff(params0[mode], params1[mode]) == 0.0
