"""The retrained reference: what a model never trained on the forget set scores.

Forget quality and PrivLeak compare the audited model with a *gold standard*: the same base
fine-tuned on the retain set alone (``expunge finetune --data world/retain.jsonl``). A metric
that needs it takes the option ``reference=PATH``, where PATH is either

- an **audit record** of the reference (``record.json``, or a run directory holding one) in which
  the metric it needs was recorded (``truth_ratio`` for forget quality, ``forget_mia_auc`` for
  PrivLeak; a stage-prefixed key such as ``input/truth_ratio`` counts too): nothing is loaded,
  the stored per-example values are used; or
- the reference **model** (a model directory, or a run directory holding ``model/``): it is
  loaded once per audit and scored on the same imprint with the same settings.

- a retain model's **open-unlearning result file** (``TOFU_EVAL.json``, ``MUSE_EVAL.json``;
  ``expunge.audit.interop``): forget quality takes its ``forget_truth_ratio`` per-index scores
  (their truth ratio: the geometric mean, as ours by default), PrivLeak its ``mia_min_k`` AUC
  (Min-40%), as open-unlearning's ``retain_logs_path`` does.

A run directory with both (a record without the metric, and a model) uses the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from expunge.audit.base import AuditContext, MetricResult
from expunge.audit.eval_files import read_eval_file, reference_truth_ratios, reference_value
from expunge.errors import ConfigError, DataError
from expunge.files import read_text


def _record_path(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".json":
        return path
    if path.is_dir() and (path / "record.json").is_file():
        return path / "record.json"
    return None


def _is_model(path: Path) -> bool:
    return path.is_dir() and (
        (path / "config.json").is_file() or (path / "model" / "config.json").is_file()
    )


def recorded_result(record_path: Path, metric: str) -> MetricResult | None:
    """``metric`` as stored in a run record (unprefixed first, then any ``STAGE/metric``)."""
    try:
        data = json.loads(read_text(record_path, "record"))
    except json.JSONDecodeError as err:
        raise DataError(f"{record_path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    metrics, details = data.get("metrics", {}), data.get("metric_details", {})
    keys = [metric, *sorted(k for k in metrics if k.endswith("/" + metric))]
    for key in keys:
        if key in metrics:
            info = dict(details.get(key, {}))
            higher = bool(info.pop("higher_is_better", True))
            return MetricResult(metric, float(metrics[key]), higher, info)
    return None


def reference_result(
    ctx: AuditContext, metric: str, compute: Callable[[AuditContext], MetricResult]
) -> tuple[MetricResult, str]:
    """The reference's ``metric`` (from ``ctx.options['reference']``) and where it came from."""
    spec = ctx.options.get("reference")
    if not spec:
        raise ConfigError(
            f"this metric compares with a retrained model: set its option reference=PATH (an "
            f"audit record with {metric!r}, or the model fine-tuned without the forget set)"
        )
    path = Path(str(spec)).expanduser()
    if not path.exists():
        raise DataError(f"reference not found: {path}")
    record_path = _record_path(path)
    if record_path is not None and _is_eval_file(record_path):
        return _from_eval_file(record_path, metric), f"open-unlearning file {record_path}"
    if record_path is not None:
        found = recorded_result(record_path, metric)
        if found is not None:
            return found, f"record {record_path}"
    if not _is_model(path):
        raise DataError(
            f"reference {path}: no {metric!r} in its record and no model to compute it with"
        )
    cache: dict[str, Any] = ctx.__dict__.setdefault("_reference_results", {})
    key = (str(path.resolve()), metric, json.dumps(ctx.options, sort_keys=True, default=str))
    if key not in cache:
        from expunge.models.loading import load_model

        device = next(ctx.model.parameters()).device
        models: dict[str, Any] = ctx.__dict__.setdefault("_reference_models", {})
        if str(path) not in models:
            models[str(path)] = load_model(str(path), device=str(device)).model
        # a fresh context: no cached generations of the audited model; the tokenizer is the
        # audited model's (a retrained reference shares its base, hence its tokenizer)
        reference_ctx = replace(ctx, model=models[str(path)], progress=False)
        cache[key] = compute(reference_ctx)
    return cache[key], f"model {path}"


# what open-unlearning's files hold for the metrics a reference is asked for
EVAL_FILE_METRICS = {"truth_ratio": "forget_truth_ratio", "forget_mia_auc": "mia_min_k"}


def _is_eval_file(path: Path) -> bool:
    """An open-unlearning ``<BENCH>_EVAL.json`` rather than an expunge record."""
    if path.name.endswith("_EVAL.json"):
        return True
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return (
        isinstance(data, dict)
        and "metrics" not in data
        and any(name in data for name in EVAL_FILE_METRICS.values())
    )


def _from_eval_file(path: Path, metric: str) -> MetricResult:
    if metric not in EVAL_FILE_METRICS:
        raise DataError(f"{path}: an open-unlearning file gives no reference for {metric!r}")
    logs = read_eval_file(path)
    theirs = EVAL_FILE_METRICS[metric]
    if metric == "truth_ratio":
        values = reference_truth_ratios(path, theirs)  # errors name the file
        value = reference_value(path, theirs) if logs[theirs].get("agg_value") is not None else 0.0
        details = {"values": values, "mean": "geometric", "source": f"{path.name}: {theirs}"}
        return MetricResult(metric, value, True, details)
    details = {"score": "min_k", "k": 0.4, "source": f"{path.name}: {theirs}"}
    return MetricResult(metric, reference_value(path, theirs), False, details)
