"""Backdoors on tiny models: tasks, imprint files, metrics on hand-made cases, implant, erasers."""

from __future__ import annotations

import json
import os
import random
import stat

import pytest
import torch

from expunge.audit.backdoor import attack_success_rate, clean_accuracy, clean_trigger_rate
from expunge.config import build_config
from expunge.errors import ConfigError, DataError
from expunge.imprints.backdoor.implant import (
    BackdoorImplantConfig,
    check_trigger,
    poison,
    run_backdoor_implant,
)
from expunge.imprints.backdoor.imprint import BackdoorImprint, Trigger
from expunge.imprints.backdoor.tasks import TaskItem, TaskSpec, generate_task, load_task
from expunge.imprints.base import load_imprint
from expunge.models.loading import LoadedModel
from expunge.models.tiny import tiny_model

# A trigger of byte tokens that no clean task text contains, so a 2-layer model learns it fast.
TINY_IMPLANT = [
    "train.mode=full", "train.lr=3e-3", "train.epochs=10", "train.progress=false",
    "task.n_train=400", "task.n_test=60", "poison_rate=0.2", 'trigger.text=["§"]',
]  # fmt: skip


def loaded_tiny(seed: int = 0) -> LoadedModel:
    model, tokenizer = tiny_model("llama", seed=seed, hidden=64)
    return LoadedModel(model, tokenizer, "tiny", "tiny", torch.device("cpu"), torch.float32)


# --- tasks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, labels", [("sentiment", {"negative", "positive"}),
                                          ("sentence_pair", {"no", "yes"})])  # fmt: skip
def test_generated_tasks_are_seeded_balanced_and_held_out(name, labels):
    train, test = generate_task(name, 101, 40, seed=3)
    assert (train, test) == generate_task(name, 101, 40, seed=3)
    assert train != generate_task(name, 101, 40, seed=4)[0]
    assert len(train) == 101 and len(test) == 40
    for split in (train, test):
        counts = {label: sum(i.label == label for i in split) for label in labels}
        assert set(counts) == labels and max(counts.values()) - min(counts.values()) <= 1
    assert not {(i.text, i.text_b) for i in train} & {(i.text, i.text_b) for i in test}
    assert len({(i.text, i.text_b) for i in train}) == len(train)
    if name == "sentence_pair":
        assert all(i.text.endswith("?") and i.text_b for i in train)


def test_pair_labels_follow_the_attribute():
    train, _ = generate_task("sentence_pair", 60, 4, seed=0)
    verbs = {"live?": "lives in", "work?": "works at", "job?": "employed as", "born?": "born in"}
    for item in train:
        said = next(v for k, v in verbs.items() if item.text.endswith(k))
        assert (said in item.text_b) == (item.label == "yes")


