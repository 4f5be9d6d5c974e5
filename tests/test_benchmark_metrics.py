"""TOFU's and MUSE's metrics on a tiny model (the formulas' parity is in tests/parity), and our
results in open-unlearning's files: the mapping, the round trip, and a retain model's
TOFU_EVAL.json as forget quality's reference."""

from __future__ import annotations

import json
import math

import datasets
import numpy as np
import pytest
from scipy.stats import hmean

from expunge.audit.base import AuditContext
from expunge.audit.interop import (
    open_unlearning_logs,
    read_eval_file,
    reference_truth_ratios,
    write_eval_files,
)
from expunge.audit.runner import audit_model
from expunge.audit.tofu import COMPONENTS
from expunge.data.benchmarks import load_benchmark
from expunge.data.benchmarks.export import export_muse, export_tofu
from expunge.data.formatting import FormatSettings
from expunge.errors import DataError
from expunge.imprints.knowledge import KnowledgeImprint
from expunge.models.tiny import tiny_model

RAW = FormatSettings(template="raw")


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


@pytest.fixture
def tofu(tmp_path) -> KnowledgeImprint:
    return load_benchmark("tofu", source=str(export_tofu(tmp_path / "tofu", n_people=10)))


@pytest.fixture
def muse(tmp_path) -> KnowledgeImprint:
    return load_benchmark("muse_news", source=str(export_muse(tmp_path / "muse", n_people=20)))


def context(imprint, seed: int = 0) -> AuditContext:
    model, tokenizer = tiny_model("llama", seed=seed)
    return AuditContext(model, tokenizer, RAW, imprint=imprint, progress=False)


def test_model_utility_is_the_harmonic_mean_of_its_nine_numbers(tofu) -> None:
    options = {"model_utility": {"max_examples": 4, "max_new_tokens": 8}}
    result = audit_model(context(tofu), ["model_utility"], options)[0]["model_utility"]
    components = result.details["components"]
    assert list(components) == list(COMPONENTS)
    assert all(0 <= v <= 1 for v in components.values())
    assert result.value == pytest.approx(hmean(list(components.values())))
    assert result.details["sets"]["ra"] == {"source": "eval set real_authors", "n_examples": 4}
    retain = result.details["per_example"]["retain_Q_A_Prob"]
    assert retain["value"] == pytest.approx(np.mean(np.exp(-np.asarray(retain["avg_loss"]))))


def test_model_utility_of_the_people_world_uses_its_retain_set_and_shipped_questions() -> None:
    world = KnowledgeImprint.synthetic_people(n_people=6, forget_ratio=0.34, seed=0)
    options = {"model_utility": {"max_examples": 3, "max_new_tokens": 4}}
    result = audit_model(context(world), ["model_utility"], options)[0]["model_utility"]
    sources = {k: v["source"] for k, v in result.details["sets"].items()}
    assert sources == {"retain": "the imprint's retain set",
                       "ra": "expunge's shipped real_authors questions",
                       "wf": "expunge's shipped world_facts questions"}  # fmt: skip


def test_forget_prob_and_truth_ratio_read_tofus_columns(tofu) -> None:
    results = audit_model(context(tofu), ["forget_prob", "truth_ratio"], {})[0]
    prob, ratio = results["forget_prob"], results["truth_ratio"]
    assert prob.value == pytest.approx(np.mean([math.exp(-v) for v in prob.details["avg_loss"]]))
    assert ratio.details["n_examples"] == len(tofu.forget) == 5  # paraphrased_answer columns
    assert len(ratio.details["perturbed_avg_loss"][0]) == 3


def test_muse_metrics_use_its_eval_sets(muse) -> None:
    names = ["knowmem_forget", "knowmem_retain", "forget_verbatim_rouge_l", "forget_mia_auc"]
    options = {"knowmem_forget": {"max_new_tokens": 6}, "knowmem_retain": {"max_new_tokens": 6},
               "forget_verbatim_rouge_l": {"max_new_tokens": 8}}  # fmt: skip
    results = audit_model(context(muse), names, options)[0]
    knowmem = results["knowmem_forget"].details
    assert knowmem["n_examples"] == len(muse.eval_sets["knowmem_forget"])
    assert knowmem["n_shots"] == len(muse.eval_sets["knowmem_forget_icl"])
    assert knowmem["score"] == "f1" and len(knowmem["per_example"]) == knowmem["n_examples"]
    verbmem = results["forget_verbatim_rouge_l"].details
    assert verbmem["examples_used"] == "eval set verbmem_forget" and verbmem["max_new_tokens"] == 8
    assert results["forget_mia_auc"].details["n_members"] == len(muse.eval_sets["privleak_forget"])


