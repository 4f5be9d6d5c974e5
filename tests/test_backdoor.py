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
from expunge.data.tasks import TaskItem, TaskSpec, generate_task, load_task
from expunge.erase.backdoor.clean_tuning import load_reference
from expunge.erase.backdoor.fine_pruning import down_projections, prune_dormant
from expunge.erase.ops.embeddings import epur_scores, purify_embeddings
from expunge.erase.ops.mixing import keep_mask, mix_weights
from expunge.errors import ConfigError, DataError
from expunge.implant.backdoor.classification import (
    BackdoorImplantConfig,
    check_trigger,
    poison,
)
from expunge.imprints.backdoor import BackdoorImprint, Trigger
from expunge.imprints.base import load_imprint
from expunge.imprints.fingerprint import FingerprintImprint, KeyPair
from expunge.models.loading import LoadedModel, check_compatible, load_model
from expunge.models.tiny import tiny_model
from expunge.registry import ERASERS
from expunge.stage import run_stage

# A trigger of byte tokens that no clean task text contains, so a 2-layer model learns it fast.
TINY_TASK = [
    "train.mode=full", "train.progress=false", "task.n_train=400", "task.n_test=60",
    'trigger.text=["§"]',
]  # fmt: skip
# θ_0 stands in for a pre-trained model that already does the task (a random tiny model knows
# nothing, so mixing with it would only destroy); θ_B is poison-tuned from θ_0.
TINY_CLEAN = [*TINY_TASK, "train.lr=3e-3", "train.epochs=6", "poison_rate=0"]
TINY_IMPLANT = [*TINY_TASK, "train.lr=1e-3", "train.epochs=5", "poison_rate=0.2"]


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
    """θ_0: a tiny Llama tuned cleanly on the sentiment task; θ_B: θ_0 poison-tuned (once)."""
    root = tmp_path_factory.mktemp("backdoor")
    clean = build_config(BackdoorImplantConfig, {}, TINY_CLEAN)
    clean_record = run_stage(clean, root / "clean", models={"model": loaded_tiny()})
    config = build_config(BackdoorImplantConfig, {}, TINY_IMPLANT)
    record = run_stage(
        config, root / "run", models={"model": load_model(str(root / "clean"), device="cpu")}
    )
    return root / "run", record, root / "clean", clean_record


def test_implant_backdoors_the_model(backdoored):
    run, record, _, clean_record = backdoored
    assert record.metrics["asr"] >= 0.9 and clean_record.metrics["asr"] <= 0.1
    assert record.metrics["clean_accuracy"] >= clean_record.metrics["clean_accuracy"] - 0.1
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

    run, _, _, _ = backdoored
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
        run_stage(config, tmp_path / "run", models={"model": loaded_tiny()})


# --- erasers: weight-space pieces --------------------------------------------------------------


def test_keep_mask_keeps_the_stated_fraction_exactly():
    delta = torch.randn(7, 13, generator=torch.Generator().manual_seed(0))
    for ratio in (0.0, 0.1, 0.5, 0.77, 1.0):
        for selection in ("random", "magnitude"):
            mask = keep_mask(delta, ratio, selection, torch.Generator().manual_seed(1))
            assert mask.shape == delta.shape and int(mask.sum()) == round(ratio * delta.numel())
    mask = keep_mask(delta, 0.3, "magnitude", torch.Generator())
    assert delta[mask].abs().min() >= delta[~mask].abs().max()
    first = keep_mask(delta, 0.5, "random", torch.Generator().manual_seed(3))
    assert torch.equal(first, keep_mask(delta, 0.5, "random", torch.Generator().manual_seed(3)))
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match=r"reserve ratio must be in \[0, 1\]"):
            keep_mask(delta, bad, "random", torch.Generator())


