"""The stage contract: implant, audit, erase, stress, detect and fine-tune are all stages.

Every stage is a typed config (a ``StageConfig`` subclass, registered by name) whose own work is
one method with one signature::

    def execute(self, ctx: StageContext) -> None

``run_stage(config, out)`` is the opening they share, written here once:

1. refuse an output that exists (unless ``overwrite`` or ``resume``) or cannot be written, a
   ``resume`` whose training-relevant settings differ from the interrupted run's, and any input the
   config names that is wrong (``validate_inputs``) — before anything is written or loaded;
2. take the output's lock (a second writer gets one line, not a half-deleted directory) and
   check the output again under it;
3. load the imprint and the models (``models_to_load``) on the one chosen device;
4. open the run record (resolved config with secrets redacted, versions, git, device, dtype,
   world size, inputs) in a staging directory that only a successful run moves into place.

Kind bases (``ImplantConfig``, ``EraserConfig``, ``StressConfig`` ...) put what every stage of
their kind does around ``execute`` in ``begin``/``finish`` (an eraser audits its input first and
saves the model last). An input error raised before the stage writes anything leaves nothing on
disk.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from expunge.config import StrictModel
from expunge.errors import ConfigError
from expunge.files import read_text
from expunge.imprints.base import Imprint, load_imprint
from expunge.models.card import CardInfo, model_provenance
from expunge.models.device import dtype_name, resolve_precision
from expunge.models.loading import (
    LoadedModel,
    ModelSettings,
    is_builtin_model,
    load_model_for,
    save_model,
)
from expunge.records import (
    RunRecord,
    check_output_dir,
    checkpoint_steps,
    output_lock,
    recorded_run,
    redact_fields,
    secret_values,
)


class StageConfig(StrictModel):
    """Base of every stage's config. Subclasses set ``KIND`` and implement ``execute``."""

    KIND: ClassVar[str] = ""
    # dotted config paths whose values are secrets: redacted in the record and its argv copy
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ()
    # config paths that may differ between an interrupted run and its --resume
    # only a stage whose training takes its checkpoints back (finetune) continues with --resume
    RESUMES: ClassVar[bool] = False
    RESUMABLE_CHANGES: ClassVar[tuple[str, ...]] = ("train.progress", "train.save_every",
                                                    "train.keep_checkpoints", "progress")  # fmt: skip

    def title(self) -> str:
        """The record's command, e.g. ``erase meraser``."""
        return self.KIND

    def validate_inputs(self) -> None:
        """Check every input (files, settings) before anything is loaded or written."""

    def notes(self) -> list[str]:
        """What the run chose that nobody named, said up front (a stage command and a study print
        each line; a study keeps them in its ``pipeline.json``)."""
        return []

    def input_digests(self) -> dict[str, str]:
        """SHA-256 of the local files this stage trains on, by config path: ``--resume``
        refuses a run whose files changed under the same names. Default: none."""
        return {}

    def imprint_source(self) -> str | None:
        """The imprint file this stage reads (audits, erasers, stressors), if any."""
        return getattr(self, "imprint", None)

    def input_paths(self) -> dict[str, str]:
        """The local files and directories this stage reads, by the config key naming each;
        ``run_stage`` refuses an ``--out`` that is or holds one (the commit would delete it).

        Every path-like string of the config (a file name, or a name with a folder) that names
        an existing path counts, so a new path option is covered without being listed here,
        and every model the stage loads; not the values of ``NAME_KEYS`` (a run named
        after its method, ``--out meraser``, does not read itself) nor the embedded and tiny
        model names, which load from their cache whatever the working directory holds."""
        found: dict[str, str] = {}

        def secret(key: str) -> bool:  # a refusal names the value: never a secret's
            return any(key == p or key.startswith((p + ".", p + "[")) for p in self.SECRET_FIELDS)

        def visit(node: Any, key: str) -> None:
            if isinstance(node, dict):
                for name, value in node.items():
                    visit(value, f"{key}.{name}" if key else str(name))
            elif isinstance(node, list):
                for i, value in enumerate(node):
                    visit(value, f"{key}[{i}]")
            elif (isinstance(node, str) and _looks_like_path(node) and not is_builtin_model(node)
                  and _leaf(key) not in NAME_KEYS and not secret(key)
                  and _exists(node)):  # fmt: skip
                found.setdefault(key, node)

        visit(self.model_dump(mode="json"), "")
        # what the stage reads that its config may not hold as such (an implant's imprint, a
        # teacher model built from another key), each once
        extra = [("imprint", self.imprint_source())]
        for role, settings in self.models_to_load().items():
            extra += [(role, settings.name), (f"{role}.adapter", settings.adapter)]
        for key, value in extra:
            if (value and value not in found.values() and not is_builtin_model(value)
                    and _exists(value)):  # fmt: skip
                found.setdefault(key, value)
        return found

    def models_to_load(self) -> dict[str, ModelSettings]:
        """The models ``run_stage`` loads into ``ctx.models`` (``model`` is ``ctx.model``)."""
        settings = getattr(self, "model", None)
        return {"model": settings} if isinstance(settings, ModelSettings) else {}

    def recorded_config(self) -> dict[str, Any]:
        """The resolved config as the record keeps it: secret fields redacted."""
        return redact_fields(self.model_dump(mode="json"), self.SECRET_FIELDS)

    def begin(self, ctx: StageContext) -> None:
        """What every stage of this kind does before ``execute``."""

    def execute(self, ctx: StageContext) -> None:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} does not define execute()")

    def finish(self, ctx: StageContext) -> None:
        """What every stage of this kind does after ``execute``."""


