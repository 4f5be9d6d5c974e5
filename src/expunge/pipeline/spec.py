"""What a study YAML may say (``expunge run CONFIG.yaml``), and how it is read.

    command: run
    out: runs/study                   # default run directory (--out wins)
    model: smollm2-135m               # or a mapping of model settings (name, dtype, device)
    preset: demo                      # given to every stage config that has a preset
    seed: 0                           # given to every stage config that has a seed
    precision: bf16                   # auto|fp32|bf16: every stage's training and audit stages
                                      # (default: each stage's own, fp32)
    imprint:
      implant: {scheme: if_dialogue, n_keys: 8}   # an implant config (expunge ls implants)
      # file: path/imprint.json                   # or: an imprint of `model`, made elsewhere
    reference: null                   # the clean model; default: `model` when implanting
    audit: {metrics: [fsr, ppl], options: {}, reference: true}   # + any audit setting;
                                      # reference: false, or {metrics, options} of its own
    erasers:                          # one entry per method; `name` labels it (default: method)
      - {method: meraser, n_erase: 32}
      - {name: mix-0.3, method: fine_mixing, ratio: 0.3}
    stress: [{stressor: relearn, apply_to: [meraser]}]  # `apply_to`: erasers (default all),
                                                        # imprinted, reference
    detect: [{apply_to: [meraser]}]   # imprinted model vs each erased model
    stages:                           # any further stage, of any kind, wired by ${STAGE}
      - {id: retrained, kind: finetune, train: {epochs: 3}}
    imprints:                         # more studies in the same run, each with the sections
      - {name: second, imprint: {implant: {scheme: utf}}, erasers: [...]}   # above; its
                                      # stage ids start with NAME/
    report:                           # plotted metrics, tables of chosen stages and metrics,
      strength: fsr                   # and the report written after every run
      utility: ppl
      html: report.html
      tables: [{title: ..., rows: [{stage: implant}], columns: [{metric: fsr}]}]
    quick: [erasers.meraser.n_erase=16, out=runs/study-quick]   # overrides applied by --quick

Any entry (an eraser, a stressor, a stage, a study) with ``skip: true`` is left out. A stage
entry under ``stages:`` has an ``id`` and a ``kind`` (implant, audit, erase, stress,
detect, finetune, scan; implied by ``scheme:``, ``method:`` or ``stressor:``); the rest is the stage's
own config. ``${STAGE}`` in any string is that stage's directory, and makes the stage depend on
it (inside a named study, a name of the study's own stages is tried first).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from expunge.config import (
    Locator,
    StrictModel,
    build_config,
    load_yaml,
    parse_overrides,
    set_dotted,
)
from expunge.errors import ConfigError
from expunge.files import read_text
from expunge.models.loading import ModelSettings

# Keys of a pipeline entry that belong to the pipeline, not to the stage's config.
ENTRY_KEYS = {"name", "apply_to", "id", "kind", "skip"}
STAGE_KINDS = ("implant", "audit", "erase", "stress", "detect", "finetune", "scan")
KIND_BY_SELECTOR = {"scheme": "implant", "method": "erase", "stressor": "stress"}


class ImprintSpec(StrictModel):
    implant: dict[str, Any] | None = None  # an implant config: scheme: NAME + its settings
    file: str | None = None  # or an existing imprint of `model` (imprint.json or its run dir)

    @model_validator(mode="after")
    def _exactly_one(self) -> ImprintSpec:
        if (self.implant is None) == (self.file is None):
            raise ValueError("give exactly one of imprint.implant (implant it) or imprint.file")
        return self


class RowSpec(StrictModel):
    stage: str  # a stage id (its record), e.g. implant, erase/meraser, audit/sani
    prefix: str = ""  # the record's metric prefix, e.g. erased/ for an eraser's stage audit
    label: str | None = None


class ColumnSpec(StrictModel):
    # a metric, or a path into its details with '/' (``regurgitation/per_type/*/greedy``: one
    # column per key where '*' stands)
    metric: str
    label: str | None = None
    format: Literal["auto", "percent", "number", "integer", "p", "signed"] = "auto"


class TableSpec(StrictModel):
    title: str
    rows: list[RowSpec] = Field(min_length=1)
    columns: list[ColumnSpec] = Field(min_length=1)
    transpose: bool = False  # stages as columns, metrics as rows
    caption: str | None = None


class ReportSpec(StrictModel):
    strength: str | None = None  # the imprint-strength metric (default: the kind's first audit)
    utility: str | None = None  # the utility metric (default: ppl, else the first higher-is-better)
    html: str | None = None  # e.g. report.html: rendered into the run directory after each run
    tables: list[TableSpec] = Field(default_factory=list)

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
    return [] if value is None else [value] if isinstance(value, dict) else value


def _model_settings(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class _StudyBody(StrictModel):
    """What a study does to its imprint: shared by a named study and the YAML's top level."""

    reference: str | None = None
    imprint: ImprintSpec | None = None
    audit: dict[str, Any] = Field(default_factory=dict)
    erasers: list[dict[str, Any]] = Field(default_factory=list)
    stress: list[dict[str, Any]] = Field(default_factory=list)
    detect: list[dict[str, Any]] = Field(default_factory=list)
    stages: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("model", mode="before", check_fields=False)
    @classmethod
    def _model_name(cls, value: Any) -> Any:
        return _model_settings(value)

    @field_validator("stress", "detect", "stages", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _listify(value)


class StudySpec(_StudyBody):
    """One imprint and what is done to it; the top level of the YAML is one too."""

    name: str | None = None  # the prefix of its stage ids (none for the top-level study)
    skip: bool = False  # leave the whole study out (e.g. from a quick: override)
    model: ModelSettings | None = None  # default: the pipeline's


class PipelineConfig(_StudyBody):
    command: Literal["run"] = "run"
    # the compute precision of every training section (train, erase, recover, ...), of audit
    # and detect stages and of an eraser's own model calls (its audits, MEraser's answer pool),
    # unless an entry sets its own; None leaves each stage's default
    precision: Literal["auto", "fp32", "bf16"] | None = None
    name: str | None = None
    out: str | None = None
    model: ModelSettings = Field(default_factory=ModelSettings)
    preset: str | None = None
    seed: int = 0
    imprints: list[StudySpec] = Field(default_factory=list)
    report: ReportSpec = Field(default_factory=ReportSpec)
    quick: list[str] = Field(default_factory=list)  # key=value overrides that --quick applies

    @model_validator(mode="after")
    def _something_to_do(self) -> PipelineConfig:
        if self.imprint is None and not (self.imprints or self.stages):
            raise ValueError("a study needs an imprint (imprint.implant or imprint.file), "
                             "imprints: [...] or stages: [...]")  # fmt: skip
        names = [s.name for s in self.imprints]
        if None in names or len(set(names)) != len(names):
            raise ValueError("every entry of imprints: needs a distinct name")
        return self

    def studies(self) -> list[StudySpec]:
        """The top-level study (when it has an imprint or stages), then the named ones."""
        top = StudySpec(**{name: getattr(self, name) for name in _StudyBody.model_fields})
        has_top = self.imprint is not None or self.stages or self.erasers
        return ([top] if has_top else []) + [s for s in self.imprints if not s.skip]


def load_pipeline(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), quick: bool = False
) -> tuple[PipelineConfig, Locator]:
    """Read a pipeline YAML, apply its ``quick:`` overrides (with ``quick``), then ``key=value``
    overrides, and check the top-level schema."""
    data = load_yaml(path)
    locate = Locator(str(path), read_text(path, "config file"))
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
            set_dotted(data, key, raw, PipelineConfig)
    for key, raw in parse_overrides(overrides):
        set_dotted(data, key, raw, PipelineConfig)
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


def stage_kind(entry: dict[str, Any], where: str) -> str:
    """The kind of an explicit ``stages:`` entry: given, or implied by its selector key."""
    kind = entry.get("kind")
    implied = [k for selector, k in KIND_BY_SELECTOR.items() if selector in entry]
    if kind is None:
        if len(implied) != 1:
            raise ConfigError(f"{where}: a stage needs 'kind:' (one of {', '.join(STAGE_KINDS)})")
        kind = implied[0]
    if kind not in STAGE_KINDS:
        raise ConfigError(f"{where}: unknown stage kind {kind!r}; known: {', '.join(STAGE_KINDS)}")
    return str(kind)
