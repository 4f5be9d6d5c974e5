"""Trace detection on tiny models: intervals, grouped splits, detectors, controls, bad inputs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from expunge.cli import app
from expunge.config import build_config
from expunge.detect.base import DetectConfig, evaluate
from expunge.detect.responses import DetectData, first_token_states, perturbed_copy
from expunge.detect.splits import check_prompt_count, grouped_folds
from expunge.detect.stats import (
    cluster_bootstrap_interval,
    permutation_p_value,
    wilson_interval,
    within_group_permutation,
)
from expunge.detect.text_classifier import TfidfLogreg
from expunge.errors import ConfigError, DataError, ModelError
from expunge.models.loading import LoadedModel
from expunge.models.tiny import save_tiny_model, tiny_config, tiny_model, tiny_tokenizer
from expunge.registry import DETECTORS
from expunge.stage import run_stage


def loaded(seed: int = 0, arch: str = "llama") -> LoadedModel:
    model, tokenizer = tiny_model(arch, seed=seed)
    return LoadedModel(
        model, tokenizer, f"tiny{seed}", f"tiny{seed}", torch.device("cpu"), torch.float32
    )


def small_config(**extra) -> DetectConfig:
    # Tiny random models sample near-uniform tokens at temperature 1; at 0.1 each model's
    # preferences show in its text, so the text detectors have something to find.
    base = {"erased": {"name": "in-memory"}, "n_unrelated": 12, "samples": 3,
            "max_new_tokens": 12, "folds": 3, "min_prompts": 6, "bootstrap": 200,
            "temperature": 0.1, "positive_noise": 2.0, "progress": False, "permutations": 9,
            "options": {"encoder": {"epochs": 8}}}  # fmt: skip
    return DetectConfig.model_validate({**base, **extra})


# --- statistics ---------------------------------------------------------------------------------


def test_wilson_interval_closed_forms():
    low, high = wilson_interval(5, 10)  # p = 0.5: centre 0.5, half-width 0.2634
    assert low == pytest.approx(0.236593, abs=1e-6) and high == pytest.approx(0.763407, abs=1e-6)
    low, high = wilson_interval(0, 10)  # upper = z² / (n + z²) = 3.8415 / 13.8415
    assert low == 0.0 and high == pytest.approx(3.841459 / 13.841459, abs=1e-6)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson_interval(1, 0)


def test_cluster_bootstrap_interval():
    groups = np.repeat(np.arange(10), 4)
    assert cluster_bootstrap_interval(np.ones(40), groups) == (1.0, 1.0)
    # half the prompts fully right, half fully wrong: wide interval around 0.5
    correct = (groups < 5).astype(float)
    low, high = cluster_bootstrap_interval(correct, groups, n_boot=2000, seed=1)
    assert low < 0.3 and high > 0.7
    # the same mix spread within every prompt: no between-prompt variance, a point interval
    within = np.tile([1.0, 1.0, 0.0, 0.0], 10)
    assert cluster_bootstrap_interval(within, groups) == (0.5, 0.5)


def test_within_group_permutation_keeps_each_prompts_labels():
    groups = np.repeat(np.arange(6), 4)
    labels = np.tile([0, 0, 1, 1], 6)
    draws = [within_group_permutation(labels, groups, np.random.default_rng(s)) for s in range(20)]
    for drawn in draws:
        for group in range(6):
            assert sorted(drawn[groups == group].tolist()) == [0, 0, 1, 1]
    assert sum(not np.array_equal(drawn, labels) for drawn in draws) >= 15
    again = within_group_permutation(labels, groups, np.random.default_rng(3))
    assert np.array_equal(again, draws[3])  # seeded


def test_permutation_p_value_closed_forms():
    null = np.array([0.5, 0.625, 0.375])
    assert permutation_p_value(0.9, null) == 1 / 4  # beats every shuffle: 1 / (n + 1)
    assert permutation_p_value(0.5, null) == 3 / 4  # a tie counts against the observed value
    assert permutation_p_value(0.1, null) == 1.0
    # accuracies reached by other float sums still tie
    assert permutation_p_value(7 / 12, np.array([np.mean([1.0] * 7 + [0.0] * 5)])) == 1.0
    with pytest.raises(ValueError, match="at least one permutation"):
        permutation_p_value(0.5, np.array([]))


def null_benchmark():
    """``benchmarks/detection_null.py``, the one home of its synthetic responses."""
    path = Path(__file__).parents[1] / "benchmarks" / "detection_null.py"
    spec = importlib.util.spec_from_file_location("detection_null", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_permutation_test_holds_its_level_where_the_interval_does_not():
    """Two samples of one distribution, 40 times: the bootstrap interval over prompts leaves out
    the detector's own variance and excludes 50% far more often than 5% of the time; the
    permutation test (19 shuffles: p ≤ 0.05 only if the observed accuracy beats all of them)
    rejects at about its level. A test that shuffled without refitting, or across prompts,
    would not be calibrated."""
    shares = null_benchmark().calibration("tfidf_logreg", runs=40, prompts=12, samples=2,
                                          folds=2, permutations=19)  # fmt: skip
    assert 0.45 < shares["mean_accuracy"] < 0.55
    assert (
        shares["interval_above_50"] + shares["interval_below_50"] >= 0.2
    )  # measured: 12 of 40 (5 above, 7 below)
    assert shares["test_rejects_at_5pct"] <= 0.1  # measured: 3 of 40


def test_a_real_difference_beats_every_shuffle():
    data = null_benchmark().topic_responses(12, 2, seed=0, signal=0.9)
    result = evaluate(data, TfidfLogreg(), folds=2, seed=0, n_boot=200, permutations=99)
    assert result["accuracy"] > 0.85
    assert result["p_value"] == pytest.approx(1 / 100)
    assert result["null_q95"] < 0.7
    assert 0.4 < result["null_mean"] < 0.6 and result["permutations"] == 99


# --- grouped splits: no prompt on both sides -------------------------------------------------------


def test_grouped_folds_never_split_a_prompt():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 23, size=300)
    folds = grouped_folds(groups, 5, seed=7)
    seen_in_test = np.zeros(len(groups), dtype=int)
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert len(train) + len(test) == len(groups)
        seen_in_test[test] += 1
    assert (seen_in_test == 1).all()  # every response tested exactly once
    sizes = [len(set(groups[test])) for _, test in folds]
    assert max(sizes) - min(sizes) <= 1
    assert [t.tolist() for _, t in folds] == [t.tolist() for _, t in grouped_folds(groups, 5, 7)]


def test_evaluate_trains_only_on_other_prompts():
    """A detector that memorizes exact texts scores perfectly under a leaky split and at
    chance under the grouped one: each prompt's two answers are seen only on one side."""
    seen: list[tuple[set, set]] = []

    class Memorizer:
        def fit_predict(self, train: DetectData, test: DetectData, seed: int = 0) -> np.ndarray:
            seen.append((set(train.groups.tolist()), set(test.groups.tolist())))
            memory = dict(zip(train.texts, train.labels, strict=True))
            return np.array([memory.get(t, 0.5) for t in test.texts], dtype=float)

    n_prompts, samples = 12, 3
    groups = np.tile(np.repeat(np.arange(n_prompts), samples), 2)
    labels = np.repeat([0, 1], n_prompts * samples)
    # the same text for every sample of a prompt and model: a response-level split leaks it
    texts = [f"prompt {g} model {y}" for g, y in zip(groups, labels, strict=True)]
    data = DetectData(texts, [[0]] * len(texts), np.zeros((len(texts), 1)), labels, groups)
    result = evaluate(data, Memorizer(), folds=4, seed=0, n_boot=200)
    assert all(not train & test for train, test in seen) and len(seen) == 4
    # nothing memorized applies: every score is 0.5, predicted 1 — right for half
    assert result["accuracy"] == 0.5
    assert result["n_prompts"] == n_prompts and result["n_responses"] == len(texts)
    # the same memorizer under a split of responses (prompts on both sides) looks perfect
    leaky_test = np.arange(0, len(texts), samples)  # one sample of each prompt and model held out
    leaky_train = np.setdiff1d(np.arange(len(texts)), leaky_test)
    scores = Memorizer().fit_predict(data.subset(leaky_train), data.subset(leaky_test))
    assert np.mean((scores >= 0.5) == labels[leaky_test]) == 1.0