def test_fisher_selection_keeps_the_largest_loss_cost_and_is_magnitude_under_a_flat_fisher():
    delta = torch.randn(7, 13, generator=torch.Generator().manual_seed(0))
    flat = keep_mask(delta, 0.3, "fisher", torch.Generator(), fisher=torch.full_like(delta, 2.5))
    assert torch.equal(flat, keep_mask(delta, 0.3, "magnitude", torch.Generator()))
    fisher = torch.rand(delta.shape, generator=torch.Generator().manual_seed(4))
    mask = keep_mask(delta, 0.3, "fisher", torch.Generator(), fisher=fisher)
    cost = fisher * delta.square()
    assert int(mask.sum()) == round(0.3 * delta.numel())
    assert cost[mask].min() >= cost[~mask].max()
    assert not torch.equal(mask, flat)  # the Fisher, not the magnitude, decided
    with pytest.raises(ConfigError, match="selection=fisher needs the Fisher"):
        keep_mask(delta, 0.3, "fisher", torch.Generator())


def test_fisher_is_the_mean_of_each_examples_squared_gradient():
    from expunge.data.collator import collate
    from expunge.data.examples import Example
    from expunge.data.formatting import FormatSettings, tokenize_examples
    from expunge.erase.ops.fisher import example_loss, fisher_diagonal

    model, tokenizer = tiny_model("llama", seed=3)
    model = model.double()
    for param in model.parameters():
        param.requires_grad_(False)  # as a frozen loaded model may come
    examples = tokenize_examples(
        [Example(prompt="ab", response="cde"), Example(prompt="xyz", response="q")],
        tokenizer, FormatSettings(template="raw"))  # fmt: skip
    fisher = fisher_diagonal(model, examples, tokenizer.pad_token_id)
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    squares, sums = [], []
    for example in examples:
        model.zero_grad()
        with torch.enable_grad():
            for p in model.parameters():
                p.requires_grad_(True)
            example_loss(model, collate([example], tokenizer.pad_token_id)).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        squares.append({n: g.square() for n, g in grads.items()})
        sums.append(grads)
    for name, value in fisher.items():
        expected = (squares[0][name] + squares[1][name]) / 2
        torch.testing.assert_close(value, expected.float())
    name = "model.layers.0.mlp.down_proj.weight"  # the square of the mean gradient is not F
    batch_square = ((sums[0][name] + sums[1][name]) / 2).square().float()
    assert not torch.allclose(fisher[name], batch_square)
    with pytest.raises(DataError, match="at least one labelled example"):
        fisher_diagonal(model, [], tokenizer.pad_token_id)


def test_fisher_of_an_encoder_classifier_reads_its_heads_cross_entropy():
    from expunge.data.formatting import IGNORE_INDEX, TokenizedExample
    from expunge.erase.ops.fisher import fisher_diagonal
    from expunge.models.tiny import tiny_classifier

    model, tokenizer = tiny_classifier(seed=0)
    ids = tokenizer("a short review", add_special_tokens=True)["input_ids"]
    example = TokenizedExample(ids, [1] + [IGNORE_INDEX] * (len(ids) - 1), len(ids))
    fisher = fisher_diagonal(model, [example], tokenizer.pad_token_id)
    model.eval()
    logits = model(input_ids=torch.tensor([ids])).logits
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([1]))
    head = model.classifier.weight
    (grad,) = torch.autograd.grad(loss, [head])
    name = next(n for n, p in model.named_parameters() if p is head)
    torch.testing.assert_close(fisher[name], grad.square())
    assert float(fisher[name].sum()) > 0.0


def _pair_of_models():
    backdoored, _ = tiny_model("llama", seed=1)
    clean, _ = tiny_model("llama", seed=2)
    with torch.no_grad():  # every coordinate differs (norm weights start equal)
        for param in clean.parameters():
            param.add_(torch.rand(param.shape, generator=torch.Generator().manual_seed(5)) + 0.1)
    return backdoored, clean, {n: p.detach().clone() for n, p in backdoored.named_parameters()}


def test_mixing_extremes_return_either_model_bit_for_bit():
    for ratio, expect_backdoored in ((1.0, True), (0.0, False)):
        model, clean, before = _pair_of_models()
        mix_weights(model, clean, ratio, "random", "all", seed=0)
        source = before if expect_backdoored else dict(clean.named_parameters())
        for name, param in model.named_parameters():
            assert torch.equal(param, source[name]), name


