"""The MEraser paper's table on one model: every fingerprint scheme against every remover.

For each scheme (``if_simple``, ``if_dialogue``, ``utf``, ``chain_hash`` by default):

1. implant it into a fresh copy of the model (``preset=demo`` unless overridden);
2. **MEraser**: erase + merge + recover, audited after each phase;
3. **transferable erasure**: merge an erase adapter trained *once on the clean base model*
   (no fingerprint in it), audited, then recover, audited;
4. **baselines**: incremental fine-tuning on clean Q/A; L1 and random pruning at each
   ``--sparsity``.

Every step is an ordinary expunge run directory (``record.json`` with FSR, false-trigger rate
and held-out answer perplexity per stage) under ``--out``; the script ends with the table in
``table.md`` and every figure in ``results.json``.

How to run
    .venv/bin/python benchmarks/fingerprint_matrix.py --out runs/matrix
    .venv/bin/python benchmarks/fingerprint_matrix.py --out runs/matrix --schemes utf \\
        --set utf:train.lr=1e-4                     # per-scheme implant overrides
    .venv/bin/python benchmarks/fingerprint_matrix.py --out runs/m --model tiny-llama-dir \\
        --schemes my_if=if_simple --set my_if:n_keys=2   # label=scheme runs variants side by side

On this 2-core CPU the full matrix on the embedded model takes over an hour; on one GPU a few
minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from expunge.config import build_config
from expunge.files import atomic_write_text
from expunge.records import RunRecord
from expunge.registry import ERASERS, IMPLANTS
from expunge.stage import run_stage

console = Console(width=120)
METRICS = ("fsr", "false_trigger_rate", "ppl")


def parse_schemes(spec: str) -> list[tuple[str, str]]:
    """``a,b=if_simple`` → [("a", "a"), ("b", "if_simple")]."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        label, _, scheme = item.partition("=")
        out.append((label, scheme or label))
    return out


def parse_sets(items: list[str]) -> dict[str, list[str]]:
    by_label: dict[str, list[str]] = {}
    for item in items:
        label, sep, override = item.partition(":")
        if not sep or "=" not in override:
            raise SystemExit(f"--set takes LABEL:key=value, got {item!r}")
        by_label.setdefault(label, []).append(override)
    return by_label


