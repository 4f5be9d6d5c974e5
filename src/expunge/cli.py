"""The ``expunge`` command line: one thin function per verb, each calling the library."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from expunge.errors import ConfigError, ExpungeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Take an imprint out of a language model and prove it is gone.",
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

Overrides = Annotated[list[str] | None, typer.Argument(help="key=value config overrides")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="output run directory")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="replace an existing --out")]


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    import transformers

    # Deprecation notices from inside transformers/peft are not actionable for our users.
    warnings.filterwarnings("ignore", category=FutureWarning)

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _config(cls, config: Path | None, flags: dict[str, Any], overrides: list[str] | None):
    from expunge.config import build_config, load_yaml
    from expunge.runs import flag_overrides

    base = load_yaml(config) if config else {}
    return build_config(
        cls, flag_overrides(base, flags), overrides or [], source=str(config or "cli")
    )


CONFIG_CLASSES = {
    "finetune": "expunge.finetune:FinetuneConfig",
    "audit": "expunge.audit.runner:AuditConfig",
    "demo": "expunge.demo:DemoConfig",
    "demo_fingerprint": "expunge.demo_fingerprint:FingerprintDemoConfig",
}
# implants and erasers validate by their registry name: 'command: implant' + 'scheme: NAME',
# 'command: erase' + 'method: NAME'.


def _config_class(command: str):
    from expunge.registry import Registry

    registry = Registry("config command")
    for name, target in CONFIG_CLASSES.items():
        registry.register(name, target)
    return registry.get(command)


@app.command("ls")
def ls(
    kind: Annotated[str | None, typer.Argument(help="implants, erasers, metrics, ...")] = None,
) -> None:
    """List registered names (all kinds, or one)."""
    from expunge.config import suggest
    from expunge.registry import REGISTRIES

    if kind is not None and kind not in REGISTRIES:
        raise ConfigError(
            f"unknown kind {kind!r}{suggest(kind, list(REGISTRIES))}; known: {', '.join(REGISTRIES)}"
        )
    table = Table(show_header=True)
    table.add_column("kind")
    table.add_column("name")
    table.add_column("what it is")
    for name, registry in REGISTRIES.items():
        if kind not in (None, name):
            continue
        for entry in registry.names():
            table.add_row(name, entry, registry.help(entry))
    console.print(table)


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="YAML config to check")]) -> None:
    """Check a YAML config against its schema (the 'command:' key says which)."""
    from expunge.config import build_config, load_yaml

    data = load_yaml(config)
    command = data.get("command")
    if command is None:
        raise ConfigError(
            f"{config}: no 'command:' key (one of {', '.join([*CONFIG_CLASSES, 'implant', 'erase'])})"
        )
    if command == "implant":
        from expunge.registry import IMPLANTS

        cls = IMPLANTS.get(str(data.get("scheme")))
    elif command == "erase":
        from expunge.registry import ERASERS

        cls = ERASERS.get(str(data.get("method")))
    else:
        cls = _config_class(command)
    build_config(cls, data, source=str(config))
    console.print(f"[green]ok[/]: {config} is a valid {command} config")


@app.command()
def finetune(
    out: OutOpt,
    overrides: Overrides = None,
    model: Annotated[str | None, typer.Option(help="hub id, directory or embedded name")] = None,
    data: Annotated[str | None, typer.Option(help="training data (.jsonl or dataset)")] = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = False,
    resume: Annotated[
        bool, typer.Option(help="continue an interrupted run from its checkpoint")
    ] = False,
) -> None:
    """Supervised fine-tuning (LoRA or full) through the training loop."""
    from expunge.finetune import FinetuneConfig, run_finetune

    _quiet_libraries()
    cfg = _config(FinetuneConfig, config, {"model.name": model, "data.path": data}, overrides)
    record = run_finetune(cfg, out, overwrite=overwrite, resume=resume)
    _print_metrics(record.metrics, f"finetune → {out}")


@app.command()
def audit(
    out: OutOpt,
    overrides: Overrides = None,
    model: Annotated[str | None, typer.Option(help="hub id, directory or embedded name")] = None,
    metrics: Annotated[str | None, typer.Option(help="comma-separated metric names")] = None,
    data: Annotated[str | None, typer.Option(help="evaluation data (.jsonl or dataset)")] = None,
    imprint: Annotated[str | None, typer.Option(help="imprint.json to audit against")] = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Measure a model: imprint strength and utility metrics, written to record.json."""
    from expunge.audit.runner import AuditConfig, run_audit

    _quiet_libraries()
    metric_list = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    flags = {"model.name": model, "data.path": data, "imprint": imprint, "metrics": metric_list}
    cfg = _config(AuditConfig, config, flags, overrides)
    record = run_audit(cfg, out, overwrite=overwrite)
    _print_metrics(record.metrics, f"audit → {out}")


