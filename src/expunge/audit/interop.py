"""open-unlearning's result files, written and read: ``<BENCH>_EVAL.json`` and
``<BENCH>_SUMMARY.json`` (``BENCH`` = ``TOFU``, ``MUSE``…), so expunge's audits can be put beside
results exchanged in that ecosystem, and forget quality can take a published retain model's
``TOFU_EVAL.json`` as its reference.

The schema is open-unlearning's (``src/evals/base.py``: ``Evaluator.save_logs`` and
``summarize``; the per-metric results of ``src/evals/metrics/*.py``):

- ``<BENCH>_EVAL.json``: one object, metric name → result, top-level keys sorted, written by
  ``json.dump(logs, f, indent=4)`` (no final newline). A result holds ``agg_value`` (a number,
  or null where it could not be computed) and, for per-example metrics, ``value_by_index``:
  dataset index (a string, ``"0"``…) → that example's statistics, e.g. ``{"prob": p,
  "avg_loss": l}`` (probability; lists for several perturbed answers), ``{"score": s}`` (truth
  ratio, MIA attacks, exact memorization), ``{"rouge1_recall", "rougeL_f1", "rougeL_recall",
  "input", "ground_truth", "generation"}`` (ROUGE). An MIA result also holds ``forget`` and
  ``holdout`` sub-results and ``auc`` (``src/evals/metrics/mia/utils.py``). Metrics computed
  from others keep only ``agg_value`` (``forget_quality``, ``privleak``, ``model_utility``).
  The metrics a top-level metric is computed from (``pre_compute``) are logged under their own
  names too.
- ``<BENCH>_SUMMARY.json``: metric name → ``agg_value`` for the evaluated (top-level) metrics
  whose value is not null, sorted, same formatting.

Forget quality's reference (``configs/eval/tofu_metrics/forget_quality.yaml``): the retain
model's ``forget_truth_ratio`` → ``value_by_index`` → ``score`` values. open-unlearning's score
is R = P(wrong answers) / P(right answer) (``truth_ratio`` in ``src/evals/metrics/memorization.py``),
the same direction as expunge's ``truth_ratio`` values. PrivLeak's reference
(``tofu_metrics/privleak.yaml``): the retain model's ``mia_min_k`` ``agg_value``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from expunge.audit.eval_files import (  # noqa: F401 (read back beside the writers)
    read_eval_file,
    reference_truth_ratios,
    reference_value,
    values_by_index,
)
from expunge.errors import ConfigError
from expunge.files import atomic_write_text

_BENCH_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars and arrays become Python numbers and lists."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def metric_entry(
    agg_value: float | None,
    values: Sequence[Any] | Mapping[int | str, Any] | None = None,
    stat: str = "score",
) -> dict[str, Any]:
    """One metric's result: ``{"agg_value": ..., "value_by_index": {"0": {stat: v}, ...}}``.

    ``values`` are per-example numbers (each stored as ``{stat: v}``) or per-example dicts
    (stored as they are), in dataset order, or a mapping from dataset index to either — for a
    metric run on part of a split. Without ``values`` the result is ``{"agg_value": ...}``.
    """
    entry: dict[str, Any] = {"agg_value": _plain(agg_value)}
    if values is not None:
        items = values.items() if isinstance(values, Mapping) else enumerate(values)
        entry["value_by_index"] = {
            str(index): _plain(v if isinstance(v, Mapping) else {stat: v}) for index, v in items
        }
    return entry


def mia_entry(
    forget_scores: Sequence[float], holdout_scores: Sequence[float], auc: float
) -> dict[str, Any]:
    """An MIA attack's result as open-unlearning logs it (``mia_auc``): each side's scores with
    their mean, and the AUC as ``auc`` and ``agg_value``."""

    def side(scores: Sequence[float]) -> dict[str, Any]:
        return metric_entry(float(np.mean(scores)) if len(scores) else None, list(scores))

    return {"forget": side(forget_scores), "holdout": side(holdout_scores),
            "auc": _plain(auc), "agg_value": _plain(auc)}  # fmt: skip


def eval_logs(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The ``<BENCH>_EVAL.json`` object: results as plain JSON, metric names sorted."""
    logs = {}
    for name, result in results.items():
        if not isinstance(result, Mapping) or "agg_value" not in result:
            raise ValueError(f"metric {name!r}: a result is an object with an 'agg_value'")
        logs[name] = _plain(result)
    return dict(sorted(logs.items()))


