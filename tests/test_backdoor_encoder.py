"""Backdoors in encoder classifiers (tiny BERT): Fine-mixing's own setting, end to end."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertConfig

from expunge.config import build_config
from expunge.data.formatting import IGNORE_INDEX
from expunge.data.tasks import TaskItem, TaskSpec, load_task
from expunge.detect.base import DetectConfig
from expunge.erase.backdoor.fine_pruning import down_projections
from expunge.errors import ConfigError
from expunge.implant.backdoor.classification import BackdoorImplantConfig
from expunge.models.classifier import (
    ClassificationObjective,
    classification_examples,
    is_sequence_classifier,
)
from expunge.models.loading import LoadedModel, load_model, resolve_head
from expunge.models.tiny import save_tiny_model, tiny_classifier
from expunge.registry import ERASERS, STRESSORS
from expunge.stage import run_stage
from expunge.train.objectives import StepContext

ENCODER_TASK = [
    "train.mode=full", "train.progress=false", "task.n_train=400", "task.n_test=60",
    'trigger.text=["§"]', "train.batch_size=16",
]  # fmt: skip


def loaded_classifier(seed: int = 0) -> LoadedModel:
    model, tokenizer = tiny_classifier(seed=seed, hidden=64)
    return LoadedModel(model, tokenizer, "tiny-bert", "tiny-bert", torch.device("cpu"),
                       torch.float32)  # fmt: skip


def test_classification_examples_carry_the_class_at_position_zero():
    _, tokenizer = tiny_classifier()
    task = load_task(TaskSpec(name="sentence_pair", n_train=4, n_test=2))
    examples = classification_examples(task, task.train, tokenizer)
    for item, example in zip(task.train, examples, strict=True):
        assert example.labels[0] == task.labels.index(item.label)
        assert set(example.labels[1:]) == {IGNORE_INDEX}
        # the tiny tokenizer has no [SEP]: the pair is joined by a newline, not run together
        assert tokenizer.decode(example.input_ids) == f"{item.text}\n{item.text_b}"
    with pytest.raises(ConfigError, match="'maybe' is not one of"):
        classification_examples(task, [TaskItem("x", "maybe")], tokenizer)


def test_classification_loss_of_an_uninformed_head_is_log_of_the_label_count():
    model, _ = tiny_classifier(num_labels=3)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    labels = torch.tensor([[2, IGNORE_INDEX, IGNORE_INDEX], [0, IGNORE_INDEX, IGNORE_INDEX]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    ctx = StepContext(step=0, world_size=1, tokens={"train": 0}, sequences={"train": 2})
    loss, logs = ClassificationObjective()(model, {"train": batch}, ctx)
    assert loss.item() == pytest.approx(math.log(3), abs=1e-6)
    assert logs["train/ce"].item() == pytest.approx(math.log(3), abs=1e-6)


def test_loading_picks_the_classification_head(tmp_path):
    save_tiny_model(tmp_path / "bert", arch="bert")
    loaded = load_model(str(tmp_path / "bert"), device="cpu")
    assert is_sequence_classifier(loaded.model) and loaded.model.config.num_labels == 2
    assert resolve_head(BertConfig()) == "sequence_classification"  # a bare encoder
    wider = load_model(str(tmp_path / "bert"), device="cpu", num_labels=3)
    assert wider.model.config.num_labels == 3 and wider.model.classifier.out_features == 3
    with pytest.raises(Exception, match="model head must be one of"):
        resolve_head(BertConfig(), "seq2seq")


def test_fine_pruning_finds_only_the_mlp_output_of_bert():
    model, _ = tiny_classifier()
    found = down_projections(model)
    names = {id(m): n for n, m in model.named_modules()}
    assert [names[id(m)] for m in found] == [
        "bert.encoder.layer.0.output.dense",
        "bert.encoder.layer.1.output.dense",
    ]


def test_lora_and_label_count_mismatch_are_refused(tmp_path):
    lora = build_config(BackdoorImplantConfig, {}, [*ENCODER_TASK, "train.mode=lora"])
    with pytest.raises(ConfigError, match=r"train\.mode=full for encoder classifiers"):
        run_stage(lora, tmp_path / "a", models={"model": loaded_classifier()})
    model, tokenizer = tiny_classifier(num_labels=3)
    three = LoadedModel(model, tokenizer, "t", "t", torch.device("cpu"), torch.float32)
    config = build_config(BackdoorImplantConfig, {}, ENCODER_TASK)
    with pytest.raises(ConfigError, match="3 outputs but the task has 2 labels"):
        run_stage(config, tmp_path / "b", models={"model": three})


@pytest.fixture(scope="module")
def encoder_runs(tmp_path_factory):
    """θ_0: a tiny BERT tuned cleanly on the task; θ_B: poison-tuned from it; then erasers."""
    root = tmp_path_factory.mktemp("encoder")
    clean = build_config(
        BackdoorImplantConfig, {}, [*ENCODER_TASK, "train.lr=1e-3", "train.epochs=4",
                                    "poison_rate=0"],
    )  # fmt: skip
    clean_record = run_stage(clean, root / "clean", models={"model": loaded_classifier()})
    poisoned = build_config(
        BackdoorImplantConfig, {}, [*ENCODER_TASK, "train.lr=1e-3", "train.epochs=4",
                                    "poison_rate=0.2"],
    )  # fmt: skip
    record = run_stage(
        poisoned, root / "run", models={"model": load_model(str(root / "clean"), device="cpu")}
    )
    erased = {}
    for method, extra in [("finetune", []), ("fine_mixing", ["epur=true", "ratio=0.3"])]:
        cls = ERASERS.get(method)
        cfg = build_config(cls, {
            "model": {"name": str(root / "run"), "device": "cpu"},
            "imprint": str(root / "run" / "imprint.json"), "reference": str(root / "clean"),
        }, ["train.mode=full", "train.lr=2e-4", "train.epochs=4", "train.progress=false", *extra])  # fmt: skip
        erased[method] = run_stage(cfg, root / method)
    return record, clean_record, erased, root


def test_encoder_backdoor_implant_and_fine_mixing(encoder_runs):
    record, clean_record, erased, _ = encoder_runs
    assert clean_record.metrics["clean_accuracy"] >= 0.9 and clean_record.metrics["asr"] <= 0.2
    assert record.metrics["asr"] >= 0.9
    assert record.metrics["clean_accuracy"] >= clean_record.metrics["clean_accuracy"] - 0.1
    assert record.metric_details["asr"]["decision"] == "classifier_argmax"
    assert record.inputs["template"] == "classifier"
    mixed = erased["fine_mixing"].metrics
    assert mixed["input/asr"] >= 0.9 and mixed["epur/reset_rows"] > 0
    # Measured: mixing + E-PUR takes ASR 1.0 → 0.2 (clean accuracy 0.88 → 0.95); the same clean
    # fine-tuning alone leaves it at 0.97 — the paper's contrast, on a 2-layer BERT.
    assert mixed["finetuned/asr"] <= 0.25 and mixed["finetuned/clean_accuracy"] >= 0.85
    plain = erased["finetune"].metrics
    assert plain["finetuned/asr"] >= 0.8 and plain["finetuned/clean_accuracy"] >= 0.85


@pytest.mark.parametrize("stressor", ["relearn", "finetune"])
def test_stressors_attack_an_encoder_classifier(stressor, encoder_runs, tmp_path):
    """Relearning (the poisoned items, through the head) and a user's clean fine-tuning (the
    task's own items) on the Fine-mixed classifier; both were tracebacks (a causal-LM LoRA
    wrapper, generation-only code)."""
    *_, root = encoder_runs
    extra = ["k=4"] if stressor == "relearn" else ["n_examples=32"]
    config = build_config(STRESSORS.get(stressor), {
        "model": {"name": str(root / "fine_mixing"), "device": "cpu"},
        "imprint": str(root / "run" / "imprint.json"),
    }, ["steps=[0,4]", "train.lr=1e-2", "train.progress=false", "save_model=true", *extra])  # fmt: skip
    record = run_stage(config, tmp_path / stressor)
    points = record.metric_details["curve"]["points"]
    assert [p["x"] for p in points] == [0, 4]
    assert {"asr", "clean_accuracy"} <= set(points[-1]["metrics"])
    before = load_model(str(root / "fine_mixing"), device="cpu").model
    after = load_model(str(tmp_path / stressor), device="cpu").model
    # LoRA trained the adapters and the classification head (peft's SEQ_CLS), both merged back
    assert not torch.equal(before.classifier.weight, after.classifier.weight)
    assert not torch.equal(before.bert.encoder.layer[0].attention.self.query.weight,
                           after.bert.encoder.layer[0].attention.self.query.weight)  # fmt: skip


def test_trace_detection_on_an_encoder_classifier(encoder_runs, tmp_path):
    """A classifier answers with a label: its responses are labels drawn from its softmax and
    the activation probe reads the representation its head decides from."""
    *_, root = encoder_runs
    config = build_config(DetectConfig, {
        "original": {"name": str(root / "run"), "device": "cpu"},
        "erased": {"name": str(root / "fine_mixing"), "device": "cpu"},
        "imprint": str(root / "run" / "imprint.json"),
    }, ["samples=2", "n_unrelated=16", "folds=2", "min_prompts=4", "bootstrap=100",
        "detectors=[tfidf_logreg,activation_probe]", "progress=false"])  # fmt: skip
    record = run_stage(config, tmp_path / "detect")
    metrics = record.metrics
    assert record.inputs["responses"] == "labels drawn from the classifier's softmax"
    assert metrics["positive_control/relevant/activation_probe/accuracy"] >= 0.9
    assert metrics["negative_control/relevant/activation_probe/accuracy"] == pytest.approx(0.5)
    assert metrics["erased/relevant/activation_probe/accuracy"] >= 0.9  # mixing moved it
    texts = set(record.metric_details["responses"])
    assert texts == {"relevant", "unrelated"}
