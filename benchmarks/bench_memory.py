"""Peak memory of LoRA vs full fine-tuning with expunge's training loop.

What it measures
    Each configuration (LoRA, full, and with ``--gc`` the same two with gradient
    checkpointing) runs in a fresh subprocess: load the model, prepare it
    (``prepare_trainable``), then run ``--steps`` steps of ``expunge.train.train`` with
    ``LMObjective`` on fixed-length sequences (``--batch-size`` x ``--seq-len`` tokens, loss
    on every token, text from ``place_qa``).

    CPU: resident memory. "after load" is the current RSS once the model is loaded and
    prepared; the high-water mark is then reset (``/proc/self/clear_refs``, Linux) so that
    ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after training is the peak *during
    training*; "training overhead" = that peak minus the RSS after load (optimizer state,
    gradients, activations, logits). Where the reset is not possible the peak is the
    lifetime peak, which may be set by model loading (the table says so).
    CUDA: ``torch.cuda.memory_allocated`` after load and ``torch.cuda.max_memory_allocated``
    during training (peak stats reset after load).

How to run
    .venv/bin/python benchmarks/bench_memory.py                      # embedded SmolLM2-135M
    .venv/bin/python benchmarks/bench_memory.py --steps 2 --batch-size 4 --seq-len 256 --gc
    .venv/bin/python benchmarks/bench_memory.py --threads 1          # steadier on a busy CPU

Figures are noisy when other processes share the machine (RSS also counts allocator
caching), so read them to a few tens of MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable

MIB = 1024 * 1024


def _rss_now() -> int:
    """Current resident set size in bytes (Linux /proc; falls back to ru_maxrss)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return _ru_maxrss()