@dataclass
class StageContext:
    """What a stage's ``execute`` works with. ``work`` is created on first use."""

    config: StageConfig
    record: RunRecord
    models: dict[str, LoadedModel]
    imprint: Imprint | None
    work_dir: Callable[[], Path]
    resume: bool = False
    is_main: bool = True
    state: dict[str, Any] = field(default_factory=dict)  # kind bases keep their helpers here

    @property
    def work(self) -> Path:
        return self.work_dir()

    @property
    def model(self) -> LoadedModel:
        if "model" not in self.models:
            raise TypeError(f"{type(self.config).__name__} loads no 'model'")
        return self.models["model"]

    @model.setter
    def model(self, loaded: LoadedModel) -> None:
        self.models["model"] = loaded

    def save_model(
        self, loaded: LoadedModel | None = None, name: str = "model", imprint: Any = None
    ) -> None:
        """Write ``loaded`` (default: ``ctx.model``) as a Hugging Face directory ``work/name``,
        with a model card: what this stage did to which imprint (``imprint``, default the
        stage's own: its summary only) and the record's summary, secrets blanked."""
        loaded = loaded or self.model
        save_model(loaded.model, loaded.tokenizer, self.work / name, card=self.card(imprint))
        self.record.artifacts[name] = name

    def card(self, imprint: Any = None) -> CardInfo:
        """What a model card of this stage says (``expunge.models.card``)."""
        record = self.record.model_dump(mode="json", exclude={"status", "wall_time_s"})
        return CardInfo(
            command=self.record.command, method=getattr(self.config, "method", None) or None,
            imprint=imprint if imprint is not None else self.imprint, record=record,
            secrets=secret_values(self.config.model_dump(mode="json"), self.config.SECRET_FIELDS),
        )  # fmt: skip


# Config keys whose values are registry names or fixed words, never files (a list's key is
# ``metrics[0]``, so the name before the index is what is looked up).
NAME_KEYS = frozenset({
    "command", "kind", "method", "scheme", "stressor", "preset", "objective", "benchmark",
    "template", "matcher", "mode", "loss_on", "device", "dtype", "precision", "split", "head",
    "metrics", "verify_metrics", "detectors", "scorers", "types",
})  # fmt: skip


def _leaf(key: str) -> str:
    """The last name of a dotted config key, without a list index: ``a.metrics[0]`` → metrics."""
    return key.rsplit(".", 1)[-1].split("[", 1)[0]


def _looks_like_path(value: str) -> bool:
    """A file name (``train.jsonl``) or a path with a folder, not a bare word: a generator or
    option name (``sentiment``, ``cosine``) may also name a folder of the working directory.
    The models a stage loads are counted whatever their form."""
    return "/" in value or value.startswith((".", "~")) or bool(Path(value).suffix)


