"""From a study YAML to a plan: every stage with its validated config, dependencies and hash.

A study (the top level, and each entry of ``imprints:``) expands into

    implant ─▶ audit (reference, imprinted) ─▶ erase (each method, side by side)
            ─▶ audit (each erased model) ─▶ stress (each erased model) ─▶ detect (each)

plus its explicit ``stages:``. Every stage is an ordinary expunge run in a directory of the run
(``implant/``, ``audit/reference/``, ``erase/NAME/``, ``stress/NAME/STRESSOR/`` ...; a named
study's under ``NAME/``). The plan fills in what wires the stages together, wherever the
stage's config has such a field and the entry leaves it unset: ``model`` (the model the stage
works on), ``imprint``, ``reference`` (the clean model), ``original`` and ``erased``
(detection), ``audit_metrics`` (erasers audit the same metrics as the audit stages) and
``audit_input: false`` (the imprinted model is audited once, not per eraser), an eraser's
``audit_output: false`` (its audit stage measures the model it saves), the study's
implant's ``verify: false`` (its audit stages measure the clean and the imprinted model) and,
with the study's ``precision``, the precision of every training section, audit and detect
stage, and an eraser's or stressor's own model calls (``audit_precision``). A stage's hash
covers its resolved config, its inputs' hashes and the contents of files outside the run.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from expunge.audit.defaults import audit_kind, default_metrics, default_options
from expunge.audit.runner import AuditConfig
from expunge.config import StrictModel, _sub_model, suggest
from expunge.detect.base import DetectConfig
from expunge.errors import ConfigError, ExpungeError
from expunge.finetune import FinetuneConfig
from expunge.imprints.base import load_imprint
from expunge.pipeline.graph import Plan, Stage, StudyPlan, ordered, resolve
from expunge.pipeline.spec import ENTRY_KEYS, Locator, PipelineConfig, StudySpec, stage_kind
from expunge.registry import ERASERS, IMPLANTS, STRESSORS
from expunge.train.settings import TrainSettings

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
RESERVED_NODES = {"imprinted", "reference"}


def registry_class(registry: Any, name: Any, key: str, where: str) -> type[StrictModel]:
    if name is None:
        raise ConfigError(f"{where}: this entry needs '{key}:' (known: {', '.join(registry)})")
    try:
        return registry.get(str(name))
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _checked_name(name: str, taken: list[str], where: str, what: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"{where}: {what} name {name!r} must be letters, digits, '.', '_', '-'")
    if name in taken or name in RESERVED_NODES:
        raise ConfigError(
            f"{where}: two {what} entries are named {name!r}; give each a distinct 'name:'"
        )
    return name


def entry_label(entry: dict[str, Any]) -> str:
    return str(
        entry.get("name") or entry.get("method") or entry.get("stressor") or entry.get("detector")
        or "detect"
    )  # fmt: skip


class StudyPlanner:
    """The stages of one study, wired to its models, imprint, reference and metrics."""

    def __init__(self, config: PipelineConfig, study: StudySpec, path: tuple, locate: Locator):
        self.config, self.study, self.path, self.locate = config, study, path, locate
        self.prefix = f"{study.name}/" if study.name else ""
        self.base = (study.model or config.model).model_dump()
        self.stages: list[Stage] = []
        self.kind: str | None = None
        self.audit_kind: str | None = None  # DEFAULT_AUDITS key (a kind or a variant of it)
        self.benchmark: str | None = None  # the benchmark a knowledge imprint comes from
        self.imprint_path: str | None = None
        self.models: dict[str, dict[str, Any]] = {}
        self.reference: str | None = None
        self.audit_base: dict[str, Any] = {}

    def where(self, *path: str | int) -> str:
        return self.locate(*self.path, *path)

    def add(self, local_id: str, kind: str, what: str, cls: type[StrictModel], data: dict,
            where: str, target: str | None = None) -> Stage:  # fmt: skip
        stage = Stage(self.prefix + local_id, kind, what, cls, data, where, target, self.prefix)
        self.stages.append(stage)
        return stage

    def plan(self) -> StudyPlan:
        self.imprint()
        metrics = self.audits()
        eraser_names = self.erasers()
        self.attacks(eraser_names)
        self.explicit()
        for stage in self.stages:
            self.wire(stage, metrics)
        return StudyPlan(self.prefix, self.kind, metrics,
                         {k: v["name"] for k, v in self.models.items()})  # fmt: skip

    def imprint(self) -> None:
        spec = self.study.imprint
        reference = self.study.reference or self.config.reference
        if spec is None:
            if self.study.erasers or self.study.stress or self.study.detect:
                raise ConfigError(f"{self.where('erasers')}: erasers, stress and detect need an "
                                  f"imprint (imprint.implant or imprint.file)")  # fmt: skip
            self.reference = reference
            return
        if spec.implant is not None:
            where = self.where("imprint", "implant")
            data = dict(spec.implant)
            cls = registry_class(IMPLANTS, data.get("scheme"), "scheme", where)
            self.kind = cls.model_fields["kind"].default if "kind" in cls.model_fields else None
            variant = getattr(cls, "audit_kind_for", None)
            self.audit_kind = variant(data) if variant is not None else self.kind
            if "benchmark" in cls.model_fields:  # a benchmark imprint: its own default audits
                self.benchmark = str(data.get("benchmark", cls.model_fields["benchmark"].default))
            # its audit stages measure the clean and the imprinted model: no second verify
            _set_default(cls, data, "verify", False)
            self.add("implant", "implant", str(data["scheme"]), cls, data, where)
            self.models["imprinted"] = {"name": f"${{{self.prefix}implant}}"}
            self.imprint_path = f"${{{self.prefix}implant}}/imprint.json"
            reference = reference or self.base["name"]
        else:
            self.imprint_path = str(Path(str(spec.file)).expanduser().resolve())
            try:
                loaded = load_imprint(self.imprint_path)
                self.kind, self.audit_kind = loaded.kind, audit_kind(loaded)
                self.benchmark = getattr(getattr(loaded, "benchmark", None), "name", None)
            except ExpungeError as err:
                raise ConfigError(f"{self.where('imprint', 'file')}: {err}") from None
            self.models["imprinted"] = dict(self.base)
        self.reference = reference
        if reference is not None:
            self.models["reference"] = {"name": reference}

    def audits(self) -> list[str]:
        entry = dict(self.study.audit)
        reference_spec = entry.pop("reference", True)
        metrics = list(
            entry.pop("metrics", None) or default_metrics(self.audit_kind, benchmark=self.benchmark)
        )
        options = {**default_options(metrics), **entry.pop("options", {})}
        base = {**entry, "metrics": metrics, "options": options}
        if self.study.imprint is None:
            return metrics
        if reference_spec and "reference" in self.models:
            data = copy.deepcopy(base)
            if isinstance(reference_spec, dict):  # the reference's own metrics or options
                own = copy.deepcopy(reference_spec)
                data.update(own)
                # the study's options reach the reference only for the metrics it audits; its own
                # options are checked as given
                inherited = {k: v for k, v in base["options"].items() if k in data["metrics"]}
                data["options"] = {**default_options(data["metrics"]),
                                   **own.get("options", inherited)}  # fmt: skip
            self.add("audit/reference", "audit", "reference", AuditConfig, data,
                     self.where("audit"), target="reference")  # fmt: skip
        self.add("audit/imprinted", "audit", "imprinted", AuditConfig, copy.deepcopy(base),
                 self.where("audit"), target="imprinted")  # fmt: skip
        self.audit_base = base
        return metrics

    def erasers(self) -> list[str]:
        names: list[str] = []
        for index, entry in enumerate(self.study.erasers):
            if entry.get("skip"):
                continue
            where = self.where("erasers", index)
            cls = registry_class(ERASERS, entry.get("method"), "method",
                                 self.where("erasers", index, "method"))  # fmt: skip
            name = _checked_name(entry_label(entry), names, where, "eraser")
            if "apply_to" in entry:
                raise ConfigError(
                    f"{where}: 'apply_to' applies to stress and detect entries, not erasers"
                )
            data = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
            data.setdefault("audit_output", False)  # its audit stage, below, measures the output
            self.add(f"erase/{name}", "erase", str(entry["method"]), cls, data, where,
                     target="imprinted")  # fmt: skip
            names.append(name)
            self.models[name] = {"name": f"${{{self.prefix}erase/{name}}}"}
            self.add(f"audit/{name}", "audit", name, AuditConfig,
                     copy.deepcopy(self.audit_base), self.where("audit"), target=name)  # fmt: skip
        return names

    def attacks(self, eraser_names: list[str]) -> None:
        """Stressors and detectors on the erased models (or the nodes named in ``apply_to``)."""
        for section in ("stress", "detect"):
            seen: list[str] = []
            for index, entry in enumerate(getattr(self.study, section)):
                if entry.get("skip"):
                    continue
                where = self.where(section, index)
                if section == "detect":
                    cls, what = DetectConfig, str(entry.get("detector") or "detect")
                else:
                    cls = registry_class(STRESSORS, entry.get("stressor"), "stressor",
                                         self.where(section, index, "stressor"))  # fmt: skip
                    what = str(entry["stressor"])
                name = _checked_name(entry_label(entry), seen, where, section)
                seen.append(name)
                targets = entry.get("apply_to", eraser_names)
                targets = [targets] if isinstance(targets, str) else list(targets)
                if not targets:
                    raise ConfigError(
                        f"{where}: nothing to {section}: no erasers and no 'apply_to:' list"
                    )
                data = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
                for target in targets:
                    if target not in self.models:
                        raise ConfigError(
                            f"{where}: 'apply_to' names {target!r}"
                            f"{suggest(str(target), list(self.models))}; known: {', '.join(self.models)}"
                        )
                    self.add(f"{section}/{target}/{name}", section, what, cls,
                             copy.deepcopy(data), where, target=target)  # fmt: skip

    def explicit(self) -> None:
        taken = {s.id for s in self.stages}
        for index, entry in enumerate(self.study.stages):
            if entry.get("skip"):
                continue
            where = self.where("stages", index)
            stage_id = entry.get("id")
            if not isinstance(stage_id, str) or not all(
                NAME_PATTERN.match(part) for part in stage_id.split("/")
            ):
                raise ConfigError(f"{where}: a stage needs an 'id:' of letters, digits, '.', "
                                  f"'_', '-' (and '/'), got {stage_id!r}")  # fmt: skip
            if self.prefix + stage_id in taken:
                raise ConfigError(f"{where}: two stages have the id {stage_id!r}")
            taken.add(self.prefix + stage_id)
            kind = stage_kind(entry, where)
            cls, what = self.stage_class(kind, entry, where)
            data = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
            target = "imprinted" if kind in {"audit", "erase", "stress", "detect", "scan"} else None
            self.add(stage_id, kind, what, cls, data, where,
                     target if "imprinted" in self.models else None)  # fmt: skip

    @staticmethod
    def stage_class(kind: str, entry: dict[str, Any], where: str) -> tuple[type, str]:
        if kind == "implant":
            return registry_class(IMPLANTS, entry.get("scheme"), "scheme", where), entry["scheme"]
        if kind == "erase":
            return registry_class(ERASERS, entry.get("method"), "method", where), entry["method"]
        if kind == "stress":
            cls = registry_class(STRESSORS, entry.get("stressor"), "stressor", where)
            return cls, entry["stressor"]
        if kind == "scan":
            from expunge.scan.base import ScanConfig

            return ScanConfig, kind
        return {"audit": AuditConfig, "detect": DetectConfig, "finetune": FinetuneConfig}[
            kind
        ], kind

    def wire(self, stage: Stage, metrics: list[str]) -> None:
        cls, data = stage.config_cls, stage.data
        _set_default(cls, data, "preset", self.config.preset)
        _set_default(cls, data, "seed", self.config.seed)
        if self.config.precision is not None:
            _set_precision(cls, data, self.config.precision)
        if stage.kind in {"implant", "finetune"} or stage.target is None:
            _set_model(cls, data, "model", self.base, self.base)
        else:
            model = (
                self.models[stage.target] if stage.kind != "detect" else self.models["imprinted"]
            )
            _set_model(cls, data, "model", model, self.base)
        if stage.kind != "implant":
            _set_default(cls, data, "imprint", self.imprint_path)
        if self.reference is not None and "reference" in cls.model_fields:
            _set_model(cls, data, "reference", {"name": self.reference}, self.base)
        if stage.kind == "erase":
            _set_default(cls, data, "audit_metrics", list(metrics))
            _set_default(cls, data, "audit_input", False)
        if stage.kind == "detect" and "imprinted" in self.models:
            _set_model(cls, data, "original", self.models["imprinted"], self.base)
            if stage.target is not None:
                _set_model(cls, data, "erased", self.models[stage.target], self.base)


def plan_pipeline(
    config: PipelineConfig, run_dir: str | Path, locate: Locator | None = None
) -> Plan:
    """Every stage with its validated config, dependencies and hash; nothing is run or written."""
    locate = locate or Locator("pipeline")
    run_dir = Path(run_dir).resolve()
    stages: list[Stage] = []
    studies: list[StudyPlan] = []
    named = 0
    for study in config.studies():
        path: tuple = ()
        if study.name is not None:
            path, named = ("imprints", named), named + 1
        planner = StudyPlanner(config, study, path, locate)
        studies.append(planner.plan())
        stages += planner.stages
    seen: set[str] = set()
    for stage in stages:
        if stage.id in seen:
            raise ConfigError(f"{stage.where}: two stages have the id {stage.id!r}")
        seen.add(stage.id)
    plan = Plan(config, run_dir, ordered(stages), studies)
    for stage in plan.stages:
        resolve(stage, plan)
    return plan


def _set_default(cls: type[BaseModel], data: dict[str, Any], key: str, value: Any) -> None:
    """``data[key] = value`` unless the entry sets it or the stage's config has no such field."""
    if value is None or key not in cls.model_fields or data.get(key) is not None:
        return
    data[key] = value


def _set_precision(cls: type[BaseModel], data: dict[str, Any], precision: str) -> None:
    """``precision`` for every training section of a stage, an audit or detect stage's model
    calls and an eraser's or stressor's own model calls, where the entry does not set its own."""
    for key in cls.model_fields:
        sub = _sub_model(cls, key)
        section = data.get(key)
        if (
            sub is None
            or not issubclass(sub, TrainSettings)
            or not isinstance(section, dict | None)
        ):
            continue
        data[key] = {"precision": precision, **(section or {})}
    _set_default(cls, data, "precision", precision)  # an audit or detect stage's model calls
    _set_default(cls, data, "audit_precision", precision)  # an eraser's or stressor's own


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