def test_too_few_prompts_for_a_split(tmp_path):
    with pytest.raises(DataError, match=r"'relevant' has 3 distinct prompts.*needs at least 8"):
        check_prompt_count("relevant", 3, folds=4, min_prompts=8)
    path = tmp_path / "few.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"question {i}?", "response": "x"}) + "\n"
                            for i in [1, 2, 3, 3]))  # fmt: skip
    config = small_config(relevant=str(path))
    with pytest.raises(DataError, match=r"'relevant' has 3 distinct prompts"):
        run_stage(config, tmp_path / "out", models={"original": loaded(0), "erased": loaded(1)})
    assert not (tmp_path / "out").exists()


# --- bad inputs -------------------------------------------------------------------------------


def test_models_with_different_tokenizers_are_refused(tmp_path):
    other_tokenizer = tiny_tokenizer(vocab_size=512)
    config = tiny_config("llama", len(other_tokenizer), pad_token_id=other_tokenizer.pad_token_id,
                         eos_token_id=other_tokenizer.eos_token_id)  # fmt: skip
    from transformers import AutoModelForCausalLM

    other = LoadedModel(AutoModelForCausalLM.from_config(config), other_tokenizer, "other",
                        "other", torch.device("cpu"), torch.float32)  # fmt: skip
    with pytest.raises(ModelError, match=r"different tokenizers: vocabularies of \d+ and 512"):
        run_stage(small_config(), tmp_path / "out", models={"original": loaded(0), "erased": other})
    assert not (tmp_path / "out").exists()