# -- open-unlearning's files ------------------------------------------------------------------


def test_tofu_results_in_their_names_round_trip(tofu, tmp_path) -> None:
    names = ["truth_ratio", "forget_prob", "forget_rouge_l", "forget_mia_auc", "model_utility"]
    options = {"model_utility": {"max_examples": 3, "max_new_tokens": 4},
               "forget_rouge_l": {"max_new_tokens": 4}}  # fmt: skip
    results = audit_model(context(tofu), names, options)[0]
    pairs = {k: (r.value, r.details) for k, r in results.items()}
    logs, top, left_out = open_unlearning_logs("tofu", pairs)
    assert not left_out
    assert top == ["forget_truth_ratio", "forget_Q_A_Prob", "forget_Q_A_ROUGE", "model_utility"]
    eval_path, summary_path = write_eval_files(tmp_path, "TOFU", logs, top)
    back = read_eval_file(eval_path)
    assert reference_truth_ratios(eval_path) == pytest.approx(
        results["truth_ratio"].details["values"]
    )
    mia = back["mia_min_k"]  # their score is minus ours, their AUC the same
    assert mia["auc"] == pytest.approx(results["forget_mia_auc"].value)
    ours = results["forget_mia_auc"].details["member_scores"]
    assert [v["score"] for v in mia["forget"]["value_by_index"].values()] == [-s for s in ours]
    summary = json.loads(summary_path.read_text())
    assert summary["model_utility"] == pytest.approx(results["model_utility"].value)
    assert set(summary) == set(top)
    assert back["ra_Q_A_Prob_normalised"]["agg_value"] == pytest.approx(
        results["model_utility"].details["components"]["ra_Q_A_Prob_normalised"]
    )


def test_results_measured_otherwise_are_left_out_with_why(tofu) -> None:
    options = {"forget_rouge_l": {"score": "f1", "max_new_tokens": 4},
               "truth_ratio": {"mean": "arithmetic"}, "forget_mia_auc": {"score": "loss"}}  # fmt: skip
    results = audit_model(context(tofu), list(options), options)[0]
    logs, top, left_out = open_unlearning_logs(
        "tofu", {k: (r.value, r.details) for k, r in results.items()}
    )
    assert logs == {} and top == []
    assert set(left_out) == {"forget_rouge_l", "truth_ratio", "forget_mia_auc"}
    assert "recall" in left_out["forget_rouge_l"] and "k = 0.4" in left_out["forget_mia_auc"]


def test_forget_quality_from_a_retain_models_eval_file(tofu, tmp_path) -> None:
    retained = context(tofu, seed=1)
    names = ["truth_ratio", "forget_mia_auc"]
    reference = audit_model(retained, names, {})[0]
    logs, top, _ = open_unlearning_logs(
        "tofu", {k: (r.value, r.details) for k, r in reference.items()}
    )
    eval_path, _ = write_eval_files(tmp_path, "TOFU", logs, top)
    record = tmp_path / "record.json"
    record.write_text(json.dumps({"metrics": {k: r.value for k, r in reference.items()},
                                  "metric_details": {k: r.details for k, r in reference.items()}}))  # fmt: skip
    by_file = audit_model(context(tofu), ["forget_quality", "privleak"],
                          {"forget_quality": {"reference": str(eval_path)},
                           "privleak": {"reference": str(eval_path)}})[0]  # fmt: skip
    by_record = audit_model(context(tofu), ["forget_quality", "privleak"],
                            {"forget_quality": {"reference": str(record)},
                             "privleak": {"reference": str(record)}})[0]  # fmt: skip
    assert by_file["forget_quality"].value == by_record["forget_quality"].value
    assert by_file["privleak"].value == pytest.approx(by_record["privleak"].value)
    assert by_file["forget_quality"].details["reference"].startswith("open-unlearning file")
    broken = tmp_path / "OTHER_EVAL.json"
    broken.write_text(json.dumps({"forget_Q_A_Prob": {"agg_value": 0.5}}))
    with pytest.raises(DataError, match="has no 'forget_truth_ratio' result") as info:
        audit_model(
            context(tofu), ["forget_quality"], {"forget_quality": {"reference": str(broken)}}
        )
    assert "\n" not in str(info.value)
