"""What every verb of the command line shares: the app, its consoles and option types, building
a stage's config from --config, flags and key=value overrides, and one-line messages."""

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

from expunge.errors import ConfigError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Take an imprint out of a language model and prove it is gone.",
    pretty_exceptions_enable=False,
)


console = Console()


err_console = Console(stderr=True)


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


DEMO_DIR = Path(__file__).resolve().parents[3] / "configs" / "demos"


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # datasets' "Generating train split" bars on loading a local copy are not ours to show
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "datasets" in sys.modules:  # imported already: the variable is read at import
        sys.modules["datasets"].disable_progress_bars()

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


def cli_config(cls, config: Path | None, flags: dict[str, Any], overrides: list[str] | None):
    from expunge.config import Locator, build_config, load_yaml, parse_overrides
    from expunge.files import read_text

    base = load_yaml(config) if config else {}
    shadowed = {key for key, value in flags.items() if value is not None}
    shadowed |= {key.strip() for key, _ in parse_overrides(overrides or [])}
    locate = Locator(str(config), read_text(config, "config file"), shadowed) if config else None
    return build_config(cls, flag_overrides(base, flags), overrides or [],
                        source=str(config or "cli"), locate=locate)  # fmt: skip


def stage_verb(cls, config: Path | None, flags: dict[str, Any], overrides: list[str] | None,
           out: Path, overwrite: bool, resume: bool = False) -> None:  # fmt: skip
    """Build a stage's config, run it through the shared opening, print its metrics."""
    cfg = cli_config(cls, config, flags, overrides)
    from expunge.stage import run_stage

    def before_load() -> None:  # inputs checked: bad input stays one line
        note_embedded_defaults(cfg)
        for line in cfg.notes():
            err_console.print(f"note: {line}", highlight=False, markup=False, soft_wrap=True)
        quiet_libraries()

    with interruptible():
        record = run_stage(cfg, out, overwrite=overwrite, resume=resume,
                           before_load=before_load)  # fmt: skip
    shown = {k: v for k, v in record.metrics.items() if not k.endswith(("/ci_low", "/ci_high"))}
    print_metrics(shown, f"{record.command} → {out}")


def note_embedded_defaults(cfg: Any) -> None:
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


def print_metrics(metrics: dict[str, Any], title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


def name_list(text: str, option: str, default: str) -> list[str]:
    """The comma-separated names of ``option``; given but naming none (``""``, ``,``) is an
    error rather than the default (``default`` says how to get that)."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise ConfigError(f"{option} {text!r} names nothing: name at least one, or {default}")
    return names


def one_line(text: object) -> str:
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
        err_console.print(f"[bold red]{escape(one_line(err or 'interrupted'))}[/]",
                          highlight=False, soft_wrap=True)  # fmt: skip
        raise typer.Exit(130) from None
