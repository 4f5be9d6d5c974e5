"""The verbs that list, check and run studies: ls, config, validate, run, demo, bench, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from expunge.cli.common import (
    BY_REGISTRY,
    CONFIG_CLASSES,
    DEMO_DIR,
    ConfigOpt,
    Overrides,
    OverwriteOpt,
    app,
    cli_config,
    config_class,
    console,
    err_console,
    interruptible,
    keys_epilog,
    name_list,
    quiet_libraries,
)
from expunge.errors import ConfigError, ExpungeError, OutputError, OutputExistsError


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


@app.command("config")
def config_keys(
    command: Annotated[str, typer.Argument(help="finetune, audit, implant, erase, stress, ...")],
    name: Annotated[str | None, typer.Argument(help="the scheme, method or stressor")] = None,
    preset: Annotated[str | None, typer.Option(help="show this preset's defaults")] = None,
) -> None:
    """List a command's config keys with their types, defaults and help."""
    from expunge.config import PresetConfig, build_config
    from expunge.config_docs import describe

    cls = config_class(command, name)
    defaults = None
    if preset is not None:
        # Only a PresetConfig's defaults change with its preset; validating {"preset": ...}
        # against another class is a pydantic error, not an answer (a study's or a bench's
        # preset: key is passed on to its stages, whose presets are listed by their own verb).
        if not (isinstance(cls, type) and issubclass(cls, PresetConfig)):
            passed = " (its preset: key is passed on to every stage)" if (
                "preset" in cls.model_fields) else ""  # fmt: skip
            raise ConfigError(f"'{command}' has no presets{passed}; presets belong to implant, "
                              "erase and stress: expunge config erase METHOD --preset NAME")  # fmt: skip
        defaults = build_config(cls, {"preset": preset},
                                source=f"--preset {preset}").model_dump(mode="json")  # fmt: skip
    table = Table(
        title=f"{command} {name or ''}".strip() + (f" (preset {preset})" if preset else "")
    )
    for column in ("key", "type", "default", "help"):
        table.add_column(column, overflow="fold")
    for key, kind, default, help_text in describe(cls, defaults=defaults):
        table.add_row(key, kind, default, help_text)
    console.print(table)


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="YAML config to check")]) -> None:
    """Check a YAML config against its schema (the 'command:' key says which)."""
    from expunge.config import build_config, load_yaml

    data = load_yaml(config)
    command = data.get("command")
    if command is None:
        raise ConfigError(f"{config}: no 'command:' key (one of "
                          f"{', '.join([*CONFIG_CLASSES, *BY_REGISTRY])})")  # fmt: skip
    if command == "run":
        from expunge.pipeline import load_pipeline, plan_pipeline

        pipeline, locate = load_pipeline(config)
        plan = plan_pipeline(pipeline, pipeline.out or "runs/validate", locate)
        models = sorted({str(getattr(getattr(s.config, "model", None), "name", "")) for s in
                         plan.stages if s.kind in {"implant", "finetune"}} - {""})  # fmt: skip
        default = " (the embedded default: the file names no model:)" if (
            pipeline_uses_default_model(pipeline)) else ""  # fmt: skip
        console.print(f"[green]ok[/]: {config} is a valid pipeline ({len(plan.stages)} stages; "
                      f"model {', '.join(models) or pipeline.model.name}{default})",
                      soft_wrap=True)  # fmt: skip
        return
    key = BY_REGISTRY.get(str(command), (None, None))[1]
    cls = config_class(str(command), str(data.get(key)) if key else None)
    cfg = build_config(cls, data, source=str(config))
    models = []
    for role, settings in cfg.models_to_load().items():
        unset = "name" not in settings.model_fields_set
        models.append(f"{role} {settings.name or '(not set)'}"
                      + (" — the embedded default: the file names none" if unset else ""))  # fmt: skip
    console.print(f"[green]ok[/]: {config} is a valid {command} config"
                  + (f" ({'; '.join(models)})" if models else ""), soft_wrap=True)  # fmt: skip


def pipeline_uses_default_model(pipeline: Any) -> bool:
    """True when a study of ``pipeline`` falls back on a ``model:`` nobody wrote."""
    return "model" not in pipeline.model_fields_set and any(
        study.model is None for study in pipeline.studies()
    )


def run_study(path: Path, overrides: list[str] | None, out: Path | None, overwrite: bool,
               dry_run: bool, quick: bool) -> None:  # fmt: skip
    from expunge.pipeline import load_pipeline, run_pipeline

    pipeline, locate = load_pipeline(path, overrides or [], quick=quick)
    if pipeline_uses_default_model(pipeline):
        from expunge.models.embedded import default_note

        err_console.print(default_note(pipeline.model.name), highlight=False, markup=False,
                          soft_wrap=True)  # fmt: skip
    quiet_libraries()
    with interruptible():
        run_pipeline(pipeline, out, overwrite=overwrite, dry_run=dry_run, locate=locate,
                     source=str(path))  # fmt: skip


@app.command("run", epilog=keys_epilog("run"))
def run(
    config: Annotated[Path, typer.Argument(help="study YAML (see configs/)")],
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
    run_study(config, overrides, out, overwrite, dry_run, quick)


def demo_names() -> list[str]:
    return sorted(p.stem for p in DEMO_DIR.glob("*.yaml"))


@app.command()
def demo(
    which: Annotated[str, typer.Argument(help="a demo in configs/demos/")] = "fingerprint",
    overrides: Overrides = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="default: the demo's out: (runs/...)")
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="smallest run that shows the effect")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan only")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Run a demo on the embedded model: ``expunge run configs/demos/NAME.yaml`` (cached)."""
    from expunge.config import suggest

    names = demo_names()
    if which not in names:
        raise ConfigError(f"unknown demo {which!r}{suggest(which, names)}; use "
                          f"{', '.join(names) or f'(none found in {DEMO_DIR})'}")  # fmt: skip
    run_study(DEMO_DIR / f"{which}.yaml", overrides, out, overwrite, dry_run, quick)


@app.command(epilog=keys_epilog("bench"))
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
    from expunge.pipeline.bench import BenchConfig, run_bench

    flags: dict[str, Any] = {"model.name": model}
    for option, given in (("imprints", imprints), ("erasers", erasers)):
        if given is not None:  # given but empty ("", ","): an error, not the default "all"
            flags[option] = name_list(given, f"--{option}", "leave the option out for all")
    if quick:
        flags["quick"] = True
    cfg = cli_config(BenchConfig, config, flags, overrides)
    quiet_libraries()  # after the config: a bad option does not wait for transformers
    with interruptible():
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

    if screenshot is not None:  # checked before the report is written: bad input writes nothing
        check_screenshot(screenshot, overwrite)
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


def check_screenshot(path: Path, overwrite: bool) -> None:
    """Refuse a ``--screenshot`` path that exists (unless ``overwrite``) or cannot be written,
    and a missing browser, before the report is written (not after, with the HTML on disk)."""
    from expunge.records import check_writable
    from expunge.report.browser import find_browser

    if path.is_dir():
        raise OutputError(f"--screenshot {path} is a directory; name a .png file")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it")
    check_writable(path.parent, path)
    if find_browser() is None:
        raise ExpungeError("--screenshot needs chromium or chrome on the PATH (Debian: apt-get "
                           "install chromium)")  # fmt: skip
