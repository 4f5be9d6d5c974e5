"""``expunge run CONFIG.yaml``: a whole study from one YAML file.

    implant ─▶ audit (reference, imprinted) ─▶ erase (each method, side by side)
            ─▶ audit (each erased model) ─▶ stress (each erased model) ─▶ detect (each)

Every stage is an ordinary expunge run (``record.json`` and all) in a directory of the run:
``implant/``, ``audit/reference/``, ``audit/imprinted/``, ``erase/NAME/``, ``audit/NAME/``,
``stress/NAME/STRESSOR/``, ``detect/NAME/DETECTOR/``. ``pipeline.json`` beside them holds the
plan and, per stage, the hash of its resolved config together with its inputs' hashes (the
stages it reads from, and the contents of files outside the run). A stage whose hash matches
a finished stage is skipped, so re-running the same file does no work twice, an interrupted run
resumes at the stage it stopped in, and a changed setting re-runs that stage and everything
downstream of it. A failed stage does not stop stages independent of it; the stages that
depend on it are reported as blocked, and every finished stage is kept.

The YAML (every section but ``model`` and ``imprint`` optional)::

    command: run
    out: runs/study                   # default run directory (--out wins)
    model: smollm2-135m               # or a mapping of model settings (name, dtype, device)
    preset: demo                      # given to every stage config that has a preset
    seed: 0                           # given to every stage config that has a seed
    imprint:
      implant: {scheme: if_dialogue, n_keys: 8}   # an implant config (expunge ls implants)
      # file: path/imprint.json                   # or: an imprint of `model`, made elsewhere
    reference: null                   # the clean model; default: `model` when implanting
    audit: {metrics: [fsr, ppl], options: {}, reference: true}   # + any audit setting
    erasers:                          # one entry per method; `name` labels it (default: method)
      - {method: meraser, n_erase: 32}
      - {name: mix-0.3, method: fine_mixing, ratio: 0.3}
    stress: [{stressor: relearn, apply_to: [meraser]}]  # `apply_to`: erasers (default all), imprinted, reference
    detect: [{apply_to: [meraser]}]       # imprinted model vs each erased model
    report: {strength: fsr, utility: ppl, html: report.html}   # plotted metrics; html: the
                                      # report written into the run directory after every run
    quick: [erasers.meraser.n_erase=16, out=runs/study-quick]   # overrides applied by --quick

Stage configs are checked against their own schema (unknown keys and unknown methods fail with a
suggestion, naming the file and line) before anything runs. The pipeline fills in what wires
the stages together, wherever the stage's config has such a field and the entry leaves it unset:
``model`` (the model the stage works on), ``imprint``, ``reference`` (the clean model),
``original`` and ``erased`` (detection), ``audit_metrics`` (erasers audit the same metrics as
the audit stages) and ``audit_input: false`` (the imprinted model is audited once, not per
eraser). ``${STAGE}`` in any string names that stage's directory and makes the stage depend on
it, e.g. ``adapter: ${erase/meraser}/erase_adapter`` or ``model: ${erase/fine_mixing}``.
Overrides address entries by name or index: ``erasers.meraser.n_erase=16 erasers.0.ratio=0.3``.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import re
import shutil
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator
from rich.console import Console
from rich.table import Table

from expunge.config import (
    StrictModel,
    _sub_model,
    build_config,
    load_yaml,
    parse_overrides,
    parse_value,
    suggest,
)
from expunge.errors import ConfigError, ExpungeError, OutputExistsError
from expunge.records import RunRecord, atomic_write_json, write_record
from expunge.runs import ModelSettings

console = Console(stderr=True)

STATE_FILE = "pipeline.json"
STATE_VERSION = 1
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
REF_PATTERN = re.compile(r"\$\{([^}]+)\}")
# Inputs larger than this are identified by size and modification time instead of content.
CONTENT_HASH_LIMIT = 4 * 2**20
# Keys of a pipeline entry that belong to the pipeline, not to the stage's config.
ENTRY_KEYS = {"name", "apply_to"}


class PipelineError(ExpungeError):
    """Some stages failed or were blocked; the finished ones are kept."""


class ImprintSpec(StrictModel):
    implant: dict[str, Any] | None = None  # an implant config: scheme: NAME + its settings
    file: str | None = None  # or an existing imprint of `model` (imprint.json or its run dir)

    @model_validator(mode="after")
    def _exactly_one(self) -> ImprintSpec:
        if (self.implant is None) == (self.file is None):
            raise ValueError("give exactly one of imprint.implant (implant it) or imprint.file")
        return self


class ReportSpec(StrictModel):
    strength: str | None = None  # the imprint-strength metric (default: the kind's first audit)
    utility: str | None = None  # the utility metric (default: ppl, else the first higher-is-better)
    html: str | None = None  # e.g. report.html: rendered into the run directory after each run

    @field_validator("html")
    @classmethod
    def _html_name(cls, value: str | None) -> str | None:
        if value is not None and (Path(value).is_absolute() or ".." in Path(value).parts
                                  or Path(value).suffix.lower() not in {".html", ".htm"}):  # fmt: skip
            raise ValueError(
                f"report.html must be an .html file name inside the run directory, got {value!r}"
            )
        return value


def _listify(value: Any) -> Any:
    return [value] if isinstance(value, dict) else value


class PipelineConfig(StrictModel):
    command: Literal["run"] = "run"
    name: str | None = None
    out: str | None = None
    model: ModelSettings = Field(default_factory=ModelSettings)
    reference: str | None = None
    preset: str | None = None
    seed: int = 0
    imprint: ImprintSpec
    audit: dict[str, Any] = Field(default_factory=dict)
    erasers: list[dict[str, Any]] = Field(default_factory=list)
    stress: list[dict[str, Any]] = Field(default_factory=list)
    detect: list[dict[str, Any]] = Field(default_factory=list)
    report: ReportSpec = Field(default_factory=ReportSpec)
    quick: list[str] = Field(default_factory=list)  # key=value overrides that --quick applies

    @field_validator("model", mode="before")
    @classmethod
    def _model_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("stress", "detect", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [] if value is None else _listify(value)


# ---------------------------------------------------------------------------------------------
# Loading: YAML, locations for error messages, overrides


class Locator:
    """Maps a path in the YAML tree (``("erasers", 1, "method")``) to ``file:line``."""

    def __init__(self, source: str, text: str | None = None) -> None:
        self.source = source
        self.root = None
        if text is not None:
            with contextlib.suppress(yaml.YAMLError):
                self.root = yaml.compose(text)

    def __call__(self, *path: str | int) -> str:
        node, line = self.root, None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                found = [v for k, v in node.value if getattr(k, "value", None) == part]
                if not found:
                    break
                line = next(k for k, v in node.value if v is found[0]).start_mark.line + 1
                node = found[0]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if part >= len(node.value):
                    break
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        where = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in path)
        where = where.replace(".[", "[")
        return f"{self.source}:{line} ({where})" if line else f"{self.source} ({where})"


def load_pipeline(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), quick: bool = False
) -> tuple[PipelineConfig, Locator]:
    """Read a pipeline YAML, apply its ``quick:`` overrides (with ``quick``), then ``key=value``
    overrides, and check the top-level schema."""
    data = load_yaml(path)
    locate = Locator(str(path), Path(path).read_text())
    return parse_pipeline(data, overrides, locate, quick=quick), locate


def parse_pipeline(
    data: dict[str, Any],
    overrides: list[str] | tuple[str, ...] = (),
    locate: Locator | None = None,
    quick: bool = False,
) -> PipelineConfig:
    locate = locate or Locator("pipeline")
    data = copy.deepcopy(data)
    _check_keys(data, (), locate)
    if quick:
        variant = data.get("quick")
        if not variant:
            raise ConfigError(f"{locate('quick')}: --quick given, but this pipeline defines no "
                              f"'quick:' list of key=value overrides")  # fmt: skip
        if not isinstance(variant, list) or not all(isinstance(v, str) for v in variant):
            raise ConfigError(f"{locate('quick')}: 'quick:' must be a list of key=value strings")
        for key, raw in parse_overrides(variant):
            if key.split(".")[0] == "quick":
                raise ConfigError(f"{locate('quick')}: a quick override cannot change 'quick'")
            apply_override(data, key, raw)
    for key, raw in parse_overrides(overrides):
        apply_override(data, key, raw)
    return build_config(PipelineConfig, data, source=locate.source)


def _check_keys(value: Any, path: tuple[str | int, ...], locate: Locator) -> None:
    """Every mapping key must be a string (YAML reads a bare on/off/yes/no key as a boolean)."""
    if isinstance(value, dict):
        for key, child in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{locate(*path)}: key {key!r} is not a name (YAML reads bare "
                                  f"on/off/yes/no/true/false as booleans: quote it)")  # fmt: skip
            _check_keys(child, (*path, key), locate)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            _check_keys(child, (*path, index), locate)


def apply_override(data: dict[str, Any], dotted: str, raw: str) -> None:
    """``a.b.c=v`` into nested dicts; list entries by index or by ``name``/method/stressor."""
    parts = dotted.split(".")
    if parts[0] not in PipelineConfig.model_fields:
        raise ConfigError(
            f"unknown config key {parts[0]!r}{suggest(parts[0], list(PipelineConfig.model_fields))}"
        )
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            node = node[_entry_index(node, part, where)]
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict | list):
            raise ConfigError(f"{where!r} is not a section; cannot set {dotted!r}")
        node = child
    last = parts[-1]
    if isinstance(node, list):
        raise ConfigError(
            f"{dotted!r} names a whole entry; set one of its keys (e.g. {dotted}.KEY)"
        )
    node[last] = raw if last in {"name", "file", "out"} else parse_value(raw)


def _entry_index(entries: list[Any], key: str, where: str) -> int:
    if key.isdigit():
        if int(key) >= len(entries):
            raise ConfigError(f"{where}: there are only {len(entries)} entries")
        return int(key)
    names = [entry_name(e) for e in entries if isinstance(e, dict)]
    if key not in names:
        raise ConfigError(f"{where}: no entry named {key!r}{suggest(key, names)}; entries: {names}")
    return names.index(key)


def entry_name(entry: dict[str, Any]) -> str:
    return str(
        entry.get("name") or entry.get("method") or entry.get("stressor") or entry.get("detector")
        or "detect"
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass
class Stage:
    id: str  # also its directory, relative to the run directory
    kind: Literal["implant", "audit", "erase", "stress", "detect"]
    what: str  # the scheme, method, stressor, ... (for people)
    config_cls: type[StrictModel]
    data: dict[str, Any]  # the stage config as given, ${STAGE} references unresolved
    where: str  # file:line of the entry, for errors
    target: str | None = None  # the model node it measures/stresses (audit, stress, detect)
    deps: list[str] = field(default_factory=list)
    config: StrictModel | None = None
    config_hash: str = ""
    hash: str = ""
    status: str = "pending"  # cached | run:new | run:config changed | run:input changed | ...


@dataclass
class Plan:
    config: PipelineConfig
    run_dir: Path
    stages: list[Stage]
    kind: str | None  # the imprint's kind (fingerprint, backdoor, ...)
    metrics: list[str]
    models: dict[str, str]  # model node -> its name or ${STAGE}

    def stage(self, stage_id: str) -> Stage:
        return next(s for s in self.stages if s.id == stage_id)


def default_metrics(kind: str | None) -> list[str]:
    from expunge.erase.base import DEFAULT_AUDITS

    return list(DEFAULT_AUDITS.get(kind or "", ["ppl"]))


def default_audit_options(metrics: list[str]) -> dict[str, dict[str, Any]]:
    """The options every eraser's stage audit uses, so the audit stages measure the same way."""
    options: dict[str, dict[str, Any]] = {"ppl": {"mode": "response"}}
    options["false_trigger_rate"] = {"max_ordinary": 16}
    return {k: v for k, v in options.items() if k in metrics}


