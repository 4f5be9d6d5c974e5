"""The verbs that run one stage: finetune, audit, implant, export, erase, stress, detect, scan."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from expunge.cli.common import (
    ConfigOpt,
    ImprintOpt,
    ModelOpt,
    OutOpt,
    Overrides,
    OverwriteOpt,
    app,
    console,
    keys_epilog,
    name_list,
    quiet_libraries,
    stage_verb,
)
from expunge.errors import ConfigError


@app.command(epilog=keys_epilog("finetune"))
def finetune(
    out: OutOpt,
    overrides: Overrides = None,
    model: ModelOpt = None,
    data: Annotated[str | None, typer.Option(help="training data (.jsonl or dataset)")] = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = False,
    resume: Annotated[
        bool, typer.Option(help="continue an interrupted run from its checkpoint")
    ] = False,
) -> None:
    """Supervised fine-tuning (LoRA or full) through the training loop."""
    from expunge.finetune import FinetuneConfig

    flags = {"model.name": model, "data.path": data}
    stage_verb(FinetuneConfig, config, flags, overrides, out, overwrite, resume)


@app.command(epilog=keys_epilog("audit"))
def audit(
    out: OutOpt,
    overrides: Overrides = None,
    model: ModelOpt = None,
    metrics: Annotated[str | None, typer.Option(help="comma-separated metric names")] = None,
    data: Annotated[str | None, typer.Option(help="evaluation data (.jsonl or dataset)")] = None,
    imprint: ImprintOpt = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Measure a model: imprint strength and utility metrics, written to record.json."""
    from expunge.audit.runner import AuditConfig

    # given but empty ("" or ","): an error, not the default metrics
    metric_list = name_list(metrics, "--metrics", "leave the option out for the default ones") \
        if metrics is not None else None  # fmt: skip
    flags = {"model.name": model, "data.path": data, "imprint": imprint, "metrics": metric_list}
    stage_verb(AuditConfig, config, flags, overrides, out, overwrite)


implant_app = typer.Typer(
    help="Build test subjects: put an imprint into a model.", no_args_is_help=True
)


app.add_typer(implant_app, name="implant")


def implant_verb(scheme: str, kind: str, config: Path | None, flags: dict[str, Any],
             overrides: list[str] | None, out: Path, overwrite: bool) -> None:  # fmt: skip
    from expunge.registry import IMPLANTS

    cls = IMPLANTS.get(scheme)
    made = cls.model_fields["kind"].default
    if made != kind:
        raise ConfigError(f"{scheme!r} makes a {made} imprint; use 'expunge implant {made}'")
    stage_verb(cls, config, {"model.name": flags.pop("model"), **flags}, overrides, out, overwrite)


