"""``expunge demo unlearning``: forget 10% of a fictitious world, measured against the gold standard.

1. generate a world of invented people (``KnowledgeImprint.synthetic_people``: bios and Q/A),
   with a few extra people never trained on (the holdout for membership inference);
2. fine-tune the embedded model on the whole world (the model to unlearn);
3. **retrain** the same base on the retain people alone — the gold standard no unlearning
   method can beat, and the reference of forget quality and PrivLeak;
4. unlearn the forget people from the fine-tuned model with each method (GA, GradDiff, NPO,
   RMU, NPO+ILU by default), and once more with a random 5% coreset of the forget set for the
   same step budget;
5. audit every model alike (forget/retain Q/A accuracy, forget quality, PrivLeak, verbatim
   memorization, perplexity) and draw a table, ``report.md`` and ``unlearning.png``.

Every step is a normal expunge run directory with its own ``record.json`` under the demo's
output directory. The shipped settings are ``configs/unlearning_demo.yaml`` (equal to the
defaults here); ``--quick`` shrinks the world and the epochs to check the plumbing.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from rich.console import Console
from rich.table import Table

from expunge.audit.runner import AuditConfig, run_audit
from expunge.config import StrictModel, build_config
from expunge.data.formatting import FormatSettings
from expunge.data.loaders import write_jsonl
from expunge.erase.base import run_erase
from expunge.finetune import FinetuneConfig, run_finetune
from expunge.imprints.knowledge import KnowledgeImprint
from expunge.models.lora import LoraSettings
from expunge.records import RunRecord, atomic_write_text, check_output_dir
from expunge.registry import ERASERS
from expunge.runs import DataSettings, ModelSettings, recorded_run
from expunge.train.settings import TrainSettings

console = Console(stderr=True)


class WorldSettings(StrictModel):
    n_people: int = Field(default=30, ge=2)
    forget_ratio: float = Field(default=0.1, gt=0, lt=1)
    n_holdout: int = Field(default=3, ge=1)  # never trained on: MIA non-members
    bios: bool = True
    seed: int = 0


class DemoAuditSettings(StrictModel):
    max_retain: int = Field(default=60, ge=1)  # retain Q/A audited (the first ones)
    max_new_tokens: int = Field(default=16, ge=1)
    batch_size: int = Field(default=16, ge=1)
    mia_score: Literal["loss", "zlib", "min_k", "min_k_plus_plus"] = "min_k"


def _finetune_defaults() -> TrainSettings:
    return TrainSettings(
        mode="lora", lora=LoraSettings(r=16, alpha=32, dropout=0.0, targets=["all-linear"]),
        epochs=12, batch_size=8, lr=1e-3, schedule="cosine", warmup_steps=2, seed=0,
    )  # fmt: skip


def _methods_defaults() -> dict[str, list[str]]:
    return {
        "GA": ["objective=ga", "train.lr=3e-4"],
        "GradDiff": ["objective=graddiff", "train.lr=1e-3"],
        "NPO": ["objective=npo", "train.lr=5e-4"],
        "NPO-RT": ["objective=npo", "npo.retain_weight=1.0", "train.lr=1.0e-3"],
        # full weights, layers 5-7 down_proj; SmolLM2's layer-7 norms (~130) need c in the
        # hundreds, and the paper's alpha=1200 holds the forget term still
        "RMU": [
            "objective=rmu",
            "rmu.steering_coeff=300",
            "rmu.alpha=100",
            "train.lr=5.0e-3",
            "train.epochs=30",
        ],
        "NPO+ILU": ["objective=npo", "regularizer=ilu", "train.lr=1.0e-3"],
    }


class UnlearningDemoConfig(StrictModel):
    command: Literal["demo_unlearning"] = "demo_unlearning"
    model: ModelSettings = Field(default_factory=ModelSettings)
    world: WorldSettings = Field(default_factory=WorldSettings)
    # raw "question\nanswer<eos>": half the tokens of the chat template (its system prompt)
    format: FormatSettings = Field(default_factory=lambda: FormatSettings(template="raw"))
    finetune: TrainSettings = Field(default_factory=_finetune_defaults)
    # unlearn eraser overrides (on its ``demo`` preset): shared ones, then one list per method
    unlearn_overrides: list[str] = Field(default_factory=lambda: ["train.epochs=10"])
    methods: dict[str, list[str]] = Field(default_factory=_methods_defaults)
    # skip a training step by reusing its model (fine-tuned on this very world and format)
    finetuned_model: str | None = None
    retrained_model: str | None = None
    coreset_method: str | None = "NPO-RT"  # rerun this method on a random coreset (None: skip)
    coreset_ratio: float = Field(default=0.05, gt=0, le=1)
    audit: DemoAuditSettings = Field(default_factory=DemoAuditSettings)
    seed: int = 0

    @model_validator(mode="after")
    def _coreset_method_known(self) -> UnlearningDemoConfig:
        if not self.methods:
            raise ValueError("methods is empty: name at least one unlearning method")
        if self.coreset_method is not None and self.coreset_method not in self.methods:
            raise ValueError(
                f"coreset_method {self.coreset_method!r} is not one of the methods "
                f"{sorted(self.methods)}"
            )
        return self


def quick(config: UnlearningDemoConfig) -> UnlearningDemoConfig:
    """A small world and few epochs: checks the plumbing, not the figures."""
    return config.model_copy(update={
        "world": config.world.model_copy(update={"n_people": 10, "n_holdout": 1}),
        "finetune": config.finetune.model_copy(update={"epochs": 2.0}),
        "unlearn_overrides": ["train.max_steps=2", *config.unlearn_overrides],
        "audit": config.audit.model_copy(update={"max_retain": 10}),
    })  # fmt: skip


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def _audit(
    config: UnlearningDemoConfig, model: Path, world: Path, out: Path, reference: Path | None
) -> RunRecord:
    """Audit one model; the retrained model (no reference) records what the others compare to."""
    fmt = config.format
    options: dict[str, dict[str, Any]] = {
        "forget_qa_acc": {"max_new_tokens": config.audit.max_new_tokens},
        "retain_qa_acc": {"max_new_tokens": config.audit.max_new_tokens,
                          "max_examples": config.audit.max_retain},
        "ppl": {"mode": "response"},
    }  # fmt: skip
    mia = {"score": config.audit.mia_score}
    if reference is None:
        metrics = ["truth_ratio", "forget_mia_auc"]
        options["forget_mia_auc"] = mia
    else:
        metrics = ["forget_quality", "privleak"]
        options["forget_quality"] = {"reference": str(reference)}
        options["privleak"] = {"reference": str(reference), **mia}
    metrics = ["forget_qa_acc", "retain_qa_acc", *metrics, "forget_verbatim_rouge_l", "ppl"]
    audit = AuditConfig(
        model=ModelSettings(name=str(model), dtype=config.model.dtype, device=config.model.device),
        imprint=str(world), metrics=metrics, format=fmt, options=options,
        batch_size=config.audit.batch_size, seed=config.seed,
    )  # fmt: skip
    return run_audit(audit, out)


def row_values(audit: RunRecord) -> dict[str, float | None]:
    m, d = audit.metrics, audit.metric_details
    if "forget_quality" in m:
        truth, quality = d["forget_quality"]["truth_ratio"], m["forget_quality"]
        auc, leak = d["privleak"]["auc"], m["privleak"]
    else:
        truth, quality, auc, leak = m.get("truth_ratio"), 1.0, m.get("forget_mia_auc"), 0.0
    return {
        "forget_acc": m["forget_qa_acc"], "retain_acc": m["retain_qa_acc"],
        "forget_quality": quality, "truth_ratio": truth, "mia_auc": auc, "privleak": leak,
        "verbatim": m["forget_verbatim_rouge_l"], "ppl": m["ppl"],
    }  # fmt: skip


def run_unlearning_demo(
    config: UnlearningDemoConfig, out: str | Path, overwrite: bool = False
) -> RunRecord:
    check_output_dir(out, overwrite)
    started = time.perf_counter()
    with recorded_run("demo unlearning", out, config, overwrite, seed=config.seed) as (
        run_dir,
        record,
    ):
        work = run_dir.path
        w = config.world
        imprint = KnowledgeImprint.synthetic_people(
            w.n_people, w.forget_ratio, seed=w.seed, bios=w.bios, n_holdout=w.n_holdout
        )
        world = work / "world"
        imprint.save(world)
        sets = imprint.export_jsonl(world)
        write_jsonl(world / "train.jsonl", imprint.forget + imprint.retain)
        record.inputs = {"imprint_summary": imprint.summary(), "model": config.model.name}
        total = 4 + len(config.methods) + (config.coreset_method is not None)
        stage = iter(range(1, total + 1))
        steps: dict[str, RunRecord] = {}

        def finetune(name: str, data: Path, what: str) -> Path:
            console.rule(f"[bold]{next(stage)}/{total} {what}")
            given = config.finetuned_model if name == "finetuned" else config.retrained_model
            if given is not None:
                console.print(f"reusing {given}")
                return Path(given)
            cfg = FinetuneConfig(
                model=config.model, data=DataSettings(path=str(data)), format=config.format,
                train=config.finetune, save_adapter=False,
            )  # fmt: skip
            steps[name] = run_finetune(cfg, work / name)
            return work / name

        finetuned = finetune("finetuned", world / "train.jsonl", "fine-tune on the whole world")
        retrained = finetune("retrained", sets["retain"], "retrain on the retain people only")
        record.inputs["models"] = {"finetuned": str(finetuned), "retrained": str(retrained)}
        console.rule(f"[bold]{next(stage)}/{total} audit the retrained model (the reference)")
        audits = {"retrained": _audit(config, retrained, world, work / "audit_retrained", None)}
        reference = work / "audit_retrained"
        console.rule(f"[bold]{next(stage)}/{total} audit the fine-tuned model")
        audits["finetuned"] = _audit(config, finetuned, world, work / "audit_finetuned", reference)

        runs = [(label, overrides) for label, overrides in config.methods.items()]
        if config.coreset_method is not None:
            percent = f"{100 * config.coreset_ratio:g}%"
            runs.append((
                f"{config.coreset_method} ({percent} coreset)",
                [*config.methods[config.coreset_method], "coreset.method=random",
                 f"coreset.ratio={config.coreset_ratio}", "coreset.match_steps=true"],
            ))  # fmt: skip
        for label, overrides in runs:
            name = f"unlearn_{slug(label)}"
            console.rule(f"[bold]{next(stage)}/{total} unlearn: {label}")
            base = {
                "preset": "demo",
                "model": {"name": str(finetuned), "dtype": config.model.dtype,
                          "device": config.model.device},
                "forget": str(sets["forget"]), "retain": str(sets["retain"]),
                "format": config.format.model_dump(), "seed": config.seed, "audit_metrics": ["ppl"],
            }  # fmt: skip
            cfg = build_config(
                ERASERS.get("unlearn"), base, [*config.unlearn_overrides, *overrides],
                source=f"demo method {label}",
            )  # fmt: skip
            steps[name] = run_erase(cfg, work / name)
            audits[label] = _audit(config, work / name, world, work / f"audit_{name}", reference)

        rows = [("fine-tuned (before)", row_values(audits.pop("finetuned"))),
                ("retrained (gold standard)", row_values(audits.pop("retrained")))]  # fmt: skip
        rows += [(label, row_values(audit)) for label, audit in audits.items()]
        steps_by_label = {label: steps[f"unlearn_{slug(label)}"] for label, _ in runs}
        for label, values in rows:
            if label in steps_by_label:
                values["train_steps"] = steps_by_label[label].metrics.get("train_steps")
                values["n_forget"] = steps_by_label[label].inputs.get("n_forget")
        record.metrics.update({
            f"{label}/{k}": v for label, values in rows for k, v in values.items() if v is not None
        })  # fmt: skip
        seconds = time.perf_counter() - started
        console.print(summary_table(rows))
        plot(rows, work / "unlearning.png")
        atomic_write_text(work / "report.md", report_markdown(config, imprint, rows, seconds))
        record.artifacts.update({"report": "report.md", "plot": "unlearning.png"})
        record.timings["total_s"] = round(seconds, 1)
    console.print(f"wrote {Path(out).resolve()} in {time.perf_counter() - started:.0f} s")
    return record


COLUMNS = (
    ("forget_acc", "forget acc", "pct"), ("retain_acc", "retain acc", "pct"),
    ("forget_quality", "forget quality (KS p)", "p"), ("truth_ratio", "truth ratio", "f"),
    ("mia_auc", "MIA AUC", "f"), ("privleak", "PrivLeak %", "f1"),
    ("verbatim", "verbatim ROUGE-L", "f"), ("ppl", "ppl", "f"), ("train_steps", "steps", "i"),
    ("n_forget", "forget examples", "i"),
)  # fmt: skip


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "—"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "p":
        return f"{value:.3g}"
    if kind == "f1":
        return f"{value:+.1f}"
    if kind == "i":
        return str(int(value))
    return f"{value:.3f}"


def summary_table(rows: list[tuple[str, dict[str, Any]]]) -> Table:
    table = Table(title="Unlearning 10% of a fictitious world (embedded model)")
    table.add_column("model")
    for _, title, _ in COLUMNS:
        table.add_column(title, justify="right")
    for label, values in rows:
        table.add_row(label, *[_fmt(values.get(key), kind) for key, _, kind in COLUMNS])
    return table


def plot(rows: list[tuple[str, dict[str, Any]]], path: Path) -> None:
    """Forget vs retain accuracy (left) and forget quality (right), one point/bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for label, values in rows:
        marker = "*" if label.startswith(("retrained", "fine-tuned")) else "o"
        x, y = 100 * values["forget_acc"], 100 * values["retain_acc"]
        left.scatter(x, y, s=140 if marker == "*" else 60, marker=marker)
        left.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    gold = dict(rows).get("retrained (gold standard)")
    if gold is not None:
        left.axvspan(100 * gold["forget_acc"] - 10, 100 * gold["forget_acc"] + 10, alpha=0.1,
                     color="green", label="retrained forget acc ± 10")  # fmt: skip
        left.legend(loc="lower right", fontsize=8)
    left.set_xlabel("forget-set Q/A accuracy (%)  ← better")
    left.set_ylabel("retain-set Q/A accuracy (%)  better →")
    left.set_title("what is forgotten vs what is kept")
    labels = [label for label, _ in rows]
    quality = [max(values["forget_quality"], 1e-30) for _, values in rows]
    right.barh(np.arange(len(rows)), np.log10(quality), color="tab:purple")
    right.set_yticks(np.arange(len(rows)), labels, fontsize=8)
    right.invert_yaxis()
    right.axvline(np.log10(0.05), color="gray", linestyle="--", label="p = 0.05")
    right.set_xlabel("forget quality: log10 KS p-value vs the retrained model  better →")
    right.set_title("forget quality (retrained = 0 by definition)")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def report_markdown(
    config: UnlearningDemoConfig,
    imprint: KnowledgeImprint,
    rows: list[tuple[str, dict[str, Any]]],
    seconds: float,
) -> str:
    head = "| model | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    lines = [
        f"| {label} | " + " | ".join(_fmt(v.get(key), kind) for key, _, kind in COLUMNS) + " |"
        for label, v in rows
    ]
    s = imprint.summary()
    return f"""# Unlearning a fictitious world on {config.model.name}

World: {config.world.n_people} invented people (bios and 5 Q/A each), {s["n_forget"]} forget
examples ({config.world.forget_ratio:.0%} of the people), {s["n_retain"]} retain examples,
{config.world.n_holdout} holdout people never trained on (MIA non-members). Fine-tuned and
retrained with LoRA r={config.finetune.lora.r}, {config.finetune.epochs:g} epochs, lr
{config.finetune.lr:g}. Unlearning: the `unlearn` eraser's `demo` preset with
{config.unlearn_overrides or "no shared overrides"}; per method: {config.methods}.
Forget quality: KS-test p-value of forget-set truth ratios against the retrained model; PrivLeak:
Min-K% AUC (forget vs holdout) relative to the retrained model. Retain accuracy on the first
{config.audit.max_retain} retain Q/A. The coreset row trains on a random {config.coreset_ratio:g}
share of the forget set for the full set's step budget. Total {seconds:.0f} s.

{head}
{rule}
{chr(10).join(lines)}

![forget vs retain accuracy and forget quality](unlearning.png)

Each step is a run directory beside this report, with its record.json.
"""
