"""Two versions of expunge (or one version under other settings) timed on the same methods, in
alternation, on the same machine: the ratios of ``bench_methods.py`` runs taken side by side.

    python benchmarks/compare_speed.py --before /tmp/expunge-base/src --after src \\
        --methods implant meraser_erase meraser_recover npo audit --steps 8 --rounds 2 \\
        --variant fp32:precision=fp32 --variant no-cache:reference_cache=off \\
        --out benchmarks/results/speed.json

Each run is a fresh process (``bench_methods.py --profile``) with ``PYTHONPATH`` set to the
version's ``src``; for every method the rounds alternate which version goes first, so a drift in
the machine's speed hits both. A ``--variant NAME:KEY=VALUE,...`` runs the *after* version with
those ``--set`` overrides (a setting switched off, to see what it alone brings;
``NAME@implant,npo:...`` for some methods only); ``--set`` alone applies to every run. ``--imprint``
and ``--metrics`` pick what the ``audit`` method times. Prints a table
of medians and the per-round ratios; ``--out`` keeps every run's JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(method: str, src: str, sets: list[str], args: argparse.Namespace) -> dict:
    command = [sys.executable, str(HERE / "bench_methods.py"), "--method", method,
               "--steps", str(1 if method == "audit" else args.steps),
               "--warmup", str(args.warmup), "--profile", "--model", args.model]  # fmt: skip
    if method == "audit":
        command += (["--metrics", *args.metrics] if args.metrics else []) + (
            ["--imprint", args.imprint] if args.imprint else []
        )
    for item in sets:
        command += ["--set", item]
    env = dict(os.environ, PYTHONPATH=src)
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:], "method": method, "src": src, "set": sets}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = round(time.perf_counter() - started, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="src directory of the first version")
    parser.add_argument("--after", required=True, help="src directory of the second version")
    parser.add_argument("--methods", nargs="+", default=["implant", "meraser_erase",
                        "meraser_recover", "npo", "audit"])  # fmt: skip
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--imprint", help="audit: this imprint (bench_methods.py's default)")
    parser.add_argument("--metrics", nargs="+", help="audit: the metrics to time "
                        "(bench_methods.py's default)")  # fmt: skip
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="bench_methods.py's --set, for both versions and every variant",
    )
    parser.add_argument("--variant", action="append", default=[], metavar="NAME[@M,..]:K=V,..")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    variants: dict[str, tuple[list[str] | None, list[str]]] = {}
    for spec in args.variant:
        name, _, sets = spec.partition(":")
        name, _, only = name.partition("@")  # NAME@method,method: only for those methods
        variants[name] = (only.split(",") if only else None, [s for s in sets.split(",") if s])
    results: dict[str, dict[str, list[dict]]] = {}
    for method in args.methods:
        runs: dict[str, list[dict]] = {"before": [], "after": []}
        for round_ in range(args.rounds):
            order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
            for side in order:
                src = args.before if side == "before" else args.after
                runs[side].append(run(method, src, args.set, args))
                print(f"{method} {side}: {summary(runs[side][-1])}", flush=True)
        for name, (only, sets) in variants.items():
            if only is not None and method not in only:
                continue
            runs[name] = [run(method, args.after, [*args.set, *sets], args)]
            print(f"{method} {name}: {summary(runs[name][-1])}", flush=True)
        results[method] = runs
        if args.out:
            args.out.write_text(json.dumps(results, indent=1))
    print()
    print(table(results))


def rate(out: dict) -> float | None:
    if "error" in out:
        return None
    return out["tokens_per_s"]


def summary(out: dict) -> str:
    if "error" in out:
        return "FAILED " + out["error"].strip().splitlines()[-1]
    keys = ("tokens_per_s", "wall_s", "padding_share", "final_loss", "metrics")
    return ", ".join(f"{k}={out[k]}" for k in keys if k in out)


def table(results: dict[str, dict[str, list[dict]]]) -> str:
    """Medians per run; the speed-up is the before wall time over this one's, for the same
    steps (the same examples: tokens/s would hide a change that sends fewer tokens)."""
    lines = ["| method | run | wall s (median) | speed-up | tokens/s | padding | loss / metrics |",
             "|---|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for method, runs in results.items():
        before = [r["wall_s"] for r in runs["before"] if rate(r)]
        base = statistics.median(before) if before else None
        for name, outs in runs.items():
            good = [r for r in outs if rate(r)]
            if not good:
                lines.append(f"| {method} | {name} | failed | | | | |")
                continue
            wall = statistics.median(r["wall_s"] for r in good)
            tokens = statistics.median(r["tokens_per_s"] for r in good)
            last = good[-1]
            detail = last.get("metrics") or f"{last.get('first_loss')} → {last.get('final_loss')}"
            ratio = f"{base / wall:.2f}x" if base else ""
            padding = last.get("padding_share", "")
            lines.append(f"| {method} | {name} | {wall:.1f} | {ratio} | {tokens:.1f} | "
                         f"{padding} | {detail} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