@implant_app.command(
    "fingerprint",
    epilog=keys_epilog("implant SCHEME", "SCHEME: if_simple, if_dialogue, utf or chain_hash"),
)
def implant_fingerprint(
    out: OutOpt,
    overrides: Overrides = None,
    scheme: Annotated[
        str, typer.Option(help="if_simple, if_dialogue, utf or chain_hash")
    ] = "if_dialogue",
    model: ModelOpt = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Fingerprint a model: writes model/, imprint.json (0600) and record.json."""
    implant_verb(scheme, "fingerprint", config, {"model": model}, overrides, out, overwrite)


@implant_app.command("backdoor", epilog=keys_epilog("implant backdoor"))
def implant_backdoor(
    out: OutOpt,
    overrides: Overrides = None,
    scheme: Annotated[
        str,
        typer.Option(help="backdoor (classification) or generative_backdoor (trigger → response)"),
    ] = "backdoor",
    model: ModelOpt = None,
    task: Annotated[
        str | None, typer.Option(help="sentiment, sentence_pair or a .jsonl of text/label")
    ] = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Backdoor a model by poisoned fine-tuning: writes model/, imprint.json (0600), record.json."""
    implant_verb(scheme, "backdoor", config, {"model": model, "task.name": task}, overrides, out,
             overwrite)  # fmt: skip


@implant_app.command("secrets", epilog=keys_epilog("implant secrets"))
def implant_secrets(
    out: OutOpt,
    overrides: Overrides = None,
    model: ModelOpt = None,
    records: Annotated[
        str | None, typer.Option(help="JSONL of {text, spans} (default: the synthetic clinic)")
    ] = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Fine-tune on notes until their identifiers are memorized: model/, imprint.json (0600)."""
    implant_verb("secrets", "secrets", config, {"model": model, "records": records}, overrides, out,
             overwrite)  # fmt: skip


@implant_app.command("knowledge", epilog=keys_epilog("implant people"))
def implant_knowledge(
    out: OutOpt,
    overrides: Overrides = None,
    scheme: Annotated[str, typer.Option(help="people (a fictitious world)")] = "people",
    model: ModelOpt = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Teach a model a world to unlearn later: model/, imprint.json (forget/retain sets)."""
    implant_verb(scheme, "knowledge", config, {"model": model}, overrides, out, overwrite)


@app.command()
def export(
    benchmark: Annotated[str, typer.Argument(help="tofu or muse: the layout to write")],
    out: OutOpt,
    n_people: Annotated[int | None, typer.Option(help="people in the world (default 100)")] = None,
    seed: Annotated[int | None, typer.Option(help="the world's seed (default 0)")] = None,
    forget_ratio: Annotated[
        float | None, typer.Option(help="muse: share of the people forgotten (default 0.1)")
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write the synthetic people world in TOFU's or MUSE's hub layout (a benchmark source)."""
    from expunge.data.benchmarks.export import export_benchmark

    quiet_libraries()
    given = {"n_people": n_people, "seed": seed, "forget_ratio": forget_ratio}
    path = export_benchmark(benchmark, out, overwrite=overwrite,
                            **{k: v for k, v in given.items() if v is not None})  # fmt: skip
    names = {"tofu": "tofu", "muse": "muse_news"}
    console.print(f"wrote the {benchmark.upper()} layout to {path}; load it with "
                  f"load_benchmark({names.get(benchmark, benchmark)!r}, source={str(path)!r}) or "
                  f"implant benchmark=... source={path}")  # fmt: skip


@app.command(epilog=keys_epilog("erase METHOD", "METHOD: expunge ls erasers"))
def erase(
    method: Annotated[str, typer.Argument(help="eraser name (expunge ls erasers)")],
    out: OutOpt,
    overrides: Overrides = None,
    model: Annotated[str | None, typer.Option(help="the model to clean")] = None,
    imprint: Annotated[str | None, typer.Option(help="imprint.json, to audit each stage")] = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Remove an imprint with an eraser (its options: expunge config erase METHOD)."""
    from expunge.registry import ERASERS

    flags = {"model.name": model, "imprint": imprint}
    stage_verb(ERASERS.get(method), config, flags, overrides, out, overwrite)


@app.command(epilog=keys_epilog("stress STRESSOR", "STRESSOR: expunge ls stressors"))
def stress(
    stressor: Annotated[str, typer.Argument(help="stressor name (expunge ls stressors)")],
    out: OutOpt,
    overrides: Overrides = None,
    model: Annotated[str | None, typer.Option(help="the (erased) model to stress")] = None,
    imprint: Annotated[str | None, typer.Option(help="imprint.json to re-audit")] = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Attack a model (relearn, finetune, quantize, sampling, prompt) and re-audit its imprint."""
    from expunge.registry import STRESSORS

    flags = {"model.name": model, "imprint": imprint}
    stage_verb(STRESSORS.get(stressor), config, flags, overrides, out, overwrite)


@app.command(epilog=keys_epilog("detect"))
def detect(
    out: OutOpt,
    overrides: Overrides = None,
    original: Annotated[str | None, typer.Option(help="the model before erasure")] = None,
    erased: Annotated[str | None, typer.Option(help="the erased model")] = None,
    imprint: Annotated[
        str | None, typer.Option(help="imprint.json: its own data are the relevant prompts")
    ] = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Trace detection: can a classifier tell the erased model's outputs from the original's?"""
    from expunge.detect.base import DetectConfig

    flags = {"original.name": original, "erased.name": erased, "imprint": imprint}
    stage_verb(DetectConfig, config, flags, overrides, out, overwrite)


@app.command()
def scan(
    out: OutOpt,
    overrides: Overrides = None,
    model: Annotated[str | None, typer.Option(help="the model trained on the data")] = None,
    data: Annotated[str | None, typer.Option(help="the training set (.jsonl)")] = None,
    imprint: Annotated[
        str | None, typer.Option(help="imprint with the rows' poison labels (for AUROC)")
    ] = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Score every training row by how likely it is poisoned; write flagged.jsonl, retain.jsonl."""
    from expunge.scan.base import ScanConfig

    flags = {"model.name": model, "data": data, "imprint": imprint}
    stage_verb(ScanConfig, config, flags, overrides, out, overwrite)