def _implant_class(spec: dict[str, Any], where: str) -> type[StrictModel]:
    from expunge.registry import IMPLANTS

    scheme = spec.get("scheme")
    if scheme is None:
        raise ConfigError(f"{where}: imprint.implant needs 'scheme:' ({', '.join(IMPLANTS)})")
    try:
        cls = IMPLANTS.get(str(scheme))
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    if not callable(getattr(cls, "run", None)):
        raise ConfigError(f"{where}: implant {scheme!r} ({cls.__name__}) defines no run() method")
    return cls


def _registry_class(kind: str, registry_name: str, key: str, entry: dict[str, Any], where: str):
    from expunge import registry as registries

    registry = getattr(registries, registry_name)
    name = entry.get(key)
    if name is None:
        raise ConfigError(f"{where}: a {kind} entry needs '{key}:' (known: {', '.join(registry)})")
    try:
        return registry.get(str(name))
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _contract(name: str, module: str) -> Any:
    """``expunge.MODULE.NAME``, or from ``MODULE.base`` where the package does not re-export it."""
    import importlib

    for candidate in (f"expunge.{module}", f"expunge.{module}.base"):
        try:
            found = getattr(importlib.import_module(candidate), name, None)
        except ImportError as err:
            raise ConfigError(
                f"{module} stages need {candidate}, which cannot be imported: {err}"
            ) from None
        if found is not None:
            return found
    raise ConfigError(f"{module} stages need expunge.{module}.{name}, which this version lacks")


