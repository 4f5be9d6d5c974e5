"""Read run directories into what a report shows. Only records are read, nothing is recomputed.

A run directory is either a pipeline (``pipeline.json`` beside its stage directories, each with
``record.json``) or a single run (``record.json``). Training curves come from the
``metrics.jsonl`` files a run lists as artefacts or keeps one level down (one per phase).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expunge.errors import DataError
from expunge.files import read_text

STATE_FILE = "pipeline.json"


@dataclass
class Run:
    """One run directory's record (``record`` is None when the stage never finished)."""

    id: str
    path: Path
    record: dict[str, Any] | None
    kind: str = ""  # implant | audit | erase | stress | detect | the record's command
    what: str = ""
    target: str | None = None
    status: str = "ok"
    wall_s: float | None = None
    error: str | None = None

    @property
    def metrics(self) -> dict[str, Any]:
        return (self.record or {}).get("metrics", {})

    @property
    def details(self) -> dict[str, Any]:
        return (self.record or {}).get("metric_details", {})

    def higher_is_better(self, metric: str) -> bool | None:
        value = self.details.get(metric, {})
        return value.get("higher_is_better") if isinstance(value, dict) else None


@dataclass
class Study:
    """A pipeline run: its stages, the imprint kind and the metrics its audits measured."""

    path: Path
    title: str
    kind: str | None
    metrics: list[str]
    strength: str | None
    utility: str | None
    models: dict[str, str]
    stages: list[Run]
    imprint_summary: dict[str, Any] = field(default_factory=dict)
    model_name: str = ""

    def stage(self, stage_id: str) -> Run | None:
        return next((s for s in self.stages if s.id == stage_id), None)

    def of_kind(self, kind: str) -> list[Run]:
        return [s for s in self.stages if s.kind == kind]

    @property
    def erasers(self) -> list[str]:
        return [s.id.removeprefix("erase/") for s in self.of_kind("erase")]

    def higher_is_better(self, metric: str) -> bool | None:
        for stage in self.stages:
            for key in (metric, *[k for k in stage.details if k.endswith("/" + metric)]):
                flag = stage.higher_is_better(key)
                if flag is not None:
                    return flag
        return None


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}: {what} is not valid JSON ({err.msg}, line {err.lineno})"
        ) from None


# The parts of a record a report reads as JSON objects; a record whose part is anything else
# (hand-edited, or not expunge's) is refused by name instead of failing deep in a table.
RECORD_OBJECTS = ("config", "metrics", "metric_details", "inputs", "artifacts", "timings",
                  "host", "git", "versions")  # fmt: skip


def read_record_json(path: Path) -> dict[str, Any]:
    """A ``record.json`` as a dict, checked to have the shape the report reads."""
    record = read_json(path, "record.json")
    if not isinstance(record, dict):
        raise DataError(f"{path}: not a run record (a JSON {type(record).__name__}, not an "
                        "object)")  # fmt: skip
    for key in RECORD_OBJECTS:
        if key in record and not isinstance(record[key], dict):
            raise DataError(f"{path}: not a run record ({key!r} is a JSON "
                            f"{type(record[key]).__name__}, not an object)")  # fmt: skip
    return record