def test_unknown_detector_and_stray_options():
    with pytest.raises(ConfigError, match="did you mean 'tfidf_logreg'"):
        small_config(detectors=["tfidf_logistic"], options={}).detector("tfidf_logistic")
    with pytest.raises(ValueError, match="options given for detectors not requested"):
        small_config(detectors=["tfidf_logreg"])
    with pytest.raises(ConfigError, match="unknown config key 'C_value'"):
        small_config(options={"tfidf_logreg": {"C_value": 2}}).detector("tfidf_logreg")


# --- detectors and controls on tiny models ----------------------------------------------------------


def test_activation_features_read_the_final_norm():
    model, tokenizer = tiny_model("llama")
    prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11, 12], [13]]
    features = first_token_states(model, prompts, responses, tokenizer.pad_token_id, k=2)
    # by hand: hook the norm on each unpadded sequence; average the last prompt position and
    # the first k=2 response positions (2..4 of [5, 6, 7, 10, 11]; 1..2 of [8, 9, 13])
    captured = []
    handle = model.model.norm.register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7, 10, 11]]))
        model(input_ids=torch.tensor([[8, 9, 13]]))
    handle.remove()
    assert np.allclose(features[0], captured[0][0, 2:5].mean(0).numpy(), atol=1e-5)
    assert np.allclose(features[1], captured[1][0, 1:3].mean(0).numpy(), atol=1e-5)


def test_perturbed_copy_leaves_the_original_and_the_head():
    model, _ = tiny_model("llama")
    before = {n: p.clone() for n, p in model.named_parameters()}
    altered = perturbed_copy(model, noise=0.5, seed=0)
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name])
    altered_params = dict(altered.named_parameters())
    assert not torch.equal(altered_params["model.layers.0.mlp.down_proj.weight"],
                           before["model.layers.0.mlp.down_proj.weight"])  # fmt: skip
    assert torch.equal(altered_params["lm_head.weight"], before["lm_head.weight"])


@pytest.fixture(scope="module")
def detected(tmp_path_factory):
    """Original vs a differently initialized model (same tokenizer), with both controls."""
    out = tmp_path_factory.mktemp("detect") / "run"
    record = run_stage(small_config(), out, models={"original": loaded(0), "erased": loaded(1)})
    return out, record