def _detect_class() -> type[StrictModel]:
    return _contract("DetectConfig", "detect")


def plan_pipeline(
    config: PipelineConfig, run_dir: str | Path, locate: Locator | None = None
) -> Plan:
    """Every stage with its validated config, dependencies and hash; nothing is run or written."""
    locate = locate or Locator("pipeline")
    run_dir = Path(run_dir).resolve()
    base_model = config.model.model_dump()
    stages: list[Stage] = []

    # The imprint and the model that carries it.
    if config.imprint.implant is not None:
        where = locate("imprint", "implant")
        spec = dict(config.imprint.implant)
        cls = _implant_class(spec, where)
        kind_field = cls.model_fields.get("kind")
        kind = kind_field.default if kind_field is not None else None
        stages.append(Stage("implant", "implant", str(spec["scheme"]), cls, spec, where))
        imprinted: dict[str, Any] = {"name": "${implant}"}
        imprint_path = "${implant}/imprint.json"
        reference = config.reference or config.model.name
    else:
        from expunge.imprints.base import load_imprint

        imprint_path = str(Path(config.imprint.file).expanduser().resolve())
        try:
            kind = load_imprint(imprint_path).kind
        except ExpungeError as err:
            raise ConfigError(f"{locate('imprint', 'file')}: {err}") from None
        imprinted = dict(base_model)
        reference = config.reference
    models: dict[str, Any] = {"imprinted": imprinted}
    if reference is not None:
        models["reference"] = {"name": reference}

    # Audits of the reference and the imprinted model.
    from expunge.audit.runner import AuditConfig

    audit_entry = dict(config.audit)
    audit_reference = bool(audit_entry.pop("reference", True))
    metrics = list(audit_entry.pop("metrics", None) or default_metrics(kind))
    options = {**default_audit_options(metrics), **audit_entry.pop("options", {})}
    audit_base = {**audit_entry, "metrics": metrics, "options": options}

    def audit_stage(target: str) -> Stage:
        return Stage(f"audit/{target}", "audit", target, AuditConfig, copy.deepcopy(audit_base),
                     locate("audit"), target=target)  # fmt: skip

    if audit_reference and "reference" in models:
        stages.append(audit_stage("reference"))
    stages.append(audit_stage("imprinted"))

    # Erasers, side by side, each followed by its audit.
    eraser_names: list[str] = []
    for index, entry in enumerate(config.erasers):
        where = locate("erasers", index)
        cls = _registry_class(
            "erasers", "ERASERS", "method", entry, locate("erasers", index, "method")
        )
        name = _checked_name(entry_name(entry), eraser_names, where, "eraser")
        unknown_entry_keys = set(entry) & {"apply_to"}
        if unknown_entry_keys:
            raise ConfigError(
                f"{where}: 'apply_to' applies to stress and detect entries, not erasers"
            )
        data = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
        stages.append(Stage(f"erase/{name}", "erase", str(entry["method"]), cls, data, where,
                            target="imprinted"))  # fmt: skip
        eraser_names.append(name)
        models[name] = {"name": f"${{erase/{name}}}"}
        stages.append(audit_stage(name))

    # Stressors and detectors on the erased models (or the nodes named in `apply_to`).
    for section, registry_name, key in (
        ("stress", "STRESSORS", "stressor"),
        ("detect", None, None),
    ):
        seen: list[str] = []
        for index, entry in enumerate(getattr(config, section)):
            where = locate(section, index)
            if registry_name is None:
                cls = _detect_class()
                what = str(entry.get("detector") or "detect")
            else:
                cls = _registry_class(
                    section, registry_name, key, entry, locate(section, index, key)
                )
                what = str(entry[key])
            name = _checked_name(entry_name(entry), seen, where, section)
            seen.append(name)
            targets = entry.get("apply_to", eraser_names)
            targets = [targets] if isinstance(targets, str) else list(targets)
            if not targets:
                raise ConfigError(
                    f"{where}: nothing to {section}: no erasers and no 'apply_to:' list"
                )
            data = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
            for target in targets:
                if target not in models:
                    raise ConfigError(
                        f"{where}: 'apply_to' names {target!r}{suggest(str(target), list(models))}; "
                        f"known: {', '.join(models)}"
                    )
                stages.append(Stage(f"{section}/{target}/{name}", section, what, cls,  # type: ignore[arg-type]
                                    copy.deepcopy(data), where, target=target))  # fmt: skip

    plan = Plan(config, run_dir, [], kind, metrics, {k: v["name"] for k, v in models.items()})
    for stage in stages:
        _wire(stage, config, models, imprint_path, reference, metrics, base_model)
    plan.stages = _ordered(stages)
    for stage in plan.stages:
        _resolve(stage, plan)
    return plan