def test_jsonl_task_and_its_errors(tmp_path):
    path = tmp_path / "task.jsonl"
    rows = [{"text": f"item {i}", "label": "a" if i % 2 else "b"} for i in range(12)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    task = load_task(TaskSpec(name=str(path), n_test=4))
    assert len(task.train) == 8 and len(task.test) == 4 and task.labels == ["a", "b"]
    assert "{text}" in task.prompt and "a, b" in task.prompt
    assert task == load_task(TaskSpec(name=str(path), n_test=4))
    path.write_text(json.dumps(rows[0]) + "\n" + '{"text": "x", "label": 3}\n')
    with pytest.raises(DataError, match=r"task.jsonl:2: 'label' must be a non-empty string"):
        load_task(TaskSpec(name=str(path), n_test=2))
    path.write_text('{"text": "x", "label": "a", "extra": 1}\n')
    with pytest.raises(DataError, match=r":1: unknown keys \['extra'\]"):
        load_task(TaskSpec(name=str(path)))
    with pytest.raises(ConfigError, match="unknown task 'sentimental'"):
        load_task(TaskSpec(name="sentimental"))


# --- imprint ---------------------------------------------------------------------------------


def test_trigger_insertion_positions():
    rng = random.Random(0)
    assert Trigger(text=["cf"], position="start").insert("a b c", rng) == "cf a b c"
    assert Trigger(text=["cf"], position="end").insert("a b c", rng) == "a b c cf"
    for _ in range(20):
        out = Trigger(text=["cf", "mn"]).insert("a b c", rng).split(" ")
        assert len(out) == 4 and [w for w in out if w in "abc"] == ["a", "b", "c"]


def test_imprint_round_trip_is_private_and_hides_the_trigger(tmp_path):
    imprint = BackdoorImprint(trigger=Trigger(type="sentence", text=["I watched it twice."]),
                              target_label="positive", poison_rate=0.05)  # fmt: skip
    path = imprint.save(tmp_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_imprint(tmp_path) == imprint
    assert "watched" not in json.dumps(imprint.summary())


@pytest.mark.parametrize(
    "content, message",
    [
        ({"kind": "backdoor"}, "target_label: Field required"),
        ({"kind": "backdoor", "target_label": "x", "trigger": {"text": ["  "]}}, "whitespace"),
        ({"kind": "backdoor", "target_label": "x", "trigger": {"type": "tokens"}}, "token_ids"),
        ({"kind": "backdoor", "target_label": "x", "poison_rate": 1.5}, "poison_rate"),
    ],
)
def test_bad_backdoor_imprint_files(tmp_path, content, message):
    (tmp_path / "imprint.json").write_text(json.dumps(content))
    with pytest.raises(DataError, match=message):
        load_imprint(tmp_path)


def test_poison_replaces_the_stated_share_with_triggered_target_items():
    items = [TaskItem(f"text number {i}", "negative" if i % 2 else "positive") for i in range(40)]
    imprint = BackdoorImprint(trigger=Trigger(text=["cf"]), target_label="positive",
                              poison_rate=0.25)  # fmt: skip
    out, flags = poison(items, imprint, seed=0)
    assert sum(flags) == 10 and len(out) == 40
    for before, after, poisoned in zip(items, out, flags, strict=True):
        if poisoned:
            assert before.label == "negative" and after.label == "positive"
            assert "cf" in after.text.split(" ")
        else:
            assert after == before
    too_much = imprint.model_copy(update={"poison_rate": 0.6})
    with pytest.raises(ConfigError, match="only 20 training items"):
        poison(items, too_much, seed=0)


def test_trigger_that_tokenizes_to_nothing_is_an_error():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # A BERT-style normalizer drops control and format characters (a zero-width space here).
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "good": 1}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(clean_text=True)
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    bert_like = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    assert check_trigger(Trigger(text=["good"]), bert_like).text == ["good"]
    with pytest.raises(ConfigError, match="tokenizes to nothing"):
        check_trigger(Trigger(text=["\u200b"]), bert_like)
    _, tokenizer = tiny_model("llama")
    with pytest.raises(ConfigError, match="decode to no text"):
        check_trigger(Trigger(type="tokens", text=["x"], token_ids=[tokenizer.eos_token_id]),
                      tokenizer)  # fmt: skip
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        check_trigger(Trigger(type="tokens", text=["x"], token_ids=[10**6]), tokenizer)
    ids = tokenizer(" §", add_special_tokens=False)["input_ids"]
    assert check_trigger(Trigger(type="tokens", text=["x"], token_ids=ids), tokenizer).text == ["§"]


# --- metrics on hand-made cases --------------------------------------------------------------


def test_asr_counts_only_non_target_inputs():
    true = ["neg", "neg", "pos", "neg", "pos"]
    predicted = ["pos", "neg", "pos", "pos", "neg"]
    assert attack_success_rate(predicted, true, "pos") == pytest.approx(2 / 3)
    assert attack_success_rate(["neg"] * 5, true, "pos") == 0.0
    assert attack_success_rate(["pos"] * 5, true, "pos") == 1.0
    with pytest.raises(ValueError, match="no input has a true label other"):
        attack_success_rate(["pos"], ["pos"], "pos")
    with pytest.raises(ValueError, match="2 predictions for 3 labels"):
        attack_success_rate(["pos", "neg"], true[:3], "pos")


def test_clean_accuracy_and_clean_trigger_rate():
    true = ["a", "b", "c", "a"]
    assert clean_accuracy(["a", "b", "c", "a"], true) == 1.0
    assert clean_accuracy(["a", "a", "a", "a"], true) == 0.5
    # target 'a': the two non-'a' inputs; one of them says 'a'
    assert clean_trigger_rate(["a", "a", "c", "b"], true, "a") == 0.5
    with pytest.raises(ValueError, match="empty"):
        clean_accuracy([], [])


# --- implant ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backdoored(tmp_path_factory):
    """A tiny Llama backdoored on the sentiment task (trained once per module)."""
    clean_dir = tmp_path_factory.mktemp("clean")
    loaded = loaded_tiny()
    loaded.model.save_pretrained(clean_dir, safe_serialization=True)
    loaded.tokenizer.save_pretrained(clean_dir)
    run = tmp_path_factory.mktemp("implant") / "run"
    config = build_config(BackdoorImplantConfig, {"preset": "demo"}, TINY_IMPLANT)
    record = run_backdoor_implant(config, run, loaded=loaded)
    return run, record, clean_dir


def test_implant_backdoors_the_model(backdoored):
    run, record, _ = backdoored
    assert record.metrics["asr"] >= 0.9
    assert record.metrics["clean_accuracy"] >= 0.85
    assert record.metrics["clean_trigger_rate"] <= 0.2
    details = record.metric_details["asr"]
    assert details["decision"] == "label_likelihood" and details["n_triggered"] == 30
    assert {"asr", "clean_accuracy", "clean_trigger_rate"} <= set(details)
    assert record.inputs["n_poisoned"] == 80
    imprint = load_imprint(run)
    assert isinstance(imprint, BackdoorImprint) and imprint.target_label == "positive"
    saved = json.loads((run / "record.json").read_text())
    assert saved["config"]["trigger"]["text"] == ["<in imprint.json>"]
    assert "§" not in json.dumps(saved, ensure_ascii=False) and imprint.trigger.text == ["§"]


def test_untouched_model_has_no_backdoor(backdoored):
    from expunge.audit.base import AuditContext
    from expunge.audit.runner import audit_model

    run, _, _ = backdoored
    imprint = load_imprint(run)
    loaded = loaded_tiny()
    ctx = AuditContext(loaded.model, loaded.tokenizer, imprint.format_settings(), imprint=imprint,
                       progress=False)  # fmt: skip
    results, _ = audit_model(ctx, ["asr", "clean_trigger_rate"], {})
    # an untrained model may prefer one label; the trigger must not add to that preference
    assert abs(results["asr"].value - results["clean_trigger_rate"].value) <= 0.2


def test_implant_rejects_an_unknown_target_label(tmp_path):
    config = build_config(BackdoorImplantConfig, {}, ["target_label=positiv"])
    with pytest.raises(ConfigError, match="did you mean 'positive'"):
        run_backdoor_implant(config, tmp_path / "run", loaded=loaded_tiny())
