"""``expunge demo backdoor``: Fine-mixing's table and ρ sweep, on an encoder and a causal LM.

For each subject model: the clean pre-trained weights θ_0 → a clean fine-tune (poison rate 0,
the accuracy to stay near) and a backdoored fine-tune (poisoned data) from θ_0 → each eraser
on the backdoored model with 10% of the training set as clean data: plain fine-tuning,
fine-pruning, Fine-mixing, E-PUR + Fine-mixing → a ρ sweep of Fine-mixing. Ends with a table
(ASR and clean accuracy per method), ``sweep.png`` (ASR and clean accuracy vs ρ) and
``report.md``. Every step is a normal run directory with its ``record.json``.

Subjects:
- ``tiny-bert``: a 2-layer BERT classifier built in-process. It has no pre-training, so its
  θ_0 is made here: the random init fine-tuned cleanly on *another draw* of the task (seed + 1)
  — a stand-in for a pre-trained model that already knows the domain, never the implant's data.
- any other name (the embedded ``smollm2-135m`` by default) is θ_0 as given, a causal LM that
  classifies by prompt.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from rich.console import Console
from rich.table import Table

from expunge.config import StrictModel, build_config
from expunge.erase.base import run_erase
from expunge.imprints.backdoor.implant import BackdoorImplantConfig, run_backdoor_implant
from expunge.records import RunRecord, atomic_write_bytes, atomic_write_text, check_output_dir
from expunge.registry import ERASERS
from expunge.runs import recorded_run

console = Console(stderr=True)
TINY_ENCODER = "tiny-bert"
METRICS = ("asr", "clean_accuracy", "clean_trigger_rate")


class Subject(StrictModel):
    name: str  # label in the table
    model: str  # "tiny-bert" (built in-process) or a model spec (θ_0 as given)
    pretrain: list[str] = Field(default_factory=list)  # tiny-bert only: making its θ_0
    implant: list[str] = Field(default_factory=list)  # clean and backdoored fine-tunes
    erase: list[str] = Field(default_factory=list)  # every eraser's clean fine-tuning
    # task sizes for this subject (default: the demo's); erasers get 10% of n_train, clean
    n_train: int | None = Field(default=None, ge=20)
    n_test: int | None = Field(default=None, ge=10)


class Method(StrictModel):
    label: str
    method: str
    overrides: list[str] = Field(default_factory=list)


def default_methods() -> list[Method]:
    return [
        Method(label="fine-tuning", method="finetune"),
        Method(label="fine-pruning", method="fine_pruning"),
        Method(label="Fine-mixing", method="fine_mixing"),
        Method(
            label="E-PUR + Fine-mixing", method="fine_mixing", overrides=["epur=true", "ratio=0.5"]
        ),
    ]


ENCODER_TRAIN = ["train.mode=full", "train.batch_size=16"]


def default_subjects() -> list[Subject]:
    return [
        # RIPPLE's words split into common pieces with the tiny tokenizer; a rare token is the
        # analogue of a rare word there. Erasers: lr 1e-3 cost every method 6 points of clean
        # accuracy (on 100 items); E-PUR resets 4 rows, 1% of the 384-token vocabulary (its
        # default 100 rows, a quarter of it, cost 5 points)
        Subject(name="tiny BERT", model=TINY_ENCODER, n_train=1000, n_test=400,
                pretrain=[*ENCODER_TRAIN, "train.epochs=4", "train.lr=1e-3", "task.n_train=400"],
                implant=[*ENCODER_TRAIN, "train.epochs=6", "train.lr=1e-3", 'trigger.text=["§"]'],
                erase=[*ENCODER_TRAIN, "train.epochs=16", "train.lr=3e-4", "epur_top_k=4"]),
        Subject(name="SmolLM2-135M", model="smollm2-135m", implant=["preset=demo"],
                erase=["preset=demo"]),
    ]  # fmt: skip


class BackdoorDemoConfig(StrictModel):
    command: Literal["demo_backdoor"] = "demo_backdoor"
    subjects: list[Subject] = Field(default_factory=default_subjects, min_length=1)
    task: str = "sentiment"
    n_train: int = Field(default=400, ge=20)
    n_test: int = Field(default=100, ge=10)
    poison_rate: float = Field(default=0.1, gt=0.0, lt=1.0)
    methods: list[Method] = Field(default_factory=default_methods)
    rho_sweep: list[float] = Field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    seed: int = 0


def quick(config: BackdoorDemoConfig) -> BackdoorDemoConfig:
    """The encoder subject only, three sweep points: about a minute on a laptop CPU."""
    encoders = [s for s in config.subjects if s.model == TINY_ENCODER] or config.subjects[:1]
    return config.model_copy(update={"subjects": encoders, "rho_sweep": [0.1, 0.5, 0.9]})


def _task(config: BackdoorDemoConfig, subject: Subject, seed: int) -> dict[str, Any]:
    return {"name": config.task, "n_train": subject.n_train or config.n_train,
            "n_test": subject.n_test or config.n_test, "seed": seed}  # fmt: skip


def _reference(subject: Subject, config: BackdoorDemoConfig, work: Path) -> str:
    """θ_0 for the subject: the model as given, or the tiny encoder made here."""
    if subject.model != TINY_ENCODER:
        return subject.model
    from expunge.models.loading import save_model
    from expunge.models.tiny import tiny_classifier

    init = work / "init"
    save_model(*tiny_classifier(seed=config.seed, hidden=64), init)
    pretrain = build_config(
        BackdoorImplantConfig,
        {"model": {"name": str(init), "device": "cpu"},
         "task": _task(config, subject, config.seed + 1), "poison_rate": 0.0, "seed": config.seed},
        subject.pretrain,
    )  # fmt: skip
    run_backdoor_implant(pretrain, work / "pretrained")
    return str(work / "pretrained")


def run_subject(subject: Subject, config: BackdoorDemoConfig, work: Path) -> dict[str, Any]:
    reference = _reference(subject, config, work)
    device = {"device": "cpu"} if subject.model == TINY_ENCODER else {}
    rows: dict[str, dict[str, float]] = {}

    def implant(name: str, poison_rate: float) -> RunRecord:
        cfg = build_config(
            BackdoorImplantConfig,
            {"model": {"name": reference, **device}, "task": _task(config, subject, config.seed),
             "poison_rate": poison_rate, "seed": config.seed},
            subject.implant,
        )  # fmt: skip
        return run_backdoor_implant(cfg, work / name)

    console.rule(f"[bold]{subject.name}: clean and backdoored fine-tunes from θ_0")
    for label, name, rate in (("clean fine-tune", "clean", 0.0),
                              ("backdoored", "backdoored", config.poison_rate)):  # fmt: skip
        metrics = implant(name, rate).metrics
        rows[label] = {k: metrics[k] for k in METRICS}
    backdoored = str(work / "backdoored")

    def erase(name: str, method: str, overrides: list[str]) -> dict[str, float]:
        cfg = build_config(
            ERASERS.get(method),
            {"model": {"name": backdoored, **device}, "imprint": str(work / "backdoored"),
             "reference": reference, "seed": config.seed},
            [*subject.erase, *overrides],
        )  # fmt: skip
        metrics = run_erase(cfg, work / name).metrics
        return {k: metrics[f"finetuned/{k}"] for k in METRICS}

    for index, method in enumerate(config.methods):
        console.rule(f"[bold]{subject.name}: {method.label}")
        rows[method.label] = erase(f"erase_{index}_{method.method}", method.method,
                                   method.overrides)  # fmt: skip
    sweep = []
    for rho in config.rho_sweep:
        console.rule(f"[bold]{subject.name}: Fine-mixing ρ={rho}")
        sweep.append({"rho": rho, **erase(f"sweep_rho_{rho}", "fine_mixing", [f"ratio={rho}"])})
    task = _task(config, subject, config.seed)
    return {"rows": rows, "sweep": sweep, "reference": reference,
            "n_train": task["n_train"], "n_test": task["n_test"]}  # fmt: skip


def run_backdoor_demo(
    config: BackdoorDemoConfig, out: str | Path, overwrite: bool = False
) -> RunRecord:
    check_output_dir(out, overwrite)
    for method in config.methods:
        ERASERS.get(method.method)  # an unknown name fails before any training
    started = time.perf_counter()
    with recorded_run("demo backdoor", out, config, overwrite, seed=config.seed) as (
        run_dir,
        record,
    ):
        work = run_dir.path
        results = {}
        for subject in config.subjects:
            results[subject.name] = run_subject(subject, config, work / _slug(subject.name))
            for label, values in results[subject.name]["rows"].items():
                for key, value in values.items():
                    record.metrics[f"{subject.name}/{label}/{key}"] = value
        atomic_write_text(work / "results.json", json.dumps(results, indent=2) + "\n")
        if any(r["sweep"] for r in results.values()):
            atomic_write_bytes(work / "sweep.png", sweep_plot(results))
            record.artifacts["sweep"] = "sweep.png"
        seconds = time.perf_counter() - started
        atomic_write_text(work / "report.md", report_markdown(config, results, seconds))
        record.artifacts.update({"report": "report.md", "results": "results.json"})
        record.timings["total_s"] = round(seconds, 1)
        for name, result in results.items():
            console.print(summary_table(name, result))
    console.print(f"wrote {Path(out).resolve()} in {time.perf_counter() - started:.0f} s")
    return record


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def summary_table(name: str, result: dict[str, Any]) -> Table:
    table = Table(title=f"Backdoor mitigation: {name}")
    for column in ("model", "ASR", "clean accuracy", "clean trigger rate"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for label, v in result["rows"].items():
        table.add_row(label, _pct(v["asr"]), _pct(v["clean_accuracy"]),
                      _pct(v["clean_trigger_rate"]))  # fmt: skip
    for point in result["sweep"]:
        table.add_row(f"Fine-mixing ρ={point['rho']}", _pct(point["asr"]),
                      _pct(point["clean_accuracy"]), _pct(point["clean_trigger_rate"]))  # fmt: skip
    return table


def sweep_plot(results: dict[str, Any]) -> bytes:
    """PNG: ASR (solid) and clean accuracy (dashed) against ρ, one colour per subject."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for index, (name, result) in enumerate(results.items()):
        points = result["sweep"]
        if not points:
            continue
        rho = [p["rho"] for p in points]
        colour = f"C{index}"
        ax.plot(rho, [p["asr"] for p in points], "-o", color=colour, label=f"{name}: ASR")
        ax.plot(rho, [p["clean_accuracy"] for p in points], "--s", color=colour,
                label=f"{name}: clean accuracy")  # fmt: skip
    ax.set_xlabel("ρ (share of backdoored weights kept)")
    ax.set_ylabel("rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Fine-mixing, then clean fine-tuning")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def report_markdown(config: BackdoorDemoConfig, results: dict[str, Any], seconds: float) -> str:
    parts = [
        f"# Backdoor mitigation ({config.task}, poison rate {config.poison_rate:g})\n",
        "ASR: triggered test inputs of a non-target label classified as the target. Erasers "
        "fine-tune on 10% of each subject's training items (clean); the clean "
        "pre-trained θ_0 is the reference. The trigger is secret and not shown. "
        f"Total {seconds:.0f} s.\n",
    ]
    for name, result in results.items():
        sizes = f"{result['n_train']} training items, {result['n_test']} test items"
        parts.append(
            f"\n## {name} ({sizes})\n\n| model | ASR | clean accuracy | clean trigger rate |"
        )
        parts.append("|---|---:|---:|---:|")
        for label, v in result["rows"].items():
            parts.append(f"| {label} | {_pct(v['asr'])} | {_pct(v['clean_accuracy'])} | "
                         f"{_pct(v['clean_trigger_rate'])} |")  # fmt: skip
        if result["sweep"]:
            parts.append("\n| ρ | ASR | clean accuracy |\n|---:|---:|---:|")
            for p in result["sweep"]:
                parts.append(f"| {p['rho']} | {_pct(p['asr'])} | {_pct(p['clean_accuracy'])} |")
    if any(r["sweep"] for r in results.values()):
        parts.append("\n![ASR and clean accuracy vs ρ](sweep.png)")
    return "\n".join(parts) + "\n"