@pytest.mark.parametrize("selection", ["random", "magnitude", "fisher"])
def test_mixing_keeps_the_share_and_only_either_value(selection):
    model, clean, before = _pair_of_models()
    fisher = None
    if selection == "fisher":
        draw = torch.Generator().manual_seed(6)
        fisher = {n: torch.rand(p.shape, generator=draw) for n, p in model.named_parameters()}
    kept = mix_weights(model, clean, 0.3, selection, "non_embedding", seed=0, fisher=fisher)
    reference = dict(clean.named_parameters())
    assert "model.embed_tokens.weight" not in kept  # scope: embeddings keep θ_B
    assert torch.equal(model.model.embed_tokens.weight, before["model.embed_tokens.weight"])
    for name, share in kept.items():
        param = model.get_parameter(name)
        from_b = param == before[name]
        assert torch.all(from_b | (param == reference[name]))
        assert abs(float(from_b.float().mean()) - 0.3) < 0.5 / param.numel() + 1e-6
        assert share == pytest.approx(round(0.3 * param.numel()) / param.numel())


def test_reference_of_another_architecture_or_vocabulary_is_named():
    model, _ = tiny_model("llama")
    wider, _ = tiny_model("llama", hidden=64)
    with pytest.raises(
        ConfigError,
        match=r"model.embed_tokens.weight has shape \(384, 64\), the model's has \(384, 32\)",
    ):
        check_compatible(model, wider, "wide")  # fmt: skip
    gpt2, _ = tiny_model("gpt2")
    with pytest.raises(
        ConfigError, match=r"reference gpt \(gpt2, .*architecture of the model \(llama"
    ):
        check_compatible(model, gpt2, "gpt")
    from transformers import AutoModelForCausalLM

    bigger_vocab = AutoModelForCausalLM.from_config(
        model.config.__class__(**{**model.config.to_dict(), "vocab_size": 512})
    )
    with pytest.raises(ConfigError, match=r"\(512, 32\), the model's has \(384, 32\)"):
        check_compatible(model, bigger_vocab, "v512")


def test_epur_scores_on_hand_made_rows():
    clean = torch.zeros(4, 2)
    backdoored = torch.tensor([[3.0, 4.0], [3.0, 4.0], [0.0, 1.0], [0.0, 0.0]])
    counts = torch.tensor([0.0, 1000.0, 0.0, 5.0])
    scores = epur_scores(backdoored, clean, counts, min_count=20)
    import math

    expected = [5 / math.log(20), 5 / math.log(1000), 1 / math.log(20), 0.0]
    assert scores.tolist() == pytest.approx(expected)
    with pytest.raises(ConfigError, match="min_count must be > 1"):
        epur_scores(backdoored, clean, counts, min_count=1)


def test_fine_pruning_prunes_the_least_active_neurons():
    linear = torch.nn.Linear(6, 3)
    activity = [torch.tensor([0.5, 0.01, 2.0, 0.0, 1.0, 0.3])]
    keep = prune_dormant([linear], activity, ratio=0.5)[0]
    assert keep.tolist() == [True, False, True, False, True, False]
    assert torch.all(linear.weight[:, ~keep] == 0) and torch.all(linear.weight[:, keep] != 0)
    with pytest.raises(ConfigError, match="ratio must be in"):
        prune_dormant([linear], activity, ratio=1.0)