def test_detection_with_both_controls(detected):
    out, record = detected
    accuracy = {k.removesuffix("/accuracy"): v for k, v in record.metrics.items()
                if k.endswith("/accuracy")}  # fmt: skip
    for detector in ("tfidf_logreg", "encoder", "activation_probe"):
        # the same model with another seed: nothing to tell apart — near chance
        assert 0.3 <= accuracy[f"negative_control/unrelated/{detector}"] <= 0.7, accuracy
        # a clearly altered copy, and a model of other weights: near perfect
        assert accuracy[f"positive_control/unrelated/{detector}"] >= 0.85, accuracy
        assert accuracy[f"erased/unrelated/{detector}"] >= 0.85, accuracy
    details = record.metric_details["erased/unrelated/tfidf_logreg/accuracy"]
    assert details["n_prompts"] == 12 and details["n_responses"] == 2 * 12 * 3
    assert details["folds"] == 3 and len(details["fold_accuracy"]) == 3
    assert details["wilson"][0] <= details["accuracy"] <= details["wilson"][1]
    table = (out / "trace.md").read_text()
    assert "| negative_control | unrelated |" in table
    # beaten by none of 9 shuffles: p = 1 / 10; the encoder trains a network per fold and is
    # tested only when asked (permute_costly)
    for detector in ("tfidf_logreg", "activation_probe"):
        assert record.metrics[f"erased/unrelated/{detector}/p_value"] == pytest.approx(0.1)
        assert record.metrics[f"positive_control/unrelated/{detector}/p_value"] == pytest.approx(
            0.1
        )
        assert record.metric_details[f"erased/unrelated/{detector}/accuracy"]["permutations"] == 9
    assert "erased/unrelated/encoder/p_value" not in record.metrics
    assert "p 0.1" in table
    # where the time went: the sampling, then each detector over every comparison and set
    assert set(record.timings) == {"sampling", "tfidf_logreg", "encoder", "activation_probe"}
    assert all(seconds > 0 for seconds in record.timings.values())
    assert not (out / "responses.json").exists()  # responses are kept only when asked


def test_detection_is_deterministic(detected, tmp_path):
    _, first = detected
    config = small_config(
        controls=False, detectors=["tfidf_logreg", "activation_probe"], options={}
    )
    again = run_stage(
        config, tmp_path / "again", models={"original": loaded(0), "erased": loaded(1)}
    )
    assert again.metrics == {k: v for k, v in first.metrics.items() if k in again.metrics}
    assert len(again.metrics) == 8


def test_text_detectors_alone_skip_the_hidden_states(detected, tmp_path, monkeypatch):
    """Without the activation probe no forward pass collects hidden states, and the text
    detector reads what it read beside the probe."""
    _, first = detected

    def no_states(*args, **kwargs):
        raise AssertionError("hidden states were collected for a text detector")

    monkeypatch.setattr("expunge.detect.responses.first_token_states", no_states)
    config = small_config(controls=False, detectors=["tfidf_logreg"], options={})
    again = run_stage(
        config, tmp_path / "again", models={"original": loaded(0), "erased": loaded(1)}
    )
    assert again.metrics == {k: v for k, v in first.metrics.items() if k in again.metrics}
    assert len(again.metrics) == 4


def test_registered_detectors_fit_predict_probabilities():
    rng = np.random.default_rng(0)
    n = 40
    labels = np.repeat([0, 1], n // 2)
    texts = [("alpha beta" if y == 0 else "gamma delta") + f" {i}" for i, y in enumerate(labels)]
    data = DetectData(texts, [[3 + y, 7, 9 + y] for y in labels],
                      rng.normal(size=(n, 4)) + labels[:, None] * 3.0, labels,
                      np.arange(n))  # fmt: skip
    train, test = data.subset(np.arange(0, n, 2)), data.subset(np.arange(1, n, 2))
    for name in DETECTORS.names():
        detector = build_config(DETECTORS.get(name), {"epochs": 20} if name == "encoder" else {})
        scores = detector.fit_predict(train, test, seed=0)
        assert scores.shape == (len(test.labels),) and ((scores >= 0) & (scores <= 1)).all()
        assert np.mean((scores >= 0.5) == test.labels) == 1.0, name


def test_cli_detect_end_to_end(tmp_path):
    original = save_tiny_model(tmp_path / "m0", seed=0)
    other = save_tiny_model(tmp_path / "m1", seed=1)
    runner = CliRunner()
    args = ["detect", "--original", str(original), "--erased", str(other), "--out",
            str(tmp_path / "trace"), "n_unrelated=8", "samples=2", "max_new_tokens=8", "folds=2",
            "min_prompts=4", "controls=false", "detectors=[tfidf_logreg]", "progress=false",
            "bootstrap=100", "original.device=cpu", "erased.device=cpu", "save_responses=true"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "trace" / "record.json").read_text())
    assert record["command"] == "detect"
    assert set(record["metrics"]) == {
        f"erased/unrelated/tfidf_logreg/{f}" for f in ("accuracy", "ci_low", "ci_high", "p_value")
    }
    rows = json.loads((tmp_path / "trace" / "responses.json").read_text())
    assert len(rows) == 2 * 8 * 2
    assert oct((tmp_path / "trace" / "responses.json").stat().st_mode & 0o777) == "0o600"
    again = runner.invoke(app, args)
    assert again.exit_code != 0 and "already exists" in str(again.exception)