def summary_of(
    logs: Mapping[str, Mapping[str, Any]], metrics: Iterable[str] | None = None
) -> dict[str, Any]:
    """The ``<BENCH>_SUMMARY.json`` object: ``agg_value`` of each of ``metrics`` (all logged
    ones when None) that has a non-null value, names sorted."""
    wanted = set(logs) if metrics is None else set(metrics)
    return {
        name: result["agg_value"]
        for name, result in sorted(logs.items())
        if name in wanted and result.get("agg_value") is not None
    }


def write_eval_files(
    directory: str | Path,
    benchmark: str,
    results: Mapping[str, Mapping[str, Any]],
    summary_metrics: Iterable[str] | None = None,
) -> tuple[Path, Path]:
    """Write ``<benchmark>_EVAL.json`` and ``<benchmark>_SUMMARY.json`` into ``directory``
    (atomically, formatted as open-unlearning writes them); returns the two paths.

    ``summary_metrics`` are the top-level metrics evaluated (the others in ``results`` are the
    ones they were computed from); all of ``results`` when None."""
    if not _BENCH_NAME.match(benchmark):
        raise ConfigError(
            f"benchmark name {benchmark!r} for the result files must be letters, digits or _ "
            f"(open-unlearning writes TOFU_EVAL.json, MUSE_EVAL.json)"
        )
    logs = eval_logs(results)
    summary = summary_of(logs, summary_metrics)
    directory = Path(directory)
    eval_path = directory / f"{benchmark}_EVAL.json"
    summary_path = directory / f"{benchmark}_SUMMARY.json"
    atomic_write_text(eval_path, json.dumps(logs, indent=4))
    atomic_write_text(summary_path, json.dumps(summary, indent=4))
    return eval_path, summary_path


# -- expunge's audit results in open-unlearning's names ---------------------------------------------

# benchmark imprint -> the evaluator name open-unlearning gives its files
EVAL_FILE_NAMES = {"tofu": "TOFU", "muse_news": "MUSE", "muse_books": "MUSE"}


def _probs(losses: Sequence[Any]) -> Any:
    if isinstance(losses, list | tuple):
        return [_probs(v) for v in losses]
    return math.exp(-float(losses))


def _prob_entry(avg_losses: Sequence[Any]) -> dict[str, Any]:
    """open-unlearning's ``probability`` result: per index {prob, avg_loss}; the mean over
    questions of each question's (mean) probability."""
    per = [{"prob": _probs(loss), "avg_loss": loss} for loss in avg_losses]
    means = [float(np.mean(p["prob"])) for p in per]
    return metric_entry(float(np.mean(means)) if means else None, per)


def _truth_ratio_entries(prefix: str, details: Mapping[str, Any], agg: float) -> dict[str, Any]:
    """``<prefix>_truth_ratio`` (or ``_Truth_Ratio``) with its PARA/PERT probabilities."""
    name = "forget_truth_ratio" if prefix == "forget" else f"{prefix}_Truth_Ratio"
    base = "Q_A_PARA_Prob" if prefix in ("forget", "retain") else "Q_A_Prob"
    return {
        name: metric_entry(agg, details["values"]),
        f"{prefix}_{base}": _prob_entry(details["paraphrase_avg_loss"]),
        f"{prefix}_Q_A_PERT_Prob": _prob_entry(details["perturbed_avg_loss"]),
    }


def _rouge_entry(details: Mapping[str, Any], agg: float) -> dict[str, Any]:
    return metric_entry(agg, details["per_example"])


def _mia_entry(details: Mapping[str, Any]) -> dict[str, Any] | None:
    """``mia_min_k`` (k 0.4): open-unlearning's score is minus ours (theirs: lower = member)."""
    if details.get("score") != "min_k" or details.get("k") != 0.4 or "member_scores" not in details:
        return None
    auc = details["auc_by_score"]["min_k"]
    return mia_entry([-s for s in details["member_scores"]],
                     [-s for s in details["nonmember_scores"]], auc)  # fmt: skip