def _ru_maxrss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def reset_peak_rss() -> bool:
    """Reset the RSS high-water mark (VmHWM, which ru_maxrss reports) on Linux."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def worker(args: argparse.Namespace) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from expunge.data.formatting import TokenizedExample
    from expunge.data.synthetic import place_qa
    from expunge.models import load_model
    from expunge.models.lora import LoraSettings, trainable_parameter_count
    from expunge.train import LMObjective, TrainSettings, prepare_trainable, train

    mode, gc = args.worker.split(":")
    settings = TrainSettings(
        mode=mode,
        lora=LoraSettings(
            r=args.lora_r, alpha=2.0 * args.lora_r, targets=args.lora_targets.split(",")
        ),
        max_steps=args.steps,
        batch_size=args.batch_size,
        gradient_checkpointing=gc == "gc",
        progress=False,
    )
    rss_start = _rss_now()
    loaded = load_model(args.model)
    model, tokenizer, device = loaded.model, loaded.tokenizer, loaded.device
    model = prepare_trainable(model, settings)
    trainable, total = trainable_parameter_count(model)

    # Fixed-length sequences so every configuration sees the same shapes.
    text = " ".join(f"{e.prompt} {e.response}" for e in place_qa(64, seed=0))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    need = args.seq_len * args.batch_size
    ids = (ids * (need // len(ids) + 1))[:need]
    data = [
        TokenizedExample(chunk, list(chunk), 0)
        for chunk in (ids[i : i + args.seq_len] for i in range(0, need, args.seq_len))
    ]

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss_loaded = _rss_now()
    peak_load = _ru_maxrss()
    reset = reset_peak_rss()

    started = time.perf_counter()
    _, result = train(model, {"train": data}, LMObjective(), settings, tokenizer.pad_token_id)
    wall = time.perf_counter() - started

    out = {
        "config": args.worker,
        "device": str(device),
        "trainable": trainable,
        "total": total,
        "rss_start": rss_start,
        "rss_loaded": rss_loaded,
        "peak_load": peak_load,
        "peak_reset": reset,
        "peak_rss": _ru_maxrss(),
        "s_per_step": wall / max(result.steps, 1),
        "final_loss": result.final_loss,
    }
    if cuda:
        torch.cuda.synchronize()
        out["cuda_base"] = base
        out["cuda_peak"] = torch.cuda.max_memory_allocated()
    return out


def run_config(config: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, os.path.abspath(__file__), "--worker", config, "--model", args.model,
        "--steps", str(args.steps), "--batch-size", str(args.batch_size),
        "--seq-len", str(args.seq_len), "--lora-r", str(args.lora_r),
        "--lora-targets", args.lora_targets,
    ]  # fmt: skip
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"worker {config} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="smollm2-135m", help="embedded name, local dir or hub id"
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-targets", default="q_proj,v_proj")
    parser.add_argument(
        "--gc", action="store_true", help="also run both with gradient checkpointing"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        import warnings

        warnings.filterwarnings("ignore")
        print(json.dumps(worker(args)))
        return

    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > 0.5 * cores and not args.threads:
        console.print(
            f"[yellow]machine busy (load {load:.1f} on {cores} cores): --threads 1 runs steadier[/]"
        )
    configs = ["lora:nogc", "full:nogc"] + (["lora:gc", "full:gc"] if args.gc else [])
    names = {
        "lora:nogc": "LoRA",
        "full:nogc": "full",
        "lora:gc": "LoRA + GC",
        "full:gc": "full + GC",
    }
    results = {}
    for config in configs:
        started = time.perf_counter()
        results[config] = run_config(config, args)
        console.print(
            f"{names[config]:>10}: done in {time.perf_counter() - started:.1f}s (fresh process)"
        )

    cuda = "cuda_peak" in results[configs[0]]

    def mib(value: float) -> str:
        return f"{value / MIB:,.0f}"

    rows: list[tuple[str, Callable, Callable]] = [
        ("trainable params", lambda r: r["trainable"], lambda v: f"{v:,}"),
    ]
    if cuda:
        rows += [
            ("GPU allocated after load (MiB)", lambda r: r["cuda_base"], mib),
            ("GPU peak during training (MiB)", lambda r: r["cuda_peak"], mib),
            ("GPU training overhead (MiB)", lambda r: r["cuda_peak"] - r["cuda_base"], mib),
        ]
    rows += [
        ("RSS after load (MiB)", lambda r: r["rss_loaded"], mib),
        ("peak RSS while loading (MiB)", lambda r: r["peak_load"], mib),
        ("peak RSS during training (MiB)", lambda r: r["peak_rss"], mib),
        (
            "training overhead: peak - after load (MiB)",
            lambda r: r["peak_rss"] - r["rss_loaded"],
            mib,
        ),
        ("s / step", lambda r: r["s_per_step"], lambda v: f"{v:.2f}"),
        ("final loss", lambda r: r["final_loss"], lambda v: f"{v:.4f}"),
    ]
    first = results[configs[0]]
    table = Table(
        title=f"Memory: {args.model} on {first['device']}, batch {args.batch_size} x seq {args.seq_len}, "
        f"{args.steps} steps"
    )
    table.add_column("metric")
    for config in configs:
        table.add_column(names[config], justify="right")
    table.add_column("full/LoRA", justify="right")
    if args.gc:
        table.add_column("full/LoRA (GC)", justify="right")
    for title, get, fmt in rows:
        values = [get(results[c]) for c in configs]
        ratios = [values[1] / values[0] if values[0] else float("nan")]
        if args.gc:
            ratios.append(values[3] / values[2] if values[2] else float("nan"))
        ratio_cells = [f"{r:.2f}x" if title != "final loss" else "" for r in ratios]
        table.add_row(title, *(fmt(v) for v in values), *ratio_cells)
    console.print(table)
    if not all(r["peak_reset"] for r in results.values()):
        console.print(
            "[yellow]could not reset the RSS high-water mark: 'peak during training' is the "
            "lifetime peak and may be set by loading[/]"
        )
    console.print("[dim]each configuration ran in its own process; CPU figures are noisy.[/]")


if __name__ == "__main__":
    main()