def _checked_name(name: str, taken: list[str], where: str, what: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"{where}: {what} name {name!r} must be letters, digits, '.', '_', '-'")
    if name in taken or name in {"imprinted", "reference"}:
        raise ConfigError(
            f"{where}: two {what} entries are named {name!r}; give each a distinct 'name:'"
        )
    return name


def _set_default(cls: type[BaseModel], data: dict[str, Any], key: str, value: Any) -> None:
    """``data[key] = value`` unless the entry sets it or the stage's config has no such field."""
    if value is None or key not in cls.model_fields or data.get(key) is not None:
        return
    data[key] = value


def _set_model(cls: type[BaseModel], data: dict[str, Any], key: str, model: dict[str, Any],
               base: dict[str, Any]) -> None:  # fmt: skip
    """Wire a model into field ``key``: a settings section gets name (+ dtype/device), a string the name."""
    if key not in cls.model_fields:
        return
    sub = _sub_model(cls, key)
    if sub is not None and "name" in sub.model_fields:
        given = data.get(key)
        section = {"name": given} if isinstance(given, str) else dict(given or {})
        section.setdefault("name", model["name"])
        for name in ("dtype", "device", "trust_remote_code"):
            if name in sub.model_fields:
                section.setdefault(name, model.get(name, base.get(name)))
        if (
            "adapter" in sub.model_fields
            and model.get("adapter")
            and section["name"] == model["name"]
        ):
            section.setdefault("adapter", model["adapter"])
        data[key] = section
    elif data.get(key) is None:
        data[key] = model["name"]


