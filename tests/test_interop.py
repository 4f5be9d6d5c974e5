"""open-unlearning's ``TOFU_EVAL.json`` / ``TOFU_SUMMARY.json``, written and read.

``tests/fixtures/open_unlearning/TOFU_*.json`` were written for these tests, by hand, in the
schema and formatting of open-unlearning's evaluator (``src/evals/base.py``: ``save_logs`` is
``json.dump(logs, f, indent=4)`` of the logs with sorted keys; ``summarize`` keeps the non-null
``agg_value`` of the evaluated metrics), for a retain model on three forget questions. Their
values follow open-unlearning's formulas (``src/evals/metrics/memorization.py``: prob =
exp(−avg_loss), truth ratio score = exp(−mean of the perturbed avg_losses) / exp(−paraphrase
avg_loss); ``mia/utils.py``: AUC with the forget set as label 0; ``privacy.py``: privleak with
the 0.5 default reference), which ``test_fixture_follows_open_unlearnings_formulas`` checks.
No open-unlearning code is used.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from expunge.audit.interop import (
    eval_logs,
    metric_entry,
    mia_entry,
    read_eval_file,
    reference_truth_ratios,
    reference_value,
    summary_of,
    values_by_index,
    write_eval_files,
)
from expunge.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures" / "open_unlearning"
EVAL = FIXTURES / "TOFU_EVAL.json"
SUMMARY = FIXTURES / "TOFU_SUMMARY.json"
# configs/eval/tofu.yaml's evaluated metrics (the others in the EVAL file are their pre_compute)
TOFU_METRICS = [
    "forget_truth_ratio", "forget_quality", "forget_Q_A_Prob", "forget_Q_A_ROUGE",
    "model_utility", "privleak", "extraction_strength",
]  # fmt: skip


def test_fixture_follows_open_unlearnings_formulas():
    logs = read_eval_file(EVAL)
    para = values_by_index(logs, "forget_Q_A_PARA_Prob", "avg_loss")
    pert = logs["forget_Q_A_PERT_Prob"]["value_by_index"]
    for index, score in values_by_index(logs, "forget_truth_ratio").items():
        wrong = math.exp(-np.mean(pert[str(index)]["avg_loss"]))
        assert score == pytest.approx(wrong / math.exp(-para[index]), rel=1e-9)
    auc = reference_value(logs, "mia_min_k")
    assert reference_value(logs, "privleak") == pytest.approx(((1 - auc) - 0.5) / 0.5 * 100)


def test_reference_truth_ratios_from_a_retain_models_eval_file():
    ratios = reference_truth_ratios(EVAL)
    scores = json.loads(EVAL.read_text())["forget_truth_ratio"]["value_by_index"]
    assert ratios == [scores[str(i)]["score"] for i in range(3)]
    assert reference_value(EVAL, "mia_min_k") == pytest.approx(2 / 9)


def test_eval_and_summary_files_round_trip_byte_for_byte(tmp_path):
    logs = read_eval_file(EVAL)
    eval_path, summary_path = write_eval_files(tmp_path, "TOFU", logs, TOFU_METRICS)
    assert (eval_path.name, summary_path.name) == ("TOFU_EVAL.json", "TOFU_SUMMARY.json")
    assert eval_path.read_text() == EVAL.read_text()
    assert summary_path.read_text() == SUMMARY.read_text()
    # forget_quality's null agg_value (no reference given) stays out of the summary, as theirs
    assert "forget_quality" not in read_eval_file(summary_path)
    assert read_eval_file(summary_path) == summary_of(logs, TOFU_METRICS)


def test_expunge_values_written_in_their_schema_and_read_back(tmp_path):
    ratios = np.array([0.25, 1.5, 0.75], dtype=np.float32)
    results = {
        "forget_truth_ratio": metric_entry(np.float64(0.6), ratios),
        "forget_Q_A_Prob": metric_entry(0.4, [{"prob": 0.5, "avg_loss": 0.69}], stat="prob"),
        "forget_quality": metric_entry(0.9),
        "mia_min_k": mia_entry([-2.0, -1.0], [-3.0, -2.5], auc=0.25),
    }
    eval_path, summary_path = write_eval_files(tmp_path, "TOFU", results)
    logs = json.loads(eval_path.read_text())
    assert list(logs) == sorted(results)
    assert logs["forget_truth_ratio"] == {
        "agg_value": 0.6,
        "value_by_index": {"0": {"score": 0.25}, "1": {"score": 1.5}, "2": {"score": 0.75}},
    }
    assert logs["forget_quality"] == {"agg_value": 0.9}
    assert logs["mia_min_k"]["forget"] == {
        "agg_value": -1.5, "value_by_index": {"0": {"score": -2.0}, "1": {"score": -1.0}},
    }  # fmt: skip
    assert (logs["mia_min_k"]["auc"], logs["mia_min_k"]["agg_value"]) == (0.25, 0.25)
    assert reference_truth_ratios(eval_path) == [0.25, 1.5, 0.75]
    assert json.loads(summary_path.read_text()) == {
        "forget_Q_A_Prob": 0.4, "forget_quality": 0.9, "forget_truth_ratio": 0.6,
        "mia_min_k": 0.25,
    }  # fmt: skip


def test_values_on_part_of_a_split_keep_their_dataset_indices():
    entry = metric_entry(0.5, {7: 0.5, 2: 0.25})
    assert entry["value_by_index"] == {"7": {"score": 0.5}, "2": {"score": 0.25}}
    assert values_by_index({"m": entry}, "m") == {2: 0.25, 7: 0.5}  # index order


@pytest.mark.parametrize(
    ("content", "metric", "message"),
    [
        (None, "forget_truth_ratio", "open-unlearning result file not found"),
        ("{not json", "forget_truth_ratio", "not valid JSON"),
        ("[1, 2]", "forget_truth_ratio", "expected an object of metric results, got list"),
        ('{"privleak": {"agg_value": 3.0}}', "forget_truth_ratio",
         "has no 'forget_truth_ratio' result; it has: privleak"),
        ('{"forget_truth_ratio": {"agg_value": 0.5}}', "forget_truth_ratio",
         "'forget_truth_ratio' has no per-example values (value_by_index)"),
        ('{"forget_truth_ratio": {"agg_value": 0.5, "value_by_index": {"0": {"prob": 1}}}}',
         "forget_truth_ratio", "'forget_truth_ratio' example 0 has no 'score'"),
        ('{"forget_truth_ratio": {"agg_value": 0.5, "value_by_index": {"0": {"score": null}}}}',
         "forget_truth_ratio", "'forget_truth_ratio' example 0 score is None, not a number"),
    ],
)  # fmt: skip
def test_bad_reference_files_fail_in_one_line(tmp_path, content, metric, message):
    path = tmp_path / "TOFU_EVAL.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as info:
        reference_truth_ratios(path, metric)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_benchmark_name_or_result_writes_nothing(tmp_path):
    with pytest.raises(ConfigError, match="must be letters, digits or _"):
        write_eval_files(tmp_path, "../TOFU", {"m": metric_entry(1.0)})
    with pytest.raises(ValueError, match="a result is an object with an 'agg_value'"):
        write_eval_files(tmp_path, "TOFU", {"m": {"value": 1.0}})
    with pytest.raises(ValueError, match="a result is an object"):
        eval_logs({"m": 1.0})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []
