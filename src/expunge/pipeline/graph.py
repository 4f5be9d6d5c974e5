"""The stage graph of a plan: stages, their ``${STAGE}`` references, order, resolution and hash.

A stage refers to another's directory as ``${STAGE}`` (inside a named study, its own stages
without the prefix). The references give the dependencies, hence the order; resolving a stage
puts real paths in, validates its config and hashes it with its inputs' hashes and the contents
of files outside the run, so that a changed input reruns exactly what depends on it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from expunge.config import StrictModel, build_config, suggest
from expunge.errors import ConfigError, ExpungeError
from expunge.pipeline.state import STATE_VERSION, file_fingerprint

if TYPE_CHECKING:
    from expunge.pipeline.spec import PipelineConfig

REF_PATTERN = re.compile(r"\$\{([^}]+)\}")


@dataclass
class Stage:
    id: str  # also its directory, relative to the run directory
    kind: str  # implant | audit | erase | stress | detect | finetune
    what: str  # the scheme, method, stressor, ... (for people)
    config_cls: type[StrictModel]
    data: dict[str, Any]  # the stage config as given, ${STAGE} references unresolved
    where: str  # file:line of the entry, for errors
    target: str | None = None  # the model node it measures/stresses (audit, stress, detect)
    study: str = ""  # the prefix of its study ("" or "NAME/")
    deps: list[str] = field(default_factory=list)
    config: StrictModel | None = None
    config_hash: str = ""
    hash: str = ""
    status: str = "pending"  # cached | run:new | run:config changed | run:input changed | ...


@dataclass
class StudyPlan:
    prefix: str  # "" or "NAME/"
    kind: str | None  # the imprint's kind (fingerprint, backdoor, ...)
    metrics: list[str]
    models: dict[str, str]  # model node -> its name or ${STAGE}


@dataclass
class Plan:
    config: PipelineConfig
    run_dir: Path
    stages: list[Stage]
    studies: list[StudyPlan]

    def stage(self, stage_id: str) -> Stage:
        return next(s for s in self.stages if s.id == stage_id)

    @property
    def kind(self) -> str | None:
        return self.studies[0].kind if self.studies else None

    @property
    def metrics(self) -> list[str]:
        return self.studies[0].metrics if self.studies else []

    @property
    def models(self) -> dict[str, str]:
        return self.studies[0].models if self.studies else {}


def _references(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield from REF_PATTERN.findall(value)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _references(item)
    elif isinstance(value, list):
        for item in value:
            yield from _references(item)


def _rewrite(value: Any, rename: dict[str, str]) -> Any:
    """``${ref}`` → ``${full id}`` in every string of ``value``."""
    if isinstance(value, str):
        return REF_PATTERN.sub(lambda m: "${" + rename.get(m.group(1), m.group(1)) + "}", value)
    if isinstance(value, dict):
        return {k: _rewrite(v, rename) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, rename) for v in value]
    return value


def _substitute(value: Any, run_dir: Path) -> Any:
    if isinstance(value, str):
        return REF_PATTERN.sub(lambda m: str(run_dir / m.group(1)), value)
    if isinstance(value, dict):
        return {k: _substitute(v, run_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, run_dir) for v in value]
    return value


def ordered(stages: list[Stage]) -> list[Stage]:
    """Dependencies from ${STAGE} references; stages in dependency order (stable).

    Inside a named study a reference to one of the study's own stages may leave out the prefix.
    """
    ids = [s.id for s in stages]
    for stage in stages:
        rename = {}
        for ref in _references(stage.data):
            full = stage.study + ref if stage.study + ref in ids else ref
            if full not in ids:
                raise ConfigError(
                    f"{stage.where}: ${{{ref}}} names no stage{suggest(ref, ids)}; stages: {', '.join(ids)}"
                )
            if full == stage.id:
                raise ConfigError(f"{stage.where}: stage {stage.id} refers to itself")
            rename[ref] = full
            if full not in stage.deps:
                stage.deps.append(full)
        stage.data = _rewrite(stage.data, rename)
    done: list[Stage] = []
    pending = list(stages)
    while pending:
        finished = {x.id for x in done}
        ready = [s for s in pending if all(d in finished for d in s.deps)]
        if not ready:
            cycle = ", ".join(s.id for s in pending)
            raise ConfigError(f"the stages {cycle} depend on each other in a cycle")
        for stage in ready:
            done.append(stage)
            pending.remove(stage)
    return done


def resolve(stage: Stage, plan: Plan) -> None:
    """Validate the stage's config with real paths; hash it with its inputs' hashes."""
    data = _substitute(stage.data, plan.run_dir)
    try:
        stage.config = build_config(stage.config_cls, data, source=stage.where)
    except ConfigError as err:
        message = str(err)
        if not message.startswith(("invalid configuration", stage.where)):
            message = f"{stage.where}: {message}"
        raise ConfigError(f"stage {stage.id}: {message}") from None
    _check_models(stage, plan.run_dir)
    resolved = json.dumps(stage.config.model_dump(mode="json"), sort_keys=True, default=str)
    resolved = resolved.replace(str(plan.run_dir), "${run}")
    cls = f"{stage.config_cls.__module__}:{stage.config_cls.__qualname__}"
    stage.config_hash = _sha({"kind": stage.kind, "class": cls, "config": resolved})
    external = {p: file_fingerprint(Path(p)) for p in _external_paths(stage.config, plan.run_dir)}
    deps = {d: plan.stage(d).hash for d in stage.deps}
    stage.hash = _sha({"v": STATE_VERSION, "config": stage.config_hash, "deps": deps,
                       "external": external})  # fmt: skip


def _check_models(stage: Stage, run_dir: Path) -> None:
    """A model named by a local path that is not there fails the plan (and ``--dry-run``),
    not the stage hours later. Models the run makes, and the embedded and tiny names (their
    cache is filled when they load), are left to the load."""
    from expunge.models.loading import is_builtin_model, resolve_model_path

    to_load = getattr(stage.config, "models_to_load", None)
    for settings in (to_load() if to_load else {}).values():
        name = settings.name
        if is_builtin_model(name):
            continue
        if Path(name).expanduser().resolve().is_relative_to(run_dir):
            continue
        try:
            resolve_model_path(name)
        except ExpungeError as err:
            raise ConfigError(f"stage {stage.id}: {stage.where}: {err}") from None


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
            try:
                exists = ("/" in value or path.suffix) and path.exists()
            except OSError:
                return
            if exists:
                resolved = path.resolve()
                if run_dir != resolved and run_dir not in resolved.parents:
                    found.append(str(resolved))

    visit(config.model_dump(mode="json"))
    return sorted(set(found))
