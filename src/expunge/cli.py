"""The ``expunge`` command line: one thin function per verb, each calling the library.

Every verb that runs a stage (``finetune``, ``audit``, ``implant``, ``erase``, ``stress``,
``detect``) builds the stage's typed config from ``--config``, its flags and ``key=value``
overrides, and hands it to ``expunge.stage.run_stage``; ``run`` and ``demo`` run a study YAML.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from expunge.errors import ConfigError, ExpungeError, ExpungeWarning

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Take an imprint out of a language model and prove it is gone.",
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)
_default_showwarning = warnings.showwarning

Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="key=value config overrides (every key: expunge config VERB [NAME])"),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="output run directory")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="replace an existing --out")]
ModelOpt = Annotated[str | None, typer.Option(help="hub id, directory or embedded name")]
ImprintOpt = Annotated[str | None, typer.Option(help="imprint.json (or its run directory)")]


def keys_epilog(command: str, names: str = "") -> str:
    """The --help footer of a stage verb: where its config keys are listed."""
    return (f"Config keys (types, defaults, help): expunge config {command}"
            + (f" ({names})" if names else "")
            + "; set them as key=value overrides or in --config FILE.yaml.")  # fmt: skip


DEMO_DIR = Path(__file__).resolve().parents[2] / "configs" / "demos"


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # datasets' "Generating train split" bars on loading a local copy are not ours to show
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "datasets" in sys.modules:  # imported already: the variable is read at import
        sys.modules["datasets"].disable_progress_bars()
    import warnings

    import transformers

    # Deprecation notices from inside transformers/peft are not actionable for our users.
    warnings.filterwarnings("ignore", category=FutureWarning)

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def flag_overrides(base: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Put CLI flag values (taken verbatim, not YAML-parsed) into a nested config dict."""
    data = dict(base)
    for dotted, value in flags.items():
        if value is None:
            continue
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return data


def _config(cls, config: Path | None, flags: dict[str, Any], overrides: list[str] | None):
    from expunge.config import build_config, load_yaml

    base = load_yaml(config) if config else {}
    return build_config(
        cls, flag_overrides(base, flags), overrides or [], source=str(config or "cli")
    )


def _stage(cls, config: Path | None, flags: dict[str, Any], overrides: list[str] | None,
           out: Path, overwrite: bool, resume: bool = False) -> None:  # fmt: skip
    """Build a stage's config, run it through the shared opening, print its metrics."""
    cfg = _config(cls, config, flags, overrides)
    from expunge.stage import run_stage

    def before_load() -> None:  # inputs checked: bad input stays one line
        _note_embedded_defaults(cfg)
        _quiet_libraries()

    with interruptible():
        record = run_stage(cfg, out, overwrite=overwrite, resume=resume,
                           before_load=before_load)  # fmt: skip
    shown = {k: v for k, v in record.metrics.items() if not k.endswith(("/ci_low", "/ci_high"))}
    _print_metrics(shown, f"{record.command} → {out}")


def _note_embedded_defaults(cfg: Any) -> None:
    """Say up front when a model the stage loads is the embedded default nobody named."""
    from expunge.models.embedded import EMBEDDED_MODELS, default_note

    for role, settings in cfg.models_to_load().items():
        if "name" not in settings.model_fields_set and settings.name in EMBEDDED_MODELS:
            err_console.print(default_note(settings.name, role), highlight=False, markup=False,
                              soft_wrap=True)  # fmt: skip


CONFIG_CLASSES = {
    "finetune": "expunge.finetune:FinetuneConfig",
    "audit": "expunge.audit.runner:AuditConfig",
    "detect": "expunge.detect.base:DetectConfig",
    "scan": "expunge.scan.base:ScanConfig",
    "bench": "expunge.pipeline.bench:BenchConfig",
    "run": "expunge.pipeline.spec:PipelineConfig",
}
# implants, erasers and stressors validate by their registry name: 'command: implant' +
# 'scheme: NAME', 'command: erase' + 'method: NAME', 'command: stress' + 'stressor: NAME'.
BY_REGISTRY = {"implant": ("IMPLANTS", "scheme"), "erase": ("ERASERS", "method"),
               "stress": ("STRESSORS", "stressor")}  # fmt: skip


def config_class(command: str, name: str | None = None):
    """The config class of ``command`` (and, for implant/erase/stress, of ``name``)."""
    from expunge import registry
    from expunge.config import suggest

    if command in BY_REGISTRY:
        holder, key = BY_REGISTRY[command]
        if name is None:
            raise ConfigError(f"'{command}' needs a {key} name (expunge ls)")
        return getattr(registry, holder).get(name)
    if command not in CONFIG_CLASSES:
        known = [*CONFIG_CLASSES, *BY_REGISTRY]
        raise ConfigError(f"unknown command {command!r}{suggest(command, known)}; known: "
                          f"{', '.join(known)}")  # fmt: skip
    module, _, attr = CONFIG_CLASSES[command].partition(":")
    import importlib

    return getattr(importlib.import_module(module), attr)


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
    from expunge.config_docs import describe

    cls = config_class(command, name)
    defaults = None
    if preset is not None:
        defaults = cls.model_validate({"preset": preset}).model_dump(mode="json")
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
    _stage(FinetuneConfig, config, flags, overrides, out, overwrite, resume)


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

    metric_list = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    flags = {"model.name": model, "data.path": data, "imprint": imprint, "metrics": metric_list}
    _stage(AuditConfig, config, flags, overrides, out, overwrite)


implant_app = typer.Typer(
    help="Build test subjects: put an imprint into a model.", no_args_is_help=True
)
app.add_typer(implant_app, name="implant")


def _implant(scheme: str, kind: str, config: Path | None, flags: dict[str, Any],
             overrides: list[str] | None, out: Path, overwrite: bool) -> None:  # fmt: skip
    from expunge.registry import IMPLANTS

    cls = IMPLANTS.get(scheme)
    made = cls.model_fields["kind"].default
    if made != kind:
        raise ConfigError(f"{scheme!r} makes a {made} imprint; use 'expunge implant {made}'")
    _stage(cls, config, {"model.name": flags.pop("model"), **flags}, overrides, out, overwrite)


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
    _implant(scheme, "fingerprint", config, {"model": model}, overrides, out, overwrite)


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
    _implant(scheme, "backdoor", config, {"model": model, "task.name": task}, overrides, out,
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
    _implant("secrets", "secrets", config, {"model": model, "records": records}, overrides, out,
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
    _implant(scheme, "knowledge", config, {"model": model}, overrides, out, overwrite)


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

    _quiet_libraries()
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
    _stage(ERASERS.get(method), config, flags, overrides, out, overwrite)


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
    _stage(STRESSORS.get(stressor), config, flags, overrides, out, overwrite)


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
    _stage(DetectConfig, config, flags, overrides, out, overwrite)


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
    _stage(ScanConfig, config, flags, overrides, out, overwrite)


def pipeline_uses_default_model(pipeline: Any) -> bool:
    """True when a study of ``pipeline`` falls back on a ``model:`` nobody wrote."""
    return "model" not in pipeline.model_fields_set and any(
        study.model is None for study in pipeline.studies()
    )


def _run_study(path: Path, overrides: list[str] | None, out: Path | None, overwrite: bool,
               dry_run: bool, quick: bool) -> None:  # fmt: skip
    from expunge.pipeline import load_pipeline, run_pipeline

    pipeline, locate = load_pipeline(path, overrides or [], quick=quick)
    if pipeline_uses_default_model(pipeline):
        from expunge.models.embedded import default_note

        err_console.print(default_note(pipeline.model.name), highlight=False, markup=False,
                          soft_wrap=True)  # fmt: skip
    _quiet_libraries()
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
    _run_study(config, overrides, out, overwrite, dry_run, quick)


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
    _run_study(DEMO_DIR / f"{which}.yaml", overrides, out, overwrite, dry_run, quick)


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

    _quiet_libraries()
    flags: dict[str, Any] = {"model.name": model}
    if imprints is not None:
        flags["imprints"] = [s.strip() for s in imprints.split(",") if s.strip()]
    if erasers is not None:
        flags["erasers"] = [s.strip() for s in erasers.split(",") if s.strip()]
    if quick:
        flags["quick"] = True
    cfg = _config(BenchConfig, config, flags, overrides)
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


def _print_metrics(metrics: dict[str, Any], title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


def _one_line(text: object) -> str:
    """A message as one line: a multi-line message (pydantic's list of problems) is joined."""
    out = ""
    for part in (p.strip() for p in str(text).splitlines()):
        if part:
            out += part if not out else (" " if out.endswith(":") else "; ") + part
    return out


@contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C during a run: print what was kept and how to go on (``RunInterrupted``'s
    message), exit 130. Typer would turn the interrupt into a silent exit 130 itself."""
    try:
        yield
    except KeyboardInterrupt as err:
        err_console.print(f"[bold red]{escape(_one_line(err or 'interrupted'))}[/]",
                          highlight=False, soft_wrap=True)  # fmt: skip
        raise typer.Exit(130) from None


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """expunge's own warnings as one ``warning:`` line; others the usual way."""
    if issubclass(category, ExpungeWarning):
        err_console.print(f"[yellow]warning:[/] {escape(_one_line(message))}", highlight=False,
                          soft_wrap=True)  # fmt: skip
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def main() -> None:
    warnings.showwarning = _show_warning
    try:
        app()
    except ExpungeError as err:
        # soft_wrap: one line however long (rich would wrap at the terminal's width)
        err_console.print(f"[bold red]error:[/] {escape(_one_line(err))}", highlight=False,
                          soft_wrap=True)  # fmt: skip
        sys.exit(2)
    except KeyboardInterrupt as err:
        err_console.print(f"[bold red]{escape(_one_line(err or 'interrupted'))}[/]",
                          highlight=False, soft_wrap=True)  # fmt: skip
        sys.exit(130)


if __name__ == "__main__":
    main()