def open_unlearning_logs(
    benchmark: str, results: Mapping[str, tuple[float, Mapping[str, Any]]]
) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """expunge's audit ``results`` (metric → (value, details)) of a ``benchmark`` imprint as
    open-unlearning's logs: (results by their metric names, the top-level ones for the summary,
    what was left out and why). Only results measured as their evaluator measures them are
    mapped (ROUGE-L recall for TOFU and F1 for MUSE, Min-40% for the MIA, the geometric truth
    ratio); texts (question, ground truth, generation) are left out of the per-index values:
    the forget set lives only in ``imprint.json``."""
    logs: dict[str, Any] = {}
    top: list[str] = []
    left_out: dict[str, str] = {}
    rouge_kind = "recall" if benchmark == "tofu" else "f1"
    for name, (value, details) in results.items():
        if name == "truth_ratio" and benchmark == "tofu":
            if details.get("mean") != "geometric" or details.get("aggregator") != (
                "closer_to_1_better"
            ):
                left_out[name] = "their forget_truth_ratio is geometric, closer_to_1_better"
                continue
            logs.update(_truth_ratio_entries("forget", details, value))
            top.append("forget_truth_ratio")
        elif name == "forget_quality" and benchmark == "tofu":
            if details.get("mean") != "geometric":
                left_out[name] = "their forget_quality compares geometric truth ratios"
                continue
            logs["forget_quality"] = metric_entry(value)
            tr = details.get("truth_ratio_details")
            if tr and "forget_truth_ratio" not in logs:  # the truth ratios it was computed from
                from expunge.audit.forget_quality import truth_ratio_summary

                summary = truth_ratio_summary(tr["values"], "closer_to_1_better")
                logs.update(_truth_ratio_entries("forget", tr, summary))
            top.append("forget_quality")
        elif name == "forget_prob" and benchmark == "tofu":
            logs["forget_Q_A_Prob"] = _prob_entry(details["avg_loss"])
            top.append("forget_Q_A_Prob")
        elif name == "forget_rouge_l" and benchmark == "tofu":
            if details.get("score") != rouge_kind or not details.get("stemmer", True):
                left_out[name] = f"their forget_Q_A_ROUGE is the stemmed ROUGE-L {rouge_kind}"
                continue
            logs["forget_Q_A_ROUGE"] = _rouge_entry(details, value)
            top.append("forget_Q_A_ROUGE")
        elif name == "model_utility" and benchmark == "tofu":
            logs["model_utility"] = metric_entry(value)
            for component, data in details["per_example"].items():
                prefix = component.split("_")[0]
                if component.endswith("Truth_Ratio"):
                    logs.update(_truth_ratio_entries(prefix, data, data["value"]))
                elif component.endswith("ROUGE"):
                    logs[component] = _rouge_entry(data, data["value"])
                elif component.endswith("normalised"):
                    logs[component] = metric_entry(
                        data["value"], [{"prob": p} for p in data["values"]]
                    )
                    logs[f"{prefix}_Q_A_Prob"] = _prob_entry(data["avg_loss"])
                else:
                    logs[component] = _prob_entry(data["avg_loss"])
            top.append("model_utility")
        elif name in ("knowmem_forget", "knowmem_retain", "forget_verbatim_rouge_l") and (
            benchmark != "tofu"
        ):
            theirs = {"knowmem_forget": "forget_knowmem_ROUGE",
                      "knowmem_retain": "retain_knowmem_ROUGE",
                      "forget_verbatim_rouge_l": "forget_verbmem_ROUGE"}[name]  # fmt: skip
            if details.get("score") != "f1" or "per_example" not in details:
                left_out[name] = f"their {theirs} is the ROUGE-L F1 per example"
                continue
            logs[theirs] = _rouge_entry(details, value)
            top.append(theirs)
        elif name in ("forget_mia_auc", "privleak"):
            mia = _mia_entry(details if name == "forget_mia_auc" else details.get("mia", {}))
            if mia is None:
                left_out[name] = "their mia_min_k is Min-K% with k = 0.4"
                continue
            logs.setdefault("mia_min_k", mia)
            if name == "privleak":
                logs["privleak"] = metric_entry(value)
                top.append("privleak")
        else:
            left_out[name] = f"no {EVAL_FILE_NAMES.get(benchmark, benchmark)} metric of that name"
    return logs, top, left_out