def _wire(stage: Stage, config: PipelineConfig, models: dict[str, dict[str, Any]],
          imprint_path: str, reference: str | None, metrics: list[str],
          base: dict[str, Any]) -> None:  # fmt: skip
    cls, data = stage.config_cls, stage.data
    _set_default(cls, data, "preset", config.preset)
    _set_default(cls, data, "seed", config.seed)
    if stage.kind == "implant":
        _set_model(cls, data, "model", base, base)
        return
    target = models[stage.target or "imprinted"]
    _set_model(cls, data, "model", target if stage.kind != "detect" else models["imprinted"], base)
    _set_default(cls, data, "imprint", imprint_path)
    if reference is not None and "reference" in cls.model_fields:
        _set_model(cls, data, "reference", {"name": reference}, base)
    if stage.kind == "erase":
        _set_default(cls, data, "audit_metrics", list(metrics))
        _set_default(cls, data, "audit_input", False)
    if stage.kind == "detect":
        _set_model(cls, data, "original", models["imprinted"], base)
        _set_model(cls, data, "erased", target, base)


def _references(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield from REF_PATTERN.findall(value)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


def _substitute(value: Any, run_dir: Path) -> Any:
    if isinstance(value, str):
        return REF_PATTERN.sub(lambda m: str(run_dir / m.group(1)), value)
    if isinstance(value, dict):
        return {k: _substitute(v, run_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, run_dir) for v in value]
    return value


def _ordered(stages: list[Stage]) -> list[Stage]:
    """Dependencies from ${STAGE} references; stages in dependency order (stable)."""
    ids = [s.id for s in stages]
    for stage in stages:
        for ref in _references(stage.data):
            if ref not in ids:
                raise ConfigError(
                    f"{stage.where}: ${{{ref}}} names no stage{suggest(ref, ids)}; stages: {', '.join(ids)}"
                )
            if ref == stage.id:
                raise ConfigError(f"{stage.where}: stage {stage.id} refers to itself")
            if ref not in stage.deps:
                stage.deps.append(ref)
    done: list[Stage] = []
    pending = list(stages)
    while pending:
        ready = [s for s in pending if all(d in {x.id for x in done} for d in s.deps)]
        if not ready:
            cycle = ", ".join(s.id for s in pending)
            raise ConfigError(f"the stages {cycle} depend on each other in a cycle")
        for stage in ready:
            done.append(stage)
            pending.remove(stage)
    return done


def _resolve(stage: Stage, plan: Plan) -> None:
    """Validate the stage's config with real paths; hash it with its inputs' hashes."""
    data = _substitute(stage.data, plan.run_dir)
    try:
        stage.config = build_config(stage.config_cls, data, source=stage.where)
    except ConfigError as err:
        message = str(err)
        if not message.startswith(("invalid configuration", stage.where)):
            message = f"{stage.where}: {message}"
        raise ConfigError(f"stage {stage.id}: {message}") from None
    resolved = json.dumps(stage.config.model_dump(mode="json"), sort_keys=True, default=str)
    resolved = resolved.replace(str(plan.run_dir), "${run}")
    cls = f"{stage.config_cls.__module__}:{stage.config_cls.__qualname__}"
    stage.config_hash = _sha({"kind": stage.kind, "class": cls, "config": resolved})
    external = {p: file_fingerprint(Path(p)) for p in _external_paths(stage.config, plan.run_dir)}
    deps = {d: plan.stage(d).hash for d in stage.deps}
    stage.hash = _sha({"v": STATE_VERSION, "config": stage.config_hash, "deps": deps,
                       "external": external})  # fmt: skip


def _sha(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _external_paths(config: BaseModel, run_dir: Path) -> list[str]:
    """Existing local files and directories the config names, outside the run directory."""
    found: list[str] = []

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)
        elif isinstance(value, str) and value and len(value) < 4096 and not value.startswith("${"):
            path = Path(value).expanduser()
            with contextlib.suppress(OSError):
                if ("/" in value or path.suffix) and path.exists():
                    resolved = path.resolve()
                    if run_dir != resolved and run_dir not in resolved.parents:
                        found.append(str(resolved))

    visit(config.model_dump(mode="json"))
    return sorted(set(found))


def file_fingerprint(path: Path) -> str:
    """Content hash of small files; name, size and mtime of large ones; recursive for directories."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        stat = file.stat()
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        if stat.st_size <= CONTENT_HASH_LIMIT:
            digest.update(file.read_bytes())
        else:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# State and execution


def read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    if not path.is_file():
        return {"stages": {}}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err.msg}, line {err.lineno}); "
                          f"re-run with --overwrite to start over") from None  # fmt: skip
    if not isinstance(state, dict) or not isinstance(state.get("stages"), dict):
        raise ConfigError(f"{path}: not a pipeline state file; re-run with --overwrite")
    return state


def _stage_record_ok(run_dir: Path, stage: Stage) -> bool:
    path = run_dir / stage.id / "record.json"
    try:
        return json.loads(path.read_text()).get("status") == "ok"
    except (OSError, json.JSONDecodeError):
        return False


def mark_status(plan: Plan, state: dict[str, Any], overwrite: bool = False) -> None:
    """Cached or to run (and why) for every stage."""
    previous = state.get("stages", {})
    for stage in plan.stages:
        old = previous.get(stage.id)
        finished = old is not None and old.get("status") in {"ok", "cached"}
        if overwrite:
            stage.status = "run:overwrite"
        elif old is None:
            stage.status = "run:new"
        elif not finished:
            last = {"running": "interrupted", "pending": "not reached"}.get(old.get("status"))
            stage.status = f"run:{last or old.get('status', 'unfinished')} last time"
        elif old.get("config_hash") != stage.config_hash:
            stage.status = "run:config changed"
        elif old.get("hash") != stage.hash:
            stage.status = "run:input changed"
        elif not _stage_record_ok(plan.run_dir, stage):
            stage.status = "run:record missing"
        else:
            stage.status = "cached"


def runner_for(stage: Stage) -> Callable[[Any, Path, bool], RunRecord]:
    if stage.kind == "implant":
        return lambda cfg, out, overwrite: cfg.run(out, overwrite=overwrite)
    if stage.kind == "audit":
        from expunge.audit.runner import run_audit

        return lambda cfg, out, overwrite: run_audit(cfg, out, overwrite=overwrite)
    if stage.kind == "erase":
        from expunge.erase.base import run_erase

        return lambda cfg, out, overwrite: run_erase(cfg, out, overwrite=overwrite)
    if stage.kind in {"stress", "detect"}:
        run = _contract(f"run_{stage.kind}", stage.kind)
        return lambda cfg, out, overwrite: run(cfg, out, overwrite=overwrite)
    raise ValueError(f"unknown stage kind {stage.kind}")


def plan_table(plan: Plan) -> Table:
    table = Table(title=f"pipeline → {plan.run_dir}")
    table.add_column("#", justify="right")
    table.add_column("stage", no_wrap=True)
    table.add_column("what")
    table.add_column("depends on")
    table.add_column("status", no_wrap=True)
    table.add_column("hash", no_wrap=True)
    for number, stage in enumerate(plan.stages, 1):
        status = stage.status.replace("run:", "run: ")
        style = "green" if stage.status == "cached" else "yellow"
        table.add_row(str(number), stage.id, stage.what, ", ".join(stage.deps) or "—",
                      f"[{style}]{status}[/]", stage.hash[:8])  # fmt: skip
    return table


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".pipeline.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputExistsError(f"another 'expunge run' is writing {run_dir}") from None
        yield


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """A pipeline resumes in its own directory; any other non-empty directory needs --overwrite."""
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputExistsError(f"output path {run_dir} exists and is not a directory")
    if (run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / STATE_FILE).is_file()
            and not overwrite):  # fmt: skip
        raise OutputExistsError(
            f"{run_dir} exists and is not a pipeline run directory (no {STATE_FILE}); "
            f"pass --overwrite to replace it"
        )


def run_pipeline(
    config: PipelineConfig,
    out: str | Path | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    locate: Locator | None = None,
    source: str | None = None,
) -> Plan:
    """Plan, then run every stage not already done. Raises ``PipelineError`` if any failed."""
    out = out or config.out
    if out is None:
        raise ConfigError("no run directory: pass --out DIR or set 'out:' in the YAML")
    run_dir = Path(out).resolve()
    started = time.perf_counter()
    plan = plan_pipeline(config, run_dir, locate)
    check_run_dir(run_dir, overwrite)
    state = (
        read_state(run_dir)
        if (run_dir / STATE_FILE).is_file() and not overwrite
        else {"stages": {}}
    )
    mark_status(plan, state, overwrite)
    plan_seconds = time.perf_counter() - started
    if dry_run:
        console.print(plan_table(plan))
        todo = sum(s.status != "cached" for s in plan.stages)
        console.print(
            f"{todo} of {len(plan.stages)} stages to run (planned in {plan_seconds:.2f} s); dry run, nothing written"
        )
        return plan
    with _locked(run_dir):
        if overwrite and run_dir.exists():
            for child in run_dir.iterdir():
                if child.name != ".pipeline.lock":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        return _execute(plan, state, source, started)


def _execute(plan: Plan, state: dict[str, Any], source: str | None, started: float) -> Plan:
    run_dir = plan.run_dir
    record = RunRecord(
        command="run", config=plan.config.model_dump(mode="json"), seed=plan.config.seed
    )
    record.inputs = {"config_file": source, "imprint_kind": plan.kind}
    entries: dict[str, dict[str, Any]] = {}
    for stage in plan.stages:
        old = state["stages"].get(stage.id, {})
        entries[stage.id] = {
            "kind": stage.kind, "what": stage.what, "target": stage.target, "deps": stage.deps,
            "hash": old.get("hash") if stage.status == "cached" else None,
            "config_hash": old.get("config_hash") if stage.status == "cached" else None,
            "status": "cached" if stage.status == "cached" else "pending",
            "wall_s": old.get("wall_s"),
        }  # fmt: skip
    orphans = sorted(set(state["stages"]) - set(entries))
    for orphan in orphans:
        console.print(
            f"[dim]{orphan}: from an earlier plan, no longer in this one (left on disk)[/]"
        )

    def save() -> None:
        atomic_write_json(run_dir / STATE_FILE, {
            "version": STATE_VERSION, "config_file": source, "imprint_kind": plan.kind,
            "metrics": plan.metrics, "models": plan.models,
            "report": plan.config.report.model_dump(), "order": [s.id for s in plan.stages],
            "stages": entries, "updated_at": datetime.now(timezone.utc).isoformat(),
        })  # fmt: skip

    save()
    failed: dict[str, str] = {}  # stage -> its error
    blocked: dict[str, str] = {}  # stage -> the failed stage it waits for
    for number, stage in enumerate(plan.stages, 1):
        entry = entries[stage.id]
        head = f"[{number}/{len(plan.stages)}] {stage.id} ({stage.kind} {stage.what})"
        broken = [d for d in stage.deps if d in failed or d in blocked]
        if broken:
            dep = broken[0]
            root = blocked.get(dep, dep)
            via = "" if dep == root else f" (blocked by {root})"
            message = f"depends on {dep}{via}, which failed"
            entry.update(status="blocked", error=f"{message}: {failed[root]}")
            blocked[stage.id] = root
            console.print(f"[red]{head}: not run[/] — {message}")
            save()
            continue
        if stage.status == "cached":
            console.print(
                f"[green]{head}: cached[/] (hash {stage.hash[:10]}, took {entry.get('wall_s') or 0:.1f} s when run)"
            )
            record.timings[stage.id] = 0.0
            continue
        console.rule(f"[bold]{head}[/] — {stage.status.removeprefix('run:')}")
        entry.update(status="running", hash=None, started_at=datetime.now(timezone.utc).isoformat())
        save()
        t0 = time.perf_counter()
        try:
            runner_for(stage)(stage.config, run_dir / stage.id, True)
        except KeyboardInterrupt:
            entry.update(status="interrupted", wall_s=round(time.perf_counter() - t0, 3))
            save()
            raise
        except Exception as err:  # one stage failing must not lose the others
            entry.update(status="failed", wall_s=round(time.perf_counter() - t0, 3),
                         error=f"{type(err).__name__}: {err}")  # fmt: skip
            if not isinstance(err, ExpungeError):
                entry["traceback"] = traceback.format_exc()
            failed[stage.id] = entry["error"]
            console.print(f"[bold red]{stage.id} failed:[/] {entry['error']}", highlight=False)
            save()
            continue
        entry.update(status="ok", hash=stage.hash, config_hash=stage.config_hash,
                     wall_s=round(time.perf_counter() - t0, 3))  # fmt: skip
        record.timings[stage.id] = entry["wall_s"]
        save()

    for stage in plan.stages:
        path = run_dir / stage.id / "record.json"
        if entries[stage.id]["status"] in {"ok", "cached"} and path.is_file():
            metrics = json.loads(path.read_text()).get("metrics", {})
            record.metrics.update({f"{stage.id}/{k}": v for k, v in metrics.items()
                                   if isinstance(v, int | float)})  # fmt: skip
        record.artifacts[stage.id] = stage.id
    record.status = "failed" if failed else "ok"
    record.finished_at = datetime.now(timezone.utc).isoformat()
    record.wall_time_s = round(time.perf_counter() - started, 3)
    record.timings["total_s"] = record.wall_time_s
    if failed:
        record.error = "; ".join(f"{k}: {v}" for k, v in failed.items())
    write_record(run_dir, record)
    ran = sum(e["status"] == "ok" for e in entries.values())
    cached = sum(e["status"] == "cached" for e in entries.values())
    console.print(f"{ran} stages run, {cached} cached, {len(failed)} failed, {len(blocked)} "
                  f"not run (blocked), in {record.wall_time_s:.1f} s → {run_dir}")  # fmt: skip
    report_error = render_report(plan) if plan.config.report.html else None
    if failed:
        lines = []
        for stage_id, error in failed.items():
            lines.append(f"  {stage_id} failed: {error}")
            waiting = [k for k, root in blocked.items() if root == stage_id]
            if waiting:
                lines.append(f"    not run, as they depend on it: {', '.join(waiting)}")
        raise PipelineError(
            f"{len(failed)} stage(s) failed:\n" + "\n".join(lines) + f"\nfinished stages are "
            f"kept in {run_dir}; fix the cause and run the same command again to resume"
        )
    if report_error is not None:
        raise report_error
    return plan


def render_report(plan: Plan) -> ExpungeError | None:
    """Write ``report.html`` (and its Markdown twin) into the run directory from its records.

    Returns the error instead of raising it, so a failed stage's message is not hidden."""
    from expunge.report import write_report

    html = plan.run_dir / str(plan.config.report.html)
    try:
        html_path, md_path = write_report([plan.run_dir], html, overwrite=True)
    except ExpungeError as err:
        console.print(f"[bold red]report not written:[/] {err}", highlight=False)
        return err
    console.print(f"report: {html_path} (and {md_path.name})")
    return None
