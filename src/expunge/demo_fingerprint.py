"""``expunge demo fingerprint``: the fingerprint lifecycle on the embedded model.

implant ``if_dialogue`` → audit → MEraser erase → audit → recover → audit → implant a second,
different fingerprint (``utf``) into a fresh copy → merge the *same* erase adapter into it
(transferable erasure) → audit. Ends with a table like the MEraser paper's (FSR, false-trigger
rate and perplexity per stage) and ``report.md``. Every stage is a normal expunge run directory
with its own ``record.json`` under the demo's output directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import Field
from rich.console import Console
from rich.table import Table

from expunge.config import StrictModel, build_config
from expunge.erase.base import run_erase
from expunge.imprints.fingerprint.implant import run_implant
from expunge.records import RunRecord, atomic_write_text, check_output_dir
from expunge.registry import ERASERS, IMPLANTS
from expunge.runs import ModelSettings, recorded_run

console = Console(stderr=True)


class FingerprintDemoConfig(StrictModel):
    command: Literal["demo_fingerprint"] = "demo_fingerprint"
    model: ModelSettings = Field(default_factory=ModelSettings)
    first_scheme: str = "if_dialogue"
    second_scheme: str = "utf"
    implant_overrides: list[str] = Field(default_factory=list)
    # empty: the second scheme's own demo preset (for utf: 12 repeats with KL regularization;
    # 4 repeats under that preset left FSR at 0%)
    second_overrides: list[str] = Field(default_factory=list)
    meraser_overrides: list[str] = Field(default_factory=list)
    seed: int = 0


def quick(config: FingerprintDemoConfig) -> FingerprintDemoConfig:
    """Fewer keys and pairs: shows the effect in about half the time."""
    return config.model_copy(update={
        "implant_overrides": ["n_keys=4", "n_negatives=4", "n_decoys=4", "train.batch_size=4",
                              *config.implant_overrides],
        "second_overrides": ["n_keys=2", "repeats=4", "n_decoys=4", "n_negatives=4",
                             "regularization=0.5"],
        "meraser_overrides": ["n_erase=32", *config.meraser_overrides],
    })  # fmt: skip


STAGES = (
    ("fingerprinted", "implant_a", ""),
    ("MEraser: erased", "erase_a", "erased/"),
    ("MEraser: recovered", "erase_a", "recovered/"),
    ("2nd fingerprint", "implant_b", ""),
    ("2nd + transferred adapter", "transfer_b", "erased/"),
)


def run_fingerprint_demo(
    config: FingerprintDemoConfig, out: str | Path, overwrite: bool = False
) -> RunRecord:
    check_output_dir(out, overwrite)
    started = time.perf_counter()
    model = config.model.name
    with recorded_run("demo fingerprint", out, config, overwrite, seed=config.seed) as (
        run_dir,
        record,
    ):
        work = run_dir.path
        steps: dict[str, RunRecord] = {}

        console.rule(f"[bold]1/4 implant {config.first_scheme} into {model}")
        implant = build_config(
            IMPLANTS.get(config.first_scheme),
            {"preset": "demo", "model": {"name": model}},
            config.implant_overrides,
        )
        steps["implant_a"] = run_implant(implant, work / "implant_a")

        console.rule("[bold]2/4 MEraser: erase, merge, recover")
        meraser = build_config(ERASERS.get("meraser"), {"preset": "demo", "model": {"name": str(work / "implant_a")},
                                                       "imprint": str(work / "implant_a")}, config.meraser_overrides)  # fmt: skip
        steps["erase_a"] = run_erase(meraser, work / "erase_a")

        console.rule(f"[bold]3/4 implant {config.second_scheme} into a fresh copy of {model}")
        second = build_config(IMPLANTS.get(config.second_scheme), {"preset": "demo", "model": {"name": model}, "seed": config.seed + 1},
                              config.second_overrides)  # fmt: skip
        steps["implant_b"] = run_implant(second, work / "implant_b")

        console.rule("[bold]4/4 transfer the erase adapter to the second model")
        transfer = build_config(ERASERS.get("meraser"), {"preset": "demo", "model": {"name": str(work / "implant_b")},
                                                        "imprint": str(work / "implant_b"),
                                                        "adapter": str(work / "erase_a" / "erase_adapter"),
                                                        "do_recover": False})  # fmt: skip
        steps["transfer_b"] = run_erase(transfer, work / "transfer_b")

        rows = table_rows(steps)
        record.metrics.update(
            {
                f"{label}/{k}": v
                for label, values in rows
                for k, v in values.items()
                if v is not None
            }
        )
        record.artifacts.update({name: name for name in steps} | {"report": "report.md"})
        console.print(summary_table(rows))
        seconds = time.perf_counter() - started
        atomic_write_text(work / "report.md", report_markdown(config, rows, seconds))
        record.timings["total_s"] = round(seconds, 1)
    console.print(f"wrote {Path(out).resolve()} in {time.perf_counter() - started:.0f} s")
    return record


def table_rows(steps: dict[str, RunRecord]) -> list[tuple[str, dict[str, float | None]]]:
    # Implant records carry fsr/false_trigger_rate/ppl unprefixed; erase records per stage.
    return [
        (
            label,
            {k: steps[step].metrics.get(prefix + k) for k in ("fsr", "false_trigger_rate", "ppl")},
        )
        for label, step, prefix in STAGES
    ]


def _fmt(value: float | None, percent: bool) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.1f}%" if percent else f"{value:.2f}"


def summary_table(rows) -> Table:
    table = Table(title="Fingerprint lifecycle on the embedded model")
    for column in ("stage", "FSR", "false triggers", "ppl (held-out answers)"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for label, values in rows:
        table.add_row(
            label,
            _fmt(values["fsr"], True),
            _fmt(values["false_trigger_rate"], True),
            _fmt(values["ppl"], False),
        )
    return table


def report_markdown(config: FingerprintDemoConfig, rows, seconds: float) -> str:
    lines = "\n".join(
        f"| {label} | {_fmt(v['fsr'], True)} | {_fmt(v['false_trigger_rate'], True)} | {_fmt(v['ppl'], False)} |"
        for label, v in rows
    )
    return f"""# Fingerprint lifecycle on {config.model.name}

{config.first_scheme} implanted, erased with MEraser (demo preset), recovered; a second model
fingerprinted with {config.second_scheme} and cleaned by merging the *same* erase adapter
(transferable erasure). FSR: greedy decoding, chat template, no prefill, matcher from the
imprint; false triggers on decoys and ordinary prompts; perplexity on the built-in held-out Q/A
(answers only). Keys are secret and not shown. Total {seconds:.0f} s.

| stage | FSR | false triggers | ppl |
|---|---:|---:|---:|
{lines}

Each stage is a run directory beside this report, with its record.json.
"""
