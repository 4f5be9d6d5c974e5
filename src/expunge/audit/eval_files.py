"""Reading open-unlearning's ``<BENCH>_EVAL.json`` files (their schema: ``expunge.audit.interop``):
a retain model's per-example scores and aggregate values, the references of forget quality and
PrivLeak."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from expunge.errors import DataError


def read_eval_file(path: str | Path) -> dict[str, Any]:
    """An open-unlearning ``<BENCH>_EVAL.json`` (or ``_SUMMARY.json``) as a dict."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"open-unlearning result file not found: {path}")
    try:
        logs = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(logs, dict):
        raise DataError(f"{path}: expected an object of metric results, got {type(logs).__name__}")
    return logs


def _result(logs: Mapping[str, Any], metric: str, where: str) -> Mapping[str, Any]:
    result = logs.get(metric)
    if result is None:
        raise DataError(f"{where} has no {metric!r} result; it has: {', '.join(sorted(logs))}")
    if not isinstance(result, Mapping):
        raise DataError(f"{where}: {metric!r} is not an object of results")
    return result


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise DataError(f"{what} is {value!r}, not a number")
    return float(value)


def values_by_index(
    source: str | Path | Mapping[str, Any], metric: str, stat: str = "score"
) -> dict[int, float]:
    """``metric``'s per-example ``stat`` from an EVAL file (or its loaded logs), by dataset
    index, in index order."""
    logs = source if isinstance(source, Mapping) else read_eval_file(source)
    where = "the result logs" if isinstance(source, Mapping) else str(source)
    by_index = _result(logs, metric, where).get("value_by_index")
    if not isinstance(by_index, Mapping) or not by_index:
        raise DataError(f"{where}: {metric!r} has no per-example values (value_by_index)")
    out = {}
    for index, stats in by_index.items():
        if not isinstance(stats, Mapping) or stat not in stats:
            raise DataError(f"{where}: {metric!r} example {index} has no {stat!r}")
        try:
            out[int(index)] = _number(stats[stat], f"{where}: {metric!r} example {index} {stat}")
        except ValueError:
            raise DataError(f"{where}: {metric!r} has a non-integer index {index!r}") from None
    return dict(sorted(out.items()))


def reference_value(source: str | Path | Mapping[str, Any], metric: str) -> float:
    """``metric``'s ``agg_value`` from an EVAL file, e.g. the retain model's ``mia_min_k`` AUC
    that MUSE's and open-unlearning's PrivLeak compare against."""
    logs = source if isinstance(source, Mapping) else read_eval_file(source)
    where = "the result logs" if isinstance(source, Mapping) else str(source)
    return _number(_result(logs, metric, where).get("agg_value"), f"{where}: {metric!r} agg_value")


def reference_truth_ratios(
    source: str | Path | Mapping[str, Any], metric: str = "forget_truth_ratio"
) -> list[float]:
    """A retain model's forget-set truth ratios R = P(wrong)/P(right), in dataset-index order:
    the reference sample of forget quality's KS test, as open-unlearning's ``ks_test`` reads it."""
    return list(values_by_index(source, metric, "score").values())