implant_app = typer.Typer(
    help="Build test subjects: put an imprint into a model.", no_args_is_help=True
)
app.add_typer(implant_app, name="implant")


@implant_app.command("fingerprint")
def implant_fingerprint(
    out: OutOpt,
    overrides: Overrides = None,
    scheme: Annotated[
        str, typer.Option(help="if_simple, if_dialogue, utf or chain_hash")
    ] = "if_dialogue",
    model: Annotated[str | None, typer.Option(help="hub id, directory or embedded name")] = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Fingerprint a model: writes model/, imprint.json (0600) and record.json."""
    from expunge.imprints.fingerprint.implant import run_implant
    from expunge.registry import IMPLANTS

    _quiet_libraries()
    cls = IMPLANTS.get(scheme)
    if cls.model_fields["kind"].default != "fingerprint":
        raise ConfigError(f"{scheme!r} is not a fingerprint scheme; use 'expunge implant {scheme}'")
    cfg = _config(cls, config, {"model.name": model}, overrides)
    record = run_implant(cfg, out, overwrite=overwrite)
    _print_metrics(record.metrics, f"implant {scheme} → {out}")


@implant_app.command("backdoor")
def implant_backdoor(
    out: OutOpt,
    overrides: Overrides = None,
    model: Annotated[str | None, typer.Option(help="hub id, directory or embedded name")] = None,
    task: Annotated[
        str | None, typer.Option(help="sentiment, sentence_pair or a .jsonl of text/label")
    ] = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Backdoor a model by poisoned fine-tuning: writes model/, imprint.json (0600), record.json."""
    from expunge.imprints.backdoor.implant import BackdoorImplantConfig, run_backdoor_implant

    _quiet_libraries()
    cfg = _config(
        BackdoorImplantConfig, config, {"model.name": model, "task.name": task}, overrides
    )
    record = run_backdoor_implant(cfg, out, overwrite=overwrite)
    _print_metrics(record.metrics, f"implant backdoor → {out}")


@app.command()
def erase(
    method: Annotated[str, typer.Argument(help="eraser name (expunge ls erasers)")],
    out: OutOpt,
    overrides: Overrides = None,
    model: Annotated[str | None, typer.Option(help="the model to clean")] = None,
    imprint: Annotated[str | None, typer.Option(help="imprint.json, to audit each stage")] = None,
    adapter: Annotated[
        str | None, typer.Option(help="MEraser: a trained erase adapter to transfer")
    ] = None,
    reference: Annotated[
        str | None, typer.Option(help="backdoor erasers: the clean pre-trained checkpoint")
    ] = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Remove an imprint with an eraser; audits each stage when --imprint is given."""
    from expunge.erase.base import run_erase
    from expunge.registry import ERASERS

    _quiet_libraries()
    cls = ERASERS.get(method)
    flags = {"model.name": model, "imprint": imprint}
    if adapter is not None:
        flags["adapter"] = adapter
    if reference is not None:
        flags["reference"] = reference
    cfg = _config(cls, config, flags, overrides)
    record = run_erase(cfg, out, overwrite=overwrite)
    _print_metrics(record.metrics, f"erase {method} → {out}")


@app.command()
def demo(
    which: Annotated[
        str, typer.Argument(help="fingerprint (the lifecycle) or finetune")
    ] = "fingerprint",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="default: runs/demo-WHICH")
    ] = None,
    overrides: Overrides = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="smallest run that shows the effect")
    ] = False,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Run a demo on the embedded model: the fingerprint lifecycle, or plain fine-tuning."""
    _quiet_libraries()
    out = out or Path(f"runs/demo-{which}")
    if which == "fingerprint":
        from expunge.demo_fingerprint import FingerprintDemoConfig, run_fingerprint_demo
        from expunge.demo_fingerprint import quick as make_quick

        cfg = _config(FingerprintDemoConfig, config, {}, overrides)
        run_fingerprint_demo(make_quick(cfg) if quick else cfg, out, overwrite=overwrite)
    elif which == "finetune":
        from expunge.demo import DemoConfig, run_demo
        from expunge.demo import quick as make_quick_ft

        cfg_ft = _config(DemoConfig, config, {}, overrides)
        run_demo(make_quick_ft(cfg_ft) if quick else cfg_ft, out, overwrite=overwrite)
    else:
        from expunge.config import suggest

        raise ConfigError(
            f"unknown demo {which!r}{suggest(which, ['fingerprint', 'finetune'])}; use fingerprint or finetune"
        )


def _print_metrics(metrics: dict[str, Any], title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


def main() -> None:
    try:
        app()
    except ExpungeError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