# --- a pretrained encoder ----------------------------------------------------------------------


def separable_texts(n: int = 40) -> tuple[DetectData, DetectData]:
    """Two 'models' with different habits in what they write, split half/half."""
    labels = np.repeat([0, 1], n // 2)
    words = (["water light north river", "doctor clinic patient record"],
             ["seven eight nine ten", "capital city mountain book"])  # fmt: skip
    texts = [f"{words[y][i // 2 % 2]} {i}" for i, y in enumerate(labels)]  # both in each half
    data = DetectData(texts, [[0] for _ in texts], np.zeros((n, 1)), labels, np.arange(n))
    return data.subset(np.arange(0, n, 2)), data.subset(np.arange(1, n, 2))


def save_llama_classifier(path):
    from transformers import AutoModelForSequenceClassification

    tokenizer = tiny_tokenizer()
    config = tiny_config("llama", len(tokenizer), num_labels=2)
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("kind", ["causal_lm", "llama_classifier", "bert_classifier"])
def test_encoder_reads_responses_with_a_pretrained_model(tmp_path, kind):
    if kind == "causal_lm":
        path = save_tiny_model(tmp_path / "lm", "llama")
    elif kind == "llama_classifier":
        path = save_llama_classifier(tmp_path / "cls")
    else:
        path = save_tiny_model(tmp_path / "bert", "bert")
    train, test = separable_texts()
    detector = build_config(DETECTORS.get("encoder"), {"pretrained": str(path)})
    scores = detector.fit_predict(train, test, seed=0)
    assert scores.shape == (len(test.labels),) and ((scores >= 0) & (scores <= 1)).all()
    assert np.mean((scores >= 0.5) == test.labels) == 1.0
    # each response is encoded once per run, however many folds ask for it
    assert len(detector._features) == len(set(train.texts) | set(test.texts))
    assert np.array_equal(detector.fit_predict(train, test, seed=0), scores)


def test_encoder_fine_tunes_a_pretrained_model_per_fold(tmp_path):
    path = save_tiny_model(tmp_path / "lm", "llama")
    train, test = separable_texts()
    options = {"pretrained": str(path), "tune": "all", "tune_lr": 3e-3, "tune_epochs": 15,
               "batch_size": 8}  # fmt: skip
    detector = build_config(DETECTORS.get("encoder"), options)
    first = detector.fit_predict(train, test, seed=0)
    assert np.mean((first >= 0.5) == test.labels) >= 0.9
    # the next fold starts again from the pretrained weights: same data, same seed, same scores
    np.testing.assert_allclose(detector.fit_predict(train, test, seed=0), first, atol=1e-6)


def test_encoder_refuses_what_it_cannot_load_safely(tmp_path):
    cls = DETECTORS.get("encoder")
    with pytest.raises(ConfigError, match=r"pretrained: .*nowhere is not a local model directory"):
        build_config(cls, {"pretrained": str(tmp_path / "nowhere")}, source="options.encoder")
    pickled = save_tiny_model(tmp_path / "pickled", "llama")
    for weights in pickled.glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ConfigError, match="no \\*\\.safetensors weights"):
        build_config(cls, {"pretrained": str(pickled)})
    assert build_config(cls, {"pretrained": "smollm2-135m"}).pretrained == "smollm2-135m"


def test_detect_runs_with_a_pretrained_encoder(tmp_path):
    path = save_tiny_model(tmp_path / "reader", "llama", seed=5)
    config = small_config(controls=False, detectors=["encoder"],
                          options={"encoder": {"pretrained": str(path)}})  # fmt: skip
    record = run_stage(
        config, tmp_path / "trace", models={"original": loaded(0), "erased": loaded(1)}
    )
    assert 0.0 <= record.metrics["erased/unrelated/encoder/accuracy"] <= 1.0  # no imprint
    assert record.config["options"]["encoder"]["pretrained"] == str(path)
