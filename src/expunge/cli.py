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
    "demo_secrets": "expunge.demo_secrets:SecretsDemoConfig",
    "demo_backdoor": "expunge.demo_backdoor:BackdoorDemoConfig",
    "detect": "expunge.detect.base:DetectConfig",
    "demo_unlearning": "expunge.demo_unlearning:UnlearningDemoConfig",
    "bench": "expunge.bench:BenchConfig",
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
            f"{config}: no 'command:' key (one of {', '.join([*CONFIG_CLASSES, 'implant', 'erase', 'run'])})"
        )
    if command == "run":
        from expunge.pipeline import load_pipeline, plan_pipeline

        pipeline, locate = load_pipeline(config)
        plan = plan_pipeline(pipeline, pipeline.out or "runs/validate", locate)
        console.print(f"[green]ok[/]: {config} is a valid pipeline ({len(plan.stages)} stages)")
        return
    if command == "implant":
        from expunge.registry import IMPLANTS

        cls = IMPLANTS.get(str(data.get("scheme")))
    elif command == "erase":
        from expunge.registry import ERASERS

        cls = ERASERS.get(str(data.get("method")))
    elif command == "stress":
        from expunge.registry import STRESSORS

        cls = STRESSORS.get(str(data.get("stressor")))
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
    from expunge.registry import IMPLANTS

    cls = IMPLANTS.get(scheme)
    if cls.model_fields["kind"].default != "fingerprint":
        raise ConfigError(f"{scheme!r} is not a fingerprint scheme; use 'expunge implant {scheme}'")
    _implant(scheme, config, {"model.name": model}, overrides, out, overwrite)


def _implant(
    scheme: str, config: Path | None, flags: dict[str, Any], overrides: list[str] | None,
    out: Path, overwrite: bool,
) -> None:  # fmt: skip
    from expunge.registry import IMPLANTS

    _quiet_libraries()
    cfg = _config(IMPLANTS.get(scheme), config, flags, overrides)
    record = cfg.run(out, overwrite=overwrite)
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
    _implant("backdoor", config, {"model.name": model, "task.name": task}, overrides, out,
             overwrite)  # fmt: skip