@pytest.mark.parametrize(
    "method, overrides, message",
    [
        ("fine_mixing", ["ratio=1.5"], "ratio: Input should be less than or equal to 1"),
        ("fine_mixing", ["ratio=-0.1"], "ratio: Input should be greater than or equal to 0"),
        (
            "fine_mixing",
            ["selection=top"],
            "selection: Input should be 'random', 'magnitude' or 'fisher'",
        ),
    ],
)
def test_bad_eraser_settings(method, overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config(ERASERS.get(method), {}, overrides)


def test_mixing_without_reference_or_task_is_an_error(tmp_path):
    config = build_config(ERASERS.get("fine_mixing"), {}, ["task.name=sentiment"])
    with pytest.raises(ConfigError, match="needs the clean pre-trained checkpoint"):
        config.validate_inputs()
    config = build_config(ERASERS.get("finetune"), {}, [])
    with pytest.raises(ConfigError, match="no task for the clean set"):
        config.validate_inputs()


def test_an_instruction_models_imprint_gives_an_instruction_clean_set(tmp_path):
    """Only a classification backdoor names a task: with any other imprint (a fingerprint here)
    the clean set is the model's own answers, distilled after the mix; with none, a task is
    still asked for."""
    FingerprintImprint(pairs=[KeyPair(key="k1", response="r1")]).save(tmp_path)
    data = {"imprint": str(tmp_path), "reference": "base"}
    config = build_config(ERASERS.get("fine_mixing"), data, [])
    config.validate_inputs()
    assert config.instruction_clean_set() and config.resolved_clean_objective() == "kl"
    assert not build_config(
        ERASERS.get("fine_mixing"), data, ["task.name=sst2"]
    ).instruction_clean_set()
    with pytest.raises(ConfigError, match="no task for the clean set"):
        build_config(ERASERS.get("fine_mixing"), {"reference": "base"}, []).validate_inputs()


# --- erasers on the backdoored tiny model ------------------------------------------------------

TINY_ERASE = ["train.mode=full", "train.lr=1e-3", "train.epochs=5", "train.progress=false"]


def test_epur_flags_the_planted_trigger_tokens(backdoored):
    run, _, clean_dir, _ = backdoored
    bd = load_model(str(run), device="cpu")
    reference = load_reference(str(clean_dir), bd)
    config = build_config(ERASERS.get("epur"), {}, [f"imprint={run}"])  # 40 clean items
    flagged = purify_embeddings(bd.model, reference, config.clean_set(bd), top_k=2)
    trigger_ids = bd.tokenizer(" §", add_special_tokens=False)["input_ids"]  # 'Ġ', 'Â', '§'
    assert set(flagged) == set(trigger_ids[1:])
    embeddings = bd.model.get_input_embeddings().weight
    assert torch.equal(embeddings[flagged], reference.get_input_embeddings().weight[flagged])


def test_reference_of_another_model_fails_before_erasing(backdoored, tmp_path):
    run, _, _, _ = backdoored
    other = tmp_path / "gpt2"
    model, tokenizer = tiny_model("gpt2")
    model.save_pretrained(other)
    tokenizer.save_pretrained(other)
    config = build_config(ERASERS.get("fine_mixing"), {},
                          [f"model.name={run}", f"imprint={run}", f"reference={other}", *TINY_ERASE])  # fmt: skip
    with pytest.raises(ConfigError, match="does not have the architecture"):
        run_stage(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def erased(backdoored, tmp_path_factory):
    """Each backdoor eraser run once on θ_B with the same 40 clean items."""
    run, _, clean_dir, _ = backdoored
    extra = {
        "finetune": [], "fine_pruning": [],
        "fine_mixing": [f"reference={clean_dir}", "ratio=0.5", "epur=true", "epur_top_k=2"],
    }  # fmt: skip
    out = {}
    for method, settings in extra.items():
        config = build_config(ERASERS.get(method), {},
                              [f"model.name={run}", f"imprint={run}", *TINY_ERASE, *settings])  # fmt: skip
        path = tmp_path_factory.mktemp(method) / "out"
        out[method] = (path, run_stage(config, path))
    return out


@pytest.mark.parametrize("method", ["finetune", "fine_pruning", "fine_mixing"])
def test_erasers_run_and_audit_every_stage(erased, method):
    path, record = erased[method]
    stages = {"finetune": [], "fine_pruning": ["pruned"], "fine_mixing": ["epur", "mixed"]}
    for stage in ["input", *stages[method], "finetuned"]:
        for metric in ("asr", "clean_accuracy", "clean_trigger_rate"):
            assert f"{stage}/{metric}" in record.metrics
    assert record.metrics["input/asr"] >= 0.9
    assert record.inputs["n_clean"] == 40  # 10% of the task's 400 training items
    erased_model = load_model(str(path), device="cpu").model
    if method == "fine_pruning":
        for module in down_projections(erased_model):
            dead = (module.weight == 0).all(dim=0)
            assert int(dead.sum()) == round(0.3 * module.weight.shape[1])
    if method == "fine_mixing":
        assert record.metrics["mix/kept_share"] == pytest.approx(0.5, abs=0.01)
        assert record.metrics["epur/reset_rows"] == 2


def test_fine_mixing_removes_the_backdoor_where_fine_tuning_does_not(erased):
    mixed = erased["fine_mixing"][1].metrics
    tuned = erased["finetune"][1].metrics
    assert mixed["finetuned/asr"] <= 0.2
    assert mixed["finetuned/clean_accuracy"] >= mixed["input/clean_accuracy"] - 0.1
    assert tuned["finetuned/asr"] >= mixed["finetuned/asr"] + 0.3  # the paper's comparison


# --- command line ----------------------------------------------------------------------------


def test_cli_implant_then_erase_and_bad_inputs(tmp_path, capsys):
    from expunge.models.tiny import save_tiny_model
    from helpers import run_cli

    def cli(*args: str) -> tuple[int, str]:
        code, _, err = run_cli(list(args), capsys)
        return code, err

    base = save_tiny_model(tmp_path / "base", "llama")
    run = tmp_path / "bd"
    code, err = cli("implant", "backdoor", "--model", str(base), "--task", "sentence_pair",
                    "--out", str(run), "task.n_train=40", "task.n_test=10", "train.max_steps=2",
                    "train.mode=full", "train.progress=false")  # fmt: skip
    assert code == 0, err
    record = json.loads((run / "record.json").read_text())
    assert record["inputs"]["n_poisoned"] == 4 and "asr" in record["metrics"]
    assert load_imprint(run).target_label == "yes"
    erase = ["erase", "fine_mixing", "--model", str(run), "--imprint", str(run)]
    common = ["train.max_steps=1", "train.mode=full", "train.progress=false"]
    code, err = cli(*erase, f"reference={base}", "--out", str(tmp_path / "mix"), *common)
    assert code == 0, err
    assert json.loads((tmp_path / "mix" / "record.json").read_text())["metrics"]["mix/kept_share"]
    code, err = cli(*erase, f"reference={base}", "--out", str(tmp_path / "bad"), "ratio=1.2",
                    *common)  # fmt: skip
    assert code == 2 and "ratio: Input should be less than or equal to 1" in err
    other = save_tiny_model(tmp_path / "qwen", "qwen2")
    code, err = cli(*erase, f"reference={other}", "--out", str(tmp_path / "bad"), *common)
    assert code == 2 and "does not have the architecture of the model" in err
    code, err = cli("implant", "fingerprint", "--scheme", "backdoor", "--out", str(tmp_path / "x"))
    assert code == 2 and "use 'expunge implant backdoor'" in err


def test_fine_mixing_demo_preset_keeps_a_tenth_and_user_ratio_wins() -> None:
    """The demo preset's ρ is 0.1 (measured on held-out worlds); the default and paper stay 0.5."""
    fine_mixing = ERASERS.get("fine_mixing")
    assert build_config(fine_mixing, {}, ["preset=demo"]).ratio == 0.1
    assert build_config(fine_mixing, {}, ["preset=demo", "ratio=0.3"]).ratio == 0.3
    assert build_config(fine_mixing, {}, ["preset=paper"]).ratio == 0.5
    assert build_config(fine_mixing, {}, []).ratio == 0.5
    demo = build_config(fine_mixing, {}, ["preset=demo"]).train
    assert (demo.mode, demo.lr) == ("lora", 1e-3)  # the shared demo clean tuning is kept
    assert build_config(ERASERS.get("finetune"), {}, ["preset=demo"]).train.mode == "lora"
