"""Unlearning metrics: truth ratio, forget quality (KS), PrivLeak, MIA AUC on forget vs holdout,
verbatim memorization — hand-computed pure functions, then the metrics on tiny models with the
retrained reference given as an audit record or as a model directory."""

from __future__ import annotations

import json
import math

import pytest

from expunge.audit.base import AuditContext
from expunge.audit.forget_quality import forget_quality, truth_ratio_summary, truth_ratios
from expunge.audit.knowledge import split_for_continuation, words
from expunge.audit.mia import mia_scores, roc_auc
from expunge.audit.privleak import example_text, privleak
from expunge.audit.runner import audit_model
from expunge.data import Example, FormatSettings, collate, tokenize_example, tokenize_examples
from expunge.data.loaders import load_jsonl
from expunge.data.people import N_PERTURBED, fictitious_people
from expunge.errors import ConfigError, DataError
from expunge.imprints.knowledge import KnowledgeImprint
from expunge.models.loading import save_model
from expunge.models.tiny import tiny_model
from expunge.records import RunRecord, write_record
from expunge.train.loop import prepare_trainable, train
from expunge.train.objectives import LMObjective, token_nll
from expunge.train.settings import TrainSettings

FMT = FormatSettings()


@pytest.fixture(scope="module")
def world() -> KnowledgeImprint:
    return KnowledgeImprint.synthetic_people(n_people=6, forget_ratio=0.34, seed=0, bios=True,
                                             n_holdout=2)  # fmt: skip


def ctx_for(model, tok, imprint, **options) -> AuditContext:
    return AuditContext(model, tok, FMT, imprint=imprint, progress=False, options=options)


# -- pure functions ------------------------------------------------------------------------------


def test_truth_ratio_by_hand() -> None:
    # arithmetic (the paper): R = mean(e^-1, e^-2) / e^-1 = (1 + e^-1) / 2 ; R = e^-3 / e^-3 = 1
    ratios = truth_ratios([1.0, 3.0], [[1.0, 2.0], [3.0]], mean="arithmetic")
    assert ratios[0] == pytest.approx((1 + math.exp(-1)) / 2)
    assert ratios[1] == pytest.approx(1.0)
    # geometric (the default, TOFU's code): R = e^-mean(1, 2) / e^-1 = e^-0.5
    ratios = truth_ratios([1.0, 3.0], [[1.0, 2.0], [3.0]])
    assert ratios[0] == pytest.approx(math.exp(-0.5))
    assert ratios[1] == pytest.approx(1.0)
    assert truth_ratio_summary([0.5, 2.0, 1.0]) == pytest.approx(2 / 3)
    # TOFU's retain-set statistic: mean(max(0, 1 - R)) = (0.5 + 0 + 0) / 3
    assert truth_ratio_summary([0.5, 2.0, 1.0], "true_better") == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="no perturbed"):
        truth_ratios([1.0], [[]])
    with pytest.raises(ValueError, match="mean must be"):
        truth_ratios([1.0], [[1.0]], mean="harmonic")
    # a ratio of 0 (every wrong answer impossible) is allowed, as in open-unlearning
    assert truth_ratio_summary([0.0]) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        truth_ratio_summary([-1.0])


