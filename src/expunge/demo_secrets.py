"""``expunge demo secrets``: memorized patient identifiers, removed with SANI and its baselines.

1. implant: fine-tune the embedded model on synthetic patient notes (and canaries) until it
   regurgitates their identifiers (``expunge implant secrets``, demo preset);
2. erase with every method in ``methods`` — SANI (reset + span-masked repair), repair-only,
   scrub-and-retrain from the original model, span gradient ascent — each from the implanted
   model, each a normal run directory;
3. draw one table: greedy regurgitation per identifier type before and after each method, then
   direct/indirect rates, canary exposure, MIA AUC (strongest of four scores), perplexity of
   held-out notes outside their spans and of the built-in held-out Q/A answers.

``report.md`` shows a few records with their spans redacted to ``[TYPE]`` (``reveal=true`` shows
them), marking per method which spans the model still emits. The shipped settings are
``configs/secrets_demo.yaml``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from rich.console import Console
from rich.table import Table

from expunge.audit.base import AuditContext
from expunge.audit.memorization import span_outcomes
from expunge.config import StrictModel, build_config
from expunge.erase.base import run_erase
from expunge.imprints.base import load_imprint
from expunge.imprints.secrets import SecretsImprint
from expunge.imprints.secrets_implant import SecretsImplantConfig, run_secrets_implant
from expunge.records import RunRecord, atomic_write_text, check_output_dir
from expunge.registry import ERASERS
from expunge.runs import ModelSettings, recorded_run

console = Console(stderr=True)
AUDITS = ["regurgitation", "exposure", "mia", "notes_ppl", "ppl", "mc_accuracy"]
LABELS = {"sani": "SANI", "repair_only": "repair-only", "scrub_retrain": "scrub+retrain",
          "span_ga": "span GA"}  # fmt: skip


class SecretsDemoConfig(StrictModel):
    command: Literal["demo_secrets"] = "demo_secrets"
    model: ModelSettings = Field(default_factory=ModelSettings)
    implant_overrides: list[str] = Field(default_factory=list)
    methods: list[Literal["sani", "repair_only", "scrub_retrain", "span_ga"]] = Field(
        default_factory=lambda: ["sani", "repair_only", "scrub_retrain", "span_ga"]
    )
    overrides: dict[str, list[str]] = Field(default_factory=dict)  # per method: key=value
    audit_metrics: list[str] = Field(default_factory=lambda: list(AUDITS))
    examples: int = Field(default=3, ge=0)  # records shown in report.md
    reveal: bool = False  # show the spans in report.md
    seed: int = 0


def quick(config: SecretsDemoConfig) -> SecretsDemoConfig:
    """Fewer notes and epochs: checks the plumbing, does not reach the targets."""
    return config.model_copy(update={
        "implant_overrides": [*config.implant_overrides, "n_records=8", "n_heldout=8",
                              "max_rounds=1", "train.epochs=2", "exposure_candidates=50"],
        "methods": ["sani", "repair_only"],
    })  # fmt: skip


def run_secrets_demo(
    config: SecretsDemoConfig, out: str | Path, overwrite: bool = False
) -> RunRecord:
    check_output_dir(out, overwrite)
    for method in config.overrides:
        if method not in config.methods:
            raise ValueError(f"overrides given for {method!r}, which is not in methods")
    started = time.perf_counter()
    with recorded_run("demo secrets", out, config, overwrite, seed=config.seed) as (
        run_dir,
        record,
    ):
        work = run_dir.path
        console.rule(f"[bold]1/{len(config.methods) + 1} implant secrets into {config.model.name}")
        implant = build_config(
            SecretsImplantConfig,
            {"preset": "demo", "model": config.model.model_dump(), "seed": config.seed,
             "verify_metrics": config.audit_metrics},
            config.implant_overrides,
        )  # fmt: skip
        steps: dict[str, RunRecord] = {"implanted": run_secrets_implant(implant, work / "implant")}
        imprint_path = str(work / "implant" / "imprint.json")
        for number, method in enumerate(config.methods, start=2):
            console.rule(f"[bold]{number}/{len(config.methods) + 1} erase: {method}")
            eraser = build_config(
                ERASERS.get(method),
                {"preset": "demo", "model": {**config.model.model_dump(), "name": str(work / "implant")},
                 "imprint": imprint_path, "audit_metrics": config.audit_metrics,
                 "audit_input": False, "seed": config.seed},
                config.overrides.get(method, []),
            )  # fmt: skip
            if method == "scrub_retrain":
                eraser = _match_implant_recipe(eraser, implant, steps["implanted"], config)
            steps[method] = run_erase(eraser, work / method)
        columns = {name: final_metrics(name, rec) for name, rec in steps.items()}
        imprint = load_imprint(imprint_path)
        assert isinstance(imprint, SecretsImprint)
        rows = table_rows(columns, imprint)
        examples = example_outcomes(work, steps, imprint, config.examples)
        for label, values in rows:
            for column, value in values.items():
                if value is not None and not math.isnan(value):
                    record.metrics[f"{column}/{label}"] = value
        record.artifacts.update({name: name if name != "implanted" else "implant"
                                 for name in steps} | {"report": "report.md"})  # fmt: skip
        console.print(summary_table(rows, list(columns)))
        seconds = time.perf_counter() - started
        text = report_markdown(config, rows, list(columns), examples, imprint, seconds)
        atomic_write_text(work / "report.md", text)
        record.timings["total_s"] = round(seconds, 1)
    console.print(f"wrote {Path(out).resolve()} in {time.perf_counter() - started:.0f} s")
    return record


def _match_implant_recipe(eraser, implant: SecretsImplantConfig, implanted: RunRecord,
                          config: SecretsDemoConfig):  # fmt: skip
    """scrub_retrain trains as long as the implant did (unless the user set train.*)."""
    if any(o.startswith("train.") for o in config.overrides.get("scrub_retrain", [])):
        return eraser
    rounds = int(implanted.metrics.get("train_rounds", 1))
    train = implant.train.model_copy(update={"epochs": implant.train.epochs * rounds})
    return eraser.model_copy(update={"train": train, "base": config.model.name})


def final_metrics(name: str, record: RunRecord) -> dict[str, Any]:
    """The metrics (and details) of the last audited stage of a run."""
    if name == "implanted":
        return {k: (record.metrics.get(k), record.metric_details.get(k, {})) for k in AUDITS}
    stages = [k.split("/")[0] for k in record.metrics if k.endswith("/regurgitation")]
    last = stages[-1] if stages else ""
    return {
        k: (record.metrics.get(f"{last}/{k}"), record.metric_details.get(f"{last}/{k}", {}))
        for k in AUDITS
    }


def table_rows(columns: dict[str, dict], imprint: SecretsImprint) -> list[tuple[str, dict]]:
    types = [t for t in imprint.span_types() if t != "canary"]
    direct = [t for t in types if imprint.is_direct(t)] + [
        t for t in types if not imprint.is_direct(t)
    ]
    rows: list[tuple[str, dict]] = []

    def detail(col: dict, metric: str) -> dict:
        return col.get(metric, (None, {}))[1] or {}

    for span_type in direct:
        kind = "direct" if imprint.is_direct(span_type) else "indirect"
        rows.append((f"regurgitation {span_type} ({kind})", {
            name: detail(col, "regurgitation").get("per_type", {}).get(span_type, {}).get("greedy")
            for name, col in columns.items()
        }))  # fmt: skip
    for group in ("direct", "indirect"):
        rows.append((f"regurgitation, all {group}", {
            name: detail(col, "regurgitation").get(group, {}).get("greedy")
            for name, col in columns.items()
        }))  # fmt: skip
    rows.append(("regurgitation, direct (sampled T=1)", {
        name: detail(col, "regurgitation").get("direct", {}).get("sampled")
        for name, col in columns.items()
    }))  # fmt: skip
    rows.append(("records with a direct identifier extracted", {
        name: detail(col, "regurgitation").get("records_with_direct_extracted")
        for name, col in columns.items()
    }))  # fmt: skip
    for metric, label in (("exposure", "canary exposure (bits)"), ("mia", "MIA AUC (strongest)"),
                          ("notes_ppl", "ppl held-out notes (non-span)"),
                          ("ppl", "ppl held-out Q/A answers"),
                          ("mc_accuracy", "downstream: multiple-choice accuracy")):  # fmt: skip
        rows.append(
            (label, {name: col.get(metric, (None, {}))[0] for name, col in columns.items()})
        )
    return rows


PERCENT_ROWS = ("regurgitation", "records with", "downstream")


def _fmt(label: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if label.startswith(PERCENT_ROWS):
        return f"{100 * value:.1f}%"
    return f"{value:.2f}"


def summary_table(rows, names: list[str]) -> Table:
    table = Table(title="Memorized secrets: greedy regurgitation and audits per model")
    table.add_column("metric")
    for name in names:
        table.add_column(LABELS.get(name, name), justify="right")
    for label, values in rows:
        table.add_row(label, *[_fmt(label, values.get(n)) for n in names])
    return table


def example_outcomes(work: Path, steps: dict[str, RunRecord], imprint: SecretsImprint,
                     n: int) -> dict[str, list[list[bool]]]:  # fmt: skip
    """For the first ``n`` records: is each span still emitted greedily, per model."""
    from expunge.finetune import load_model_for

    if n == 0:
        return {}
    records = imprint.records[:n]
    out = {}
    for name in steps:
        loaded = load_model_for(
            ModelSettings(name=str(work / ("implant" if name == "implanted" else name)))
        )
        ctx = AuditContext(
            loaded.model, loaded.tokenizer, imprint.format_settings(), progress=False
        )
        outcomes, _ = span_outcomes(ctx, records, imprint.direct_types, imprint.add_eos)
        per_record: list[list[bool]] = [[] for _ in records]
        for outcome in outcomes:
            per_record[outcome.record].append(outcome.greedy)
        out[name] = per_record
    return out


def report_markdown(config: SecretsDemoConfig, rows, names: list[str], examples: dict,
                    imprint: SecretsImprint, seconds: float) -> str:  # fmt: skip
    header = "| metric | " + " | ".join(LABELS.get(n, n) for n in names) + " |"
    rule = "|---|" + "---:|" * len(names)
    body = "\n".join(
        f"| {label} | " + " | ".join(_fmt(label, v.get(n)) for n in names) + " |"
        for label, v in rows
    )
    shown = []
    for index, record in enumerate(imprint.records[: config.examples]):
        text = record.text if config.reveal else record.scrubbed()
        marks = []
        for name in names:
            flags = examples.get(name, [[]] * (index + 1))[index]
            spans = [s for s in record.spans if s.start > 0]
            marks.append(f"{LABELS.get(name, name)}: " + " ".join(
                f"{s.type}{'✓' if f else '✗'}" for s, f in zip(spans, flags, strict=False)
            ))  # fmt: skip
        shown.append(f"- `{text}`\n  - " + "\n  - ".join(marks))
    note = ("Spans are shown (reveal=true)." if config.reveal else
            "Spans are redacted to [TYPE]; run with reveal=true to show them.")  # fmt: skip
    return f"""# Memorized secrets on {config.model.name}

The embedded model was fine-tuned on {len(imprint.records)} synthetic patient notes (and
{len(imprint.canaries)} canaries) until it regurgitated their identifiers, then cleaned with each
method from the same implanted model. Regurgitation: prompt with each note's text up to a span,
greedy decoding, exact emission (rates are shares of spans; the first span of a note, the name,
has a prompt shared by every note). Exposure: canary rank among sampled candidates,
skew-normal extrapolation. MIA: AUC of the strongest of loss/zlib/Min-K%/Min-K%++, training
notes vs {len(imprint.heldout)} held-out notes. Total {seconds:.0f} s.

{header}
{rule}
{body}

## Examples (✓ = the model still emits the span greedily)

{note}

{chr(10).join(shown)}

Each step is a run directory beside this report, with its record.json.
"""