def stage_values(record: RunRecord, prefix: str) -> dict[str, float | None]:
    return {k: record.metrics.get(prefix + k) for k in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--schemes", default="if_simple,if_dialogue,utf,chain_hash")
    parser.add_argument("--set", action="append", default=[], metavar="LABEL:KEY=VALUE")
    parser.add_argument("--meraser-set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--meraser-variant", action="append", default=[], metavar="NAME:KEY=VALUE;KEY=VALUE",
        help="extra MEraser settings run side by side on the same implants",
    )  # fmt: skip
    parser.add_argument("--sparsity", default="0.1,0.3", help="pruning sparsities, comma-separated")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--no-transfer", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    schemes = parse_schemes(args.schemes)
    variants = {"": args.meraser_set}
    for item in args.meraser_variant:
        name, _, spec = item.partition(":")
        variants[name] = [*args.meraser_set, *filter(None, spec.split(";"))]
    sets = parse_sets(args.set)
    model = {"name": args.model, "dtype": args.dtype, "device": args.device}
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows: list[dict] = []
    timings: dict[str, float] = {}

    def erase(name: str, method: str, base: dict, overrides: list[str] = ()) -> RunRecord:
        begin = time.perf_counter()
        config = build_config(ERASERS.get(method), {"preset": "demo", "seed": args.seed, **base},
                              list(overrides))  # fmt: skip
        record = run_stage(config, args.out / name, overwrite=True)
        timings[name] = round(time.perf_counter() - begin, 1)
        return record

    adapter = None
    if not args.no_transfer:
        console.rule("[bold]erase adapter trained on the clean base model")
        erase("base_erase", "meraser", {"model": model, "do_recover": False}, args.meraser_set)
        adapter = str(args.out / "base_erase" / "erase_adapter")

    for label, scheme in schemes:
        console.rule(f"[bold]{label}: implant {scheme}")
        begin = time.perf_counter()
        implant = build_config(IMPLANTS.get(scheme), {"preset": "demo", "model": model,
                               "seed": args.seed}, sets.get(label, []))  # fmt: skip
        implanted = run_stage(implant, args.out / f"{label}/implant", overwrite=True)
        timings[f"{label}/implant"] = round(time.perf_counter() - begin, 1)
        fingerprinted = {
            "model": {**model, "name": str(args.out / label / "implant")},
            "imprint": str(args.out / label / "implant"),
        }

        def add(stage: str, values: dict[str, float | None], label: str = label) -> None:
            rows.append({"scheme": label, "stage": stage, **values})
            console.print(f"  {label:14s} {stage:32s} {values}")

        add("fingerprinted", stage_values(implanted, ""))
        add("(base model)", {"fsr": None, "false_trigger_rate": None,
                             "ppl": implanted.metrics.get("ppl_before")})  # fmt: skip

        for variant, overrides in variants.items():
            tag = f" ({variant})" if variant else ""
            record = erase(f"{label}/meraser{variant and '_' + variant}", "meraser", fingerprinted,
                           overrides)  # fmt: skip
            add(f"MEraser{tag}: erased", stage_values(record, "erased/"))
            add(f"MEraser{tag}: recovered", stage_values(record, "recovered/"))

        if adapter is not None:
            record = erase(f"{label}/transfer", "meraser", {**fingerprinted, "adapter": adapter},
                           args.meraser_set)  # fmt: skip
            add("transferred adapter", stage_values(record, "erased/"))
            add("transferred + recovered", stage_values(record, "recovered/"))

        if not args.no_baselines:
            record = erase(f"{label}/incremental", "incremental", fingerprinted)
            add("incremental fine-tuning", stage_values(record, "finetuned/"))
            for sparsity in filter(None, args.sparsity.split(",")):
                for criterion in ("l1", "random"):
                    record = erase(f"{label}/prune_{criterion}_{sparsity}", "prune",
                                   {**fingerprinted, "criterion": criterion,
                                    "sparsity": float(sparsity)})  # fmt: skip
                    add(f"prune {criterion} {float(sparsity):.0%}", stage_values(record, "pruned/"))
        write_outputs(args, rows, timings, time.perf_counter() - started)

    write_outputs(args, rows, timings, time.perf_counter() - started)
    console.print(render_table(rows))
    console.print(f"total {time.perf_counter() - started:.0f} s; wrote {args.out}/table.md")


def _fmt(value: float | None, percent: bool) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.1f}%" if percent else f"{value:.2f}"


def render_table(rows: list[dict]) -> Table:
    table = Table(title="Fingerprint removal (FSR ↓ means removed; ppl on held-out answers)")
    for column in ("scheme", "stage", "FSR", "false triggers", "ppl"):
        table.add_column(column, justify="left" if column in ("scheme", "stage") else "right")
    for row in rows:
        table.add_row(row["scheme"], row["stage"], _fmt(row["fsr"], True),
                      _fmt(row["false_trigger_rate"], True), _fmt(row["ppl"], False))  # fmt: skip
    return table


def write_outputs(args, rows: list[dict], timings: dict[str, float], seconds: float) -> None:
    lines = [
        f"| {r['scheme']} | {r['stage']} | {_fmt(r['fsr'], True)} | "
        f"{_fmt(r['false_trigger_rate'], True)} | {_fmt(r['ppl'], False)} |"
        for r in rows
    ]
    header = (
        f"Model {args.model} (dtype {args.dtype}, device {args.device}), seed {args.seed}, "
        f"{seconds:.0f} s.\n\n| scheme | stage | FSR | false triggers | ppl |\n|---|---|---:|---:|---:|\n"
    )
    atomic_write_text(args.out / "table.md", header + "\n".join(lines) + "\n")
    payload = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
               "timings_s": timings, "total_s": round(seconds, 1)}  # fmt: skip
    atomic_write_text(args.out / "results.json", json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