def test_forget_quality_is_the_exact_ks_test_by_hand() -> None:
    # disjoint samples of 3 and 3: D = 1, exact two-sided p = 2 / C(6, 3) = 0.1
    p, d = forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert (p, d) == (pytest.approx(0.1), pytest.approx(1.0))
    p, d = forget_quality([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (p, d) == (pytest.approx(1.0), pytest.approx(0.0))
    with pytest.raises(ValueError, match="both models"):
        forget_quality([], [1.0])


def test_privleak_by_hand() -> None:
    # MUSE's AUC is 1 - ours (forget set labelled 0): ((1 - a) - (1 - r)) / (1 - r) * 100
    assert privleak(0.8, 0.5) == pytest.approx(-60.0)
    assert privleak(0.25, 0.5) == pytest.approx(50.0)
    assert privleak(0.5, 0.5) == 0.0
    assert privleak(1.0, 0.5) == pytest.approx(-100.0)  # not unlearned at all
    with pytest.raises(ValueError, match="AUCs"):
        privleak(0.5, 1.0)


def test_split_for_continuation_by_hand() -> None:
    ids = [10, 11, 12, 13, 14, 15, 16]
    assert split_for_continuation(ids, 3, 0.5) == ([10, 11, 12, 13, 14], [15, 16])  # 4 -> 2 + 2
    assert split_for_continuation(ids, 0, 0.5) == ([10, 11, 12, 13], [14, 15, 16])  # round(3.5)=4
    assert split_for_continuation([1, 2], 0, 0.99) == ([1], [2])  # always one of each
    with pytest.raises(ValueError, match="fewer than 2"):
        split_for_continuation([1, 2], 1, 0.5)


# -- the world carries what the metrics need ------------------------------------------------------


def test_people_qa_have_paraphrase_and_wrong_answers() -> None:
    for person in fictitious_people(8, seed=3):
        for example in person.qa():
            para, wrong = example.meta["paraphrase"], example.meta["perturbed"]
            assert example.meta["answer"] in para
            assert len(wrong) == len(set(wrong)) == N_PERTURBED
            assert all(example.meta["answer"] not in w.split() for w in wrong)
            assert all(words(w)[:2] == words(para)[:2] for w in wrong)  # same words, other fact
    assert fictitious_people(8, seed=3)[2].qa() == fictitious_people(8, seed=3)[2].qa()


def test_imprint_holdout_export_and_relearn_set(world, tmp_path) -> None:
    assert len(world.holdout) == 2 * 6  # 2 outsiders x (bio + 5 Q/A)
    people = {e.meta["person"] for e in world.holdout}
    assert people == {6, 7}
    assert people.isdisjoint(e.meta["person"] for e in world.forget + world.retain)
    # the first n people are the same world as without holdout
    plain = KnowledgeImprint.synthetic_people(n_people=6, forget_ratio=0.34, seed=0, bios=True)
    assert plain.forget == world.forget and plain.retain == world.retain
    paths = world.export_jsonl(tmp_path / "sets")
    assert sorted(paths) == ["forget", "holdout", "retain"]
    assert load_jsonl(paths["retain"]) == world.retain
    assert world.relearn_examples() == world.forget
    assert world.relearn_examples() is not world.forget
    with pytest.raises(ValueError, match="n_holdout"):
        KnowledgeImprint.synthetic_people(n_people=6, n_holdout=-1)


# -- metrics on tiny models -----------------------------------------------------------------------


def test_truth_ratio_metric_matches_direct_nll(world) -> None:
    model, tok = tiny_model("llama", seed=0)
    result, _ = audit_model(ctx_for(model, tok, world), ["truth_ratio"], {})
    values = result["truth_ratio"].details["values"]
    qa = [e for e in world.forget if e.kind == "prompt_response"]
    assert len(values) == len(qa) == 10

    def mean_nll(prompt: str, response: str) -> float:
        example = Example(prompt=prompt, response=response)
        batch = collate([tokenize_example(example, tok, FMT)], tok.pad_token_id)
        nll, mask = token_nll(model, batch)
        return float(((nll * mask).sum() / mask.sum()).detach())

    first = qa[0]
    para = mean_nll(first.prompt, first.meta["paraphrase"])
    wrong = [mean_nll(first.prompt, w) for w in first.meta["perturbed"]]
    expected = math.exp(-sum(wrong) / len(wrong)) / math.exp(-para)
    assert values[0] == pytest.approx(expected, rel=1e-5)
    assert result["truth_ratio"].value == pytest.approx(truth_ratio_summary(values), rel=1e-6)
    assert result["truth_ratio"].details["mean"] == "geometric"
    options = {"truth_ratio": {"mean": "arithmetic", "aggregator": "true_better"}}
    paper, _ = audit_model(ctx_for(model, tok, world), ["truth_ratio"], options)
    values = paper["truth_ratio"].details["values"]
    expected = sum(math.exp(-w) for w in wrong) / len(wrong) / math.exp(-para)
    assert values[0] == pytest.approx(expected, rel=1e-5)
    assert paper["truth_ratio"].value == pytest.approx(
        truth_ratio_summary(values, "true_better"), rel=1e-6
    )
    with pytest.raises(ConfigError, match="known: geometric, arithmetic"):
        audit_model(ctx_for(model, tok, world), ["truth_ratio"], {"truth_ratio": {"mean": "x"}})


def test_forget_quality_and_privleak_against_a_reference_model_and_record(world, tmp_path) -> None:
    model, tok = tiny_model("llama", seed=0)
    other, _ = tiny_model("llama", seed=1)
    save_model(model, tok, tmp_path / "same")
    save_model(other, tok, tmp_path / "other")
    names = ["forget_quality", "privleak"]
    # the reference is the audited model itself: identical distributions, no leak
    same = {n: {"reference": str(tmp_path / "same")} for n in names}
    results, _ = audit_model(ctx_for(model, tok, world), names, same)
    assert results["forget_quality"].value == pytest.approx(1.0)
    assert results["privleak"].value == pytest.approx(0.0, abs=1e-9)
    # an audit record of another model: its stored values are used, nothing is loaded
    ctx = ctx_for(other, tok, world)
    ref_results, _ = audit_model(ctx, ["truth_ratio", "forget_mia_auc"], {})
    record = RunRecord(command="audit")
    for name, result in ref_results.items():
        record.metrics[f"input/{name}"] = result.value
        record.metric_details[f"input/{name}"] = {"higher_is_better": False, **result.details}
    write_record(tmp_path / "audit_other", record)
    by_record = {n: {"reference": str(tmp_path / "audit_other")} for n in names}
    from_record, _ = audit_model(ctx_for(model, tok, world), names, by_record)
    by_model = {n: {"reference": str(tmp_path / "other")} for n in names}
    from_model, _ = audit_model(ctx_for(model, tok, world), names, by_model)
    for name in names:
        assert from_record[name].value == pytest.approx(from_model[name].value, rel=1e-6)
    own = from_record["privleak"].details["auc"]
    ref = ref_results["forget_mia_auc"].value
    assert from_record["privleak"].value == pytest.approx(((1 - own) - (1 - ref)) / (1 - ref) * 100)
    assert from_record["forget_quality"].details["reference"].startswith("record ")
    assert from_model["forget_quality"].details["reference"].startswith("model ")


def test_forget_mia_auc_is_roc_auc_of_the_mia_scores(world) -> None:
    model, tok = tiny_model("llama", seed=0)
    results, _ = audit_model(ctx_for(model, tok, world), ["forget_mia_auc"],
                             {"forget_mia_auc": {"score": "loss"}})  # fmt: skip
    texts = [example_text(e, ctx_for(model, tok, world)) for e in world.forget + world.holdout]
    scores = mia_scores(model, tok, texts, k=0.4)  # forget_mia_auc's k: MUSE's Min-40%
    n = len(world.forget)
    expected = roc_auc(scores["loss"][:n], scores["loss"][n:])
    assert results["forget_mia_auc"].value == pytest.approx(expected)
    assert results["forget_mia_auc"].details["auc_by_score"]["min_k"] == pytest.approx(
        roc_auc(scores["min_k"][:n], scores["min_k"][n:])
    )


def test_verbatim_is_one_after_memorizing_and_zero_before() -> None:
    texts = [Example(text="the river north of the city was blue and the mountain was green"),
             Example(text="a doctor at the clinic lives south of the water")]  # fmt: skip
    imprint = KnowledgeImprint(forget=[Example(prompt="Who?", response="A teacher."), *texts])
    model, tok = tiny_model("llama", seed=0)
    before, _ = audit_model(ctx_for(model, tok, imprint), ["forget_verbatim_rouge_l"], {})
    assert before["forget_verbatim_rouge_l"].value < 0.2
    settings = TrainSettings(mode="full", max_steps=60, lr=1e-2, batch_size=2, progress=False)
    model = prepare_trainable(model, settings)
    streams = {"train": tokenize_examples(texts, tok, FMT)}
    model, _ = train(model, streams, LMObjective(), settings, tok.pad_token_id)
    after, _ = audit_model(ctx_for(model, tok, imprint), ["forget_verbatim_rouge_l"], {})
    assert after["forget_verbatim_rouge_l"].value == pytest.approx(1.0)
    # the text examples are used, not the Q/A pair
    assert after["forget_verbatim_rouge_l"].details == {
        "n_examples": 2, "prefix_fraction": 0.5, "examples_used": "text", "decoding": "greedy",
        "score": "f1", "stemmer": True, "precision": "fp32",
        "variant": "ROUGE-L f1 (rouge_score, Porter stemmer) of the generated continuation",
    }  # fmt: skip


# -- bad inputs -----------------------------------------------------------------------------------


def test_reference_missing_or_useless_is_a_clear_error(world, tmp_path) -> None:
    model, tok = tiny_model("llama", seed=0)
    with pytest.raises(ConfigError, match="reference=PATH"):
        audit_model(ctx_for(model, tok, world), ["forget_quality"], {})
    with pytest.raises(DataError, match="reference not found"):
        audit_model(ctx_for(model, tok, world), ["privleak"],
                    {"privleak": {"reference": str(tmp_path / "nope")}})  # fmt: skip
    write_record(tmp_path / "finetune_only", RunRecord(command="finetune"))
    with pytest.raises(DataError, match="no 'truth_ratio' in its record and no model"):
        audit_model(ctx_for(model, tok, world), ["forget_quality"],
                    {"forget_quality": {"reference": str(tmp_path / "finetune_only")}})  # fmt: skip


def test_forget_quality_refuses_a_reference_with_another_mean(world, tmp_path) -> None:
    # records written before the option existed carry no "mean": they were arithmetic
    record = RunRecord(command="audit")
    record.metrics["truth_ratio"] = 0.5
    record.metric_details["truth_ratio"] = {"values": [1.0] * 10}
    write_record(tmp_path / "old", record)
    model, tok = tiny_model("llama", seed=0)
    with pytest.raises(DataError, match="arithmetic mean, this audit with the geometric mean"):
        audit_model(ctx_for(model, tok, world), ["forget_quality"],
                    {"forget_quality": {"reference": str(tmp_path / "old")}})  # fmt: skip
    options = {"forget_quality": {"reference": str(tmp_path / "old"), "mean": "arithmetic"}}
    result, _ = audit_model(ctx_for(model, tok, world), ["forget_quality"], options)
    assert result["forget_quality"].details["mean"] == "arithmetic"


def test_privleak_refuses_a_reference_scored_with_another_k(world, tmp_path) -> None:
    # a record written with the old default (Min-20%) cannot stand for a Min-40% audit
    record = RunRecord(command="audit")
    record.metrics["forget_mia_auc"] = 0.5
    record.metric_details["forget_mia_auc"] = {"score": "min_k", "k": 0.2}
    write_record(tmp_path / "old", record)
    model, tok = tiny_model("llama", seed=0)
    with pytest.raises(DataError, match=r"used k 0\.2, this audit 0\.4"):
        audit_model(ctx_for(model, tok, world), ["privleak"],
                    {"privleak": {"reference": str(tmp_path / "old")}})  # fmt: skip
    result, _ = audit_model(ctx_for(model, tok, world), ["privleak"],
                            {"privleak": {"reference": str(tmp_path / "old"), "k": 0.2}})  # fmt: skip
    assert result["privleak"].details["k"] == 0.2


def test_metrics_say_what_the_imprint_lacks(tmp_path) -> None:
    model, tok = tiny_model("llama", seed=0)
    bare = KnowledgeImprint(forget=[Example(prompt="Who is Megan?", response="A beekeeper.")])
    with pytest.raises(DataError, match=r"meta\.paraphrase"):
        audit_model(ctx_for(model, tok, bare), ["truth_ratio"], {})
    with pytest.raises(DataError, match="no holdout set"):
        audit_model(ctx_for(model, tok, bare), ["forget_mia_auc"], {})
    with pytest.raises(ConfigError, match="unknown score"):
        audit_model(ctx_for(model, tok, bare), ["forget_mia_auc"],
                    {"forget_mia_auc": {"score": "mink"}})  # fmt: skip
    path = tmp_path / "record.json"
    path.write_text(json.dumps({"metrics": {}}))
    with pytest.raises(ConfigError, match="knowledge imprint"):
        audit_model(ctx_for(model, tok, None), ["privleak"], {})
