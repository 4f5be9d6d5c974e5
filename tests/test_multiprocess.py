"""Two processes (accelerate launch, gloo on CPU) train exactly like one process with the same
global batch: the loss is normalized over the label tokens of the whole step on all processes,
so splitting a batch of examples of very different lengths across ranks changes nothing.

The helper script is tests/mp_train_script.py; the launches use configs/accelerate/cpu_2proc.yaml
(data parallel) and configs/accelerate/cpu_fsdp_2proc.yaml (sharded by the loop, torch's FSDP2).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "mp_train_script.py"
CPU_CONFIG = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
FSDP_CONFIG = ROOT / "configs" / "accelerate" / "cpu_fsdp_2proc.yaml"
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
    run_script(launch(CPU_CONFIG, two), two)
    return {"one": load(one, 0), "rank0": load(two, 0), "rank1": load(two, 1)}


def launch(config: Path, out: Path, *extra: str) -> list[str]:
    """Two CPU processes, 4 examples each (the one-process run's micro-batch of 8)."""
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(config), "--num_processes", "2",
        "--main_process_port", str(free_port()), "--num_cpu_threads_per_process", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        str(SCRIPT), str(out), "--batch-size", "4", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def fsdp_runs(runs, tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    """The same training sharded over two processes, and that run resumed from step 2."""
    sharded, resumed = tmp_path_factory.mktemp("fsdp"), tmp_path_factory.mktemp("fsdp-resumed")
    run_script(launch(FSDP_CONFIG, sharded), sharded)
    shutil.copytree(sharded, resumed, dirs_exist_ok=True)
    for rank_file in resumed.glob("rank*"):
        rank_file.unlink()
    for last in resumed.glob("run-*/checkpoints/step-0000004"):
        shutil.rmtree(last)
    run_script(launch(FSDP_CONFIG, resumed, "--resume"), resumed)
    return {"one": runs["one"], "rank0": load(sharded, 0), "rank1": load(sharded, 1),
            "resumed": load(resumed, 0)}  # fmt: skip


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


@pytest.mark.parametrize("mode", MODES)
def test_fsdp_on_two_cpu_processes_matches_one_process(fsdp_runs, mode: str) -> None:
    single, single_params = fsdp_runs["one"]
    (rank0, params0), (rank1, _) = fsdp_runs["rank0"], fsdp_runs["rank1"]
    for report in (rank0[mode], rank1[mode]):
        # sharded, not replicated: each process holds half of the trainable elements
        assert report["sharded"] and report["local_numel"] == report["numel"] // 2
    assert rank0[mode]["label_tokens"] == single[mode]["label_tokens"]
    diffs = [abs(a - b) for a, b in zip(single[mode]["loss"], rank0[mode]["loss"], strict=True)]
    assert len(diffs) == 4 and max(diffs) < 1e-4, diffs
    norms = zip(single[mode]["grad_norm"], rank0[mode]["grad_norm"], strict=True)
    assert all(abs(a - b) < 1e-4 * max(1.0, a) for a, b in norms)
    # rank 0 holds the gathered whole tensors; they are the one-process model's
    assert max_abs_diff(single_params[mode], params0[mode]) < 5e-5


def test_a_resumed_fsdp_run_continues_the_same_run(fsdp_runs) -> None:
    (whole, whole_params), (resumed, resumed_params) = fsdp_runs["rank0"], fsdp_runs["resumed"]
    for mode in MODES:
        assert resumed[mode]["start_step"] == 2
        assert resumed[mode]["loss"] == whole[mode]["loss"][2:]
        assert max_abs_diff(whole_params[mode], resumed_params[mode]) == 0.0