@implant_app.command("secrets")
def implant_secrets(
    out: OutOpt,
    overrides: Overrides = None,
    model: Annotated[str | None, typer.Option(help="hub id, directory or embedded name")] = None,
    records: Annotated[
        str | None, typer.Option(help="JSONL of {text, spans} (default: the synthetic clinic)")
    ] = None,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Fine-tune on notes until their identifiers are memorized: model/, imprint.json (0600)."""
    _implant("secrets", config, {"model.name": model, "records": records}, overrides, out,
             overwrite)  # fmt: skip


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


# name → (module, config class, runner); each module also has quick(config).
DEMOS = {
    "fingerprint": ("expunge.demo_fingerprint", "FingerprintDemoConfig", "run_fingerprint_demo"),
    "backdoor": ("expunge.demo_backdoor", "BackdoorDemoConfig", "run_backdoor_demo"),
    "secrets": ("expunge.demo_secrets", "SecretsDemoConfig", "run_secrets_demo"),
    "unlearning": ("expunge.demo_unlearning", "UnlearningDemoConfig", "run_unlearning_demo"),
    "finetune": ("expunge.demo", "DemoConfig", "run_demo"),
}


@app.command()
def demo(
    which: Annotated[
        str, typer.Argument(help="fingerprint, backdoor, secrets, unlearning or finetune")
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
    """Run a demo on the embedded model (each ends in a table and report.md)."""
    import importlib

    from expunge.config import suggest

    if which not in DEMOS:
        raise ConfigError(
            f"unknown demo {which!r}{suggest(which, list(DEMOS))}; use {', '.join(DEMOS)}"
        )
    _quiet_libraries()
    module_name, config_name, runner_name = DEMOS[which]
    module = importlib.import_module(module_name)
    cfg = _config(getattr(module, config_name), config, {}, overrides)
    getattr(module, runner_name)(
        module.quick(cfg) if quick else cfg, out or Path(f"runs/demo-{which}"), overwrite=overwrite
    )


@app.command("run")
def run(
    config: Annotated[Path, typer.Argument(help="pipeline YAML (see configs/)")],
    overrides: Overrides = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="run directory (default: the YAML's out:)")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the plan: stages, cached or to run")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="discard the run directory; run every stage")
    ] = False,
    quick: Annotated[
        bool, typer.Option("--quick", help="apply the YAML's 'quick:' overrides (smaller run)")
    ] = False,
) -> None:
    """Run a whole study from one YAML; finished stages are reused, an interrupted run resumes."""
    from expunge.pipeline import load_pipeline, run_pipeline

    _quiet_libraries()
    pipeline, locate = load_pipeline(config, overrides or [], quick=quick)
    run_pipeline(pipeline, out, overwrite=overwrite, dry_run=dry_run, locate=locate,
                 source=str(config))  # fmt: skip


@app.command()
def bench(
    overrides: Overrides = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="bench directory")] = Path("runs/bench"),
    imprints: Annotated[
        str | None, typer.Option(help="comma-separated imprint types (default: all)")
    ] = None,
    erasers: Annotated[
        str | None, typer.Option(help="comma-separated eraser names or methods (default: all)")
    ] = None,
    model: Annotated[str | None, typer.Option(help="default: the embedded model")] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="smaller implants, fewer relearning steps")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print each pipeline's plan")] = False,
    config: ConfigOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """The method matrix: each imprint type × each applicable eraser, one leaderboard."""
    from expunge.bench import BenchConfig, run_bench

    _quiet_libraries()
    flags: dict[str, Any] = {"model.name": model}
    if imprints is not None:
        flags["imprints"] = [s.strip() for s in imprints.split(",") if s.strip()]
    if erasers is not None:
        flags["erasers"] = [s.strip() for s in erasers.split(",") if s.strip()]
    if quick:
        flags["quick"] = True
    cfg = _config(BenchConfig, config, flags, overrides)
    run_bench(cfg, out, overwrite=overwrite, dry_run=dry_run)
    if not dry_run:
        console.print((out / "leaderboard.md").read_text(), markup=False, highlight=False)


@app.command()
def report(
    run_dirs: Annotated[
        list[Path], typer.Argument(help="run directories (pipelines or single runs)")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="the HTML file (a .md twin is written beside it)")
    ] = Path("report.html"),
    show_secrets: Annotated[
        bool,
        typer.Option("--show-secrets", help="do not redact imprint secrets (keys, triggers, PII)"),
    ] = False,
    screenshot: Annotated[
        Path | None, typer.Option(help="also render the HTML in headless chromium to this PNG")
    ] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Render run records into report.html and report.md (tables and plots, nothing recomputed)."""
    from expunge.report import write_report

    html_path, md_path = write_report(run_dirs, out, redact=not show_secrets, overwrite=overwrite)
    console.print(f"wrote {html_path} and {md_path}")
    if screenshot is not None:
        from expunge.report.browser import render_in_browser

        result = render_in_browser(html_path, screenshot)
        if result.errors:
            raise ExpungeError(f"{html_path}: browser reported errors: {result.errors}")
        console.print(
            f"screenshot {screenshot} ({result.width}x{result.height}, no console errors)"
        )


@app.command()
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
    from expunge.stress.base import run_stress

    _quiet_libraries()
    cls = STRESSORS.get(stressor)
    cfg = _config(cls, config, {"model.name": model, "imprint": imprint}, overrides)
    record = run_stress(cfg, out, overwrite=overwrite)
    _print_metrics(record.metrics, f"stress {stressor} → {out}")


@app.command()
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
    from expunge.detect.base import DetectConfig, run_detect

    _quiet_libraries()
    flags = {"original.name": original, "erased.name": erased, "imprint": imprint}
    cfg = _config(DetectConfig, config, flags, overrides)
    record = run_detect(cfg, out, overwrite=overwrite)
    _print_metrics(
        {k: v for k, v in record.metrics.items() if k.endswith("/accuracy")}, f"detect → {out}"
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