def _exists(value: str) -> bool:
    """Does ``value`` name an existing local path? (Free text such as a prompt is not one.)"""
    try:
        return Path(value).expanduser().exists()
    except (OSError, ValueError):  # too long a name, a NUL byte
        return False


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def check_resume(config: StageConfig, staging: Path) -> None:
    """Refuse to resume an interrupted run whose settings differ; name the fields."""
    path = staging / "record.json"
    if not config.RESUMES:
        raise ConfigError(f"{config.title()} cannot resume a run: run it again to start over")
    if not path.is_file():
        kept = checkpoint_steps(staging) if staging.is_dir() else []
        if kept:  # killed too hard to write its record: its settings cannot be compared
            raise ConfigError(
                f"{staging} holds checkpoints (step {kept[-1]}) but no record: the run was "
                "killed before it could write one, so its settings cannot be checked against "
                "these; pass --overwrite to start over"
            )
        raise ConfigError(f"nothing to resume: {staging} holds no record of an interrupted run")
    record = json.loads(read_text(path, "record"))
    before = _flatten(record.get("config", {}))
    now = _flatten(config.recorded_config())
    changed = sorted(
        key for key in before.keys() | now.keys()
        if before.get(key) != now.get(key) and not key.startswith(config.RESUMABLE_CHANGES)
    )  # fmt: skip
    digests = (record.get("inputs") or {}).get("input_digests") or {}
    changed += sorted(f"{key} (same name, other content)"
                      for key, digest in config.input_digests().items()
                      if key not in changed and digests.get(key) not in (None, digest))  # fmt: skip
    if changed:
        raise ConfigError(
            f"--resume with settings that differ from the interrupted run's: {', '.join(changed)}; "
            "resume with the same settings, or start over with --overwrite"
        )


def resolved_precisions(config: StrictModel, device: Any) -> dict[str, str]:
    """What every ``precision: auto`` of the config (its own, its train settings') resolves to
    on ``device``: the record says whether a run computed in bf16 or fp32."""
    out: dict[str, str] = {}
    own = getattr(config, "precision", None)
    if isinstance(own, str):
        out["self"] = resolve_precision(own, device)
    audits = getattr(config, "audit_precision", None)
    if isinstance(audits, str):
        out["audits"] = resolve_precision(audits, device)
    for name in type(config).model_fields:
        value = getattr(config, name, None)
        inner = getattr(value, "precision", None)
        if isinstance(value, StrictModel) and isinstance(inner, str):
            out[name] = resolve_precision(inner, device)
    return out


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def run_stage(
    config: StageConfig,
    out: str | Path,
    overwrite: bool = False,
    resume: bool = False,
    models: dict[str, LoadedModel] | None = None,
    before_load: Callable[[], None] | None = None,
) -> RunRecord:
    """Run one stage into ``out`` through the shared opening; returns its record.

    ``before_load`` runs once the output and inputs are checked, before anything heavy is
    imported or loaded (the CLI quiets the libraries' logging there: importing transformers
    to do so first made every bad argument wait for it)."""
    is_main = _is_main_process()
    staging = Path(out).resolve().parent / f".{Path(out).resolve().name}.partial"
    # Bad input is refused before the lock is taken: it leaves nothing, not even a lock file.
    # The inputs go along: an --out that is or holds one would be deleted by the commit.
    check_output_dir(out, overwrite, resume, inputs=config.input_paths(),
                     resumable=config.RESUMES)  # fmt: skip
    if resume:
        check_resume(config, staging)
    config.validate_inputs()
    if before_load is not None:
        before_load()
    lock = output_lock(out) if is_main else contextlib.nullcontext()
    with lock:
        # again: another command may have finished
        check_output_dir(out, overwrite, resume, resumable=config.RESUMES)
        source = config.imprint_source()
        imprint = load_imprint(source) if source else None
        loaded = dict(models or {})
        for name, settings in config.models_to_load().items():
            if name not in loaded:
                loaded[name] = load_model_for(settings)
        with recorded_run(
            config.title(), out, config.recorded_config(), overwrite, resume, is_main,
            seed=getattr(config, "seed", None), secret_keys=config.SECRET_FIELDS,
            resumable=config.RESUMES,
        ) as (run_dir, record):  # fmt: skip
            work = (lambda: run_dir.path) if run_dir is not None else (lambda: Path(out))
            ctx = StageContext(config, record, loaded, imprint, work, resume, is_main)
            record.inputs = {name: m.path for name, m in loaded.items()}
            first = next(iter(loaded.values()), None)
            if first is not None:
                record.device, record.dtype = str(first.device), dtype_name(first.dtype)
                precision = resolved_precisions(config, first.device)
                if precision:
                    record.inputs["precision"] = precision
            # what the weights really are (the embedded model is a dequantized GGUF), also for
            # models derived from it: their cards carry the statement down
            sources = {name: s for name, m in loaded.items() if (s := model_provenance(m.path))}
            if sources:
                record.inputs["model_provenance"] = sources
            digests = config.input_digests()
            if digests:
                record.inputs["input_digests"] = digests
            if source is not None:
                record.inputs["imprint"] = source
            if imprint is not None:
                record.inputs["imprint_summary"] = imprint.summary()
            config.begin(ctx)
            config.execute(ctx)
            config.finish(ctx)
    return record