def load_run_dir(path: str | Path) -> list[Study] | Run:
    """A pipeline's studies (one per imprint), or a single run."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path} is not a run directory")
    if (path / STATE_FILE).is_file():
        return load_studies(path)
    if (path / "record.json").is_file():
        record = read_record_json(path / "record.json")
        return Run(path.name, path, record, kind=record.get("command", ""),
                   status=record.get("status", "?"), wall_s=record.get("wall_time_s"),
                   error=record.get("error"))  # fmt: skip
    raise DataError(f"{path} holds neither {STATE_FILE} (a pipeline) nor record.json (a run)")


def load_state(path: Path) -> dict[str, Any]:
    state = read_json(path / STATE_FILE, STATE_FILE)
    if not isinstance(state, dict) or not isinstance(state.get("stages"), dict):
        raise DataError(f"{path / STATE_FILE}: not a pipeline state file")
    return state


def load_study(path: Path) -> Study:
    """The first (or only) study of a pipeline run."""
    return load_studies(path)[0]


def load_studies(path: Path) -> list[Study]:
    """One ``Study`` per imprint of the pipeline (stage ids without the study's prefix)."""
    state = load_state(path)
    top = read_record_json(path / "record.json") if (path / "record.json").is_file() else {}
    config = top.get("config", {})
    studies = state.get("studies") or [{"prefix": "", "kind": state.get("imprint_kind"),
                                         "metrics": state.get("metrics") or [],
                                         "models": state.get("models", {})}]  # fmt: skip
    runs = {}
    for stage_id in state.get("order", list(state["stages"])):
        entry = state["stages"].get(stage_id, {})
        record_path = path / stage_id / "record.json"
        record = None
        if entry.get("status") in {"ok", "cached"} and record_path.is_file():
            record = read_record_json(record_path)
        runs[stage_id] = (entry, record)
    out = [_study(path, config, state, spec, runs) for spec in studies]
    return [study for study in out if study.stages] or out[:1]


def _study(path: Path, config: dict[str, Any], state: dict[str, Any], spec: dict[str, Any],
           runs: dict[str, tuple[dict[str, Any], Any]]) -> Study:  # fmt: skip
    prefix = spec.get("prefix", "")
    stages = []
    for stage_id, (entry, record) in runs.items():
        if entry.get("study", "") != prefix:
            continue
        local = stage_id.removeprefix(prefix)
        stages.append(Run(local, path / stage_id, record, kind=entry.get("kind", ""),
                          what=entry.get("what", ""), target=entry.get("target"),
                          status=entry.get("status", "?"), wall_s=entry.get("wall_s"),
                          error=entry.get("error")))  # fmt: skip
    metrics = list(spec.get("metrics") or [])
    report = state.get("report") or {}
    summary = next((s.record["inputs"]["imprint_summary"] for s in stages
                    if s.record and s.record.get("inputs", {}).get("imprint_summary")), {})  # fmt: skip
    title = config.get("name") or path.name
    study = Study(
        path=path, title=f"{title}: {prefix.rstrip('/')}" if prefix else title,
        kind=spec.get("kind"), metrics=metrics,
        strength=report.get("strength") or (metrics[0] if metrics else None), utility=None,
        models=spec.get("models", {}), stages=stages, imprint_summary=summary,
        model_name=_model_name(config, prefix, stages),
    )  # fmt: skip
    study.utility = report.get("utility") or default_utility(study)
    return study


def _model_name(config: dict[str, Any], prefix: str, stages: list[Run]) -> str:
    """The model the study started from: as its implant stage (else the audit of the imprinted
    model) recorded it, else as the pipeline's config names it (a named study's own ``model``,
    else the pipeline's). Not just any stage's: an eraser, stressor or detector works on a model
    derived from it."""
    first = [s for s in stages if s.kind == "implant"]
    first += [s for s in stages if s.kind == "audit" and s.target == "imprinted"]
    for stage in first:
        section = (stage.record or {}).get("config", {}).get("model")
        if isinstance(section, dict) and section.get("name"):
            return str(section["name"])
    for entry in config.get("imprints") or []:
        if prefix and entry.get("name") == prefix.rstrip("/") and entry.get("model"):
            return str(entry["model"].get("name", ""))
    return str((config.get("model") or {}).get("name", ""))


def default_utility(study: Study) -> str | None:
    """``ppl`` when measured, else the first higher-is-better metric after the strength one."""
    if "ppl" in study.metrics:
        return "ppl"
    for metric in study.metrics:
        if metric != study.strength and study.higher_is_better(metric):
            return metric
    return None


def measured_as(details: Any) -> str:
    """How a perplexity was measured, to show beside it ("response tokens, chat format"):
    every ppl records its token span and format (audit/utility.py)."""
    if not isinstance(details, dict) or ("span" not in details and "mode" not in details):
        return ""
    span = details.get("span") or {"response": "response tokens", "whole": "all tokens"}.get(
        str(details.get("mode")), ""
    )
    template = details.get("template")
    return ", ".join(p for p in (span, f"{template} format" if template else "") if p)


def metric_label(metric: str, runs: Any) -> str:
    """``metric`` with how it was measured, from the first of ``runs`` that recorded it."""
    for run in runs:
        how = measured_as(run.details.get(metric))
        if how:
            return f"{metric} ({how})"
    return metric


def describe_model(name: str) -> str:
    """A model name as a report shows it: the embedded default says what it really is."""
    from expunge.models.embedded import EMBEDDED_MODELS, provenance

    return f"{name} ({provenance(name)})" if name in EMBEDDED_MODELS else name


def run_model(record: dict[str, Any]) -> str:
    """The model a run used, from its record: ``inputs.model``, or for a detection run (which
    compares two) ``ERASED vs ORIGINAL``; the resolved config when the inputs lack it."""
    inputs = record.get("inputs") or {}
    if inputs.get("model"):
        return str(inputs["model"])
    if inputs.get("erased") or inputs.get("original"):
        return f"{inputs.get('erased', '?')} vs {inputs.get('original', '?')}"
    model = (record.get("config") or {}).get("model")
    name = model.get("name") if isinstance(model, dict) else model
    return str(name) if name else "?"


def environment(record: dict[str, Any]) -> str:
    """Where a run ran, in one phrase: the source commit, torch, the device and the CPU's kernels.
    fp32 results under a seed repeat only where this phrase is the same (hosts whose kernels
    differ round differently), so a report says it beside its figures."""
    git = record.get("git") or {}
    commit = (str(git["commit"])[:12] if git.get("commit") else "an unknown commit") + (
        " (dirty)" if git.get("dirty") else ""
    )
    host = record.get("host") or {}
    cpu = [str(host["cpu"])] if host.get("cpu") else []
    if host.get("cpu_kernels"):
        cpu.append(f"{host['cpu_kernels']} kernels" + (", bf16" if host.get("cpu_bf16") else ""))
    device = str(record.get("device") or "?")
    if host.get("gpus"):
        device += f" ({', '.join(dict.fromkeys(host['gpus']))})"
    world = record.get("world_size") or 1
    torch = (record.get("versions") or {}).get("torch", "?")
    return (
        f"expunge {commit}, torch {torch}, {device}"
        + (f" × {world} processes" if world > 1 else "")
        + (f", CPU {'; '.join(cpu)}" if cpu else "")
    )


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def stage_metrics(run: Run, metrics: list[str] | None = None) -> dict[str, dict[str, float]]:
    """``STAGE/METRIC`` values of a record grouped by stage, in record order."""
    stages: dict[str, dict[str, float]] = {}
    for key, value in run.metrics.items():
        if "/" not in key or number(value) is None:
            continue
        stage, _, metric = key.rpartition("/")
        if metrics is not None and metric not in metrics:
            continue
        stages.setdefault(stage, {})[metric] = float(value)
    return stages


def training_logs(run: Run) -> dict[str, list[dict[str, Any]]]:
    """Training curves of a run: phase name -> logged steps (``metrics.jsonl`` lines)."""
    if run.record is None or not run.path.is_dir():
        return {}
    paths: dict[str, Path] = {}
    artifact = run.record.get("artifacts", {}).get("metrics")
    if artifact and (run.path / artifact).is_file():
        paths[str(Path(artifact).parent) if "/" in artifact else "train"] = run.path / artifact
    if (run.path / "metrics.jsonl").is_file():
        paths.setdefault("train", run.path / "metrics.jsonl")
    for path in sorted(run.path.glob("*/metrics.jsonl")):
        paths.setdefault(path.parent.name, path)
    logs = {}
    for phase, path in paths.items():
        rows = []
        for number_, line in enumerate(read_text(path, "training log").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path}:{number_}: not valid JSON") from None
            if isinstance(row, dict) and number(row.get("step")) is not None:
                rows.append(row)
        if rows:
            logs[phase] = rows
    return logs


def curve(run: Run) -> dict[str, Any] | None:
    """A stressor's curve: ``{"x": axis name, "points": [{"x", "stage", "metrics"}]}``."""
    value = run.details.get("curve")
    if isinstance(value, dict) and isinstance(value.get("points"), list):
        return value
    return None


def p_value(run: Run, key: str) -> float | None:
    """The permutation test's p-value recorded beside detection accuracy ``key``, if any."""
    details = run.details.get(key, {})
    return number(details.get("p_value")) if isinstance(details, dict) else None


def accuracy_metrics(run: Run) -> dict[str, tuple[float, float | None, float | None]]:
    """Detection accuracies of a record: name -> (value, CI low, CI high)."""
    found = {}
    for key, value in run.metrics.items():
        if number(value) is None or "acc" not in key.rsplit("/", 1)[-1]:
            continue
        details = run.details.get(key, {})
        low = high = None
        if isinstance(details, dict):
            ci = details.get("ci")
            if isinstance(ci, list | tuple) and len(ci) == 2:
                low, high = number(ci[0]), number(ci[1])
            low = number(details.get("ci_low", low))
            high = number(details.get("ci_high", high))
        found[key] = (float(value), low, high)
    return found
