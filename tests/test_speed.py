"""The speed settings of the training loop keep its results: reference caching (cached and
uncached losses agree), length-grouped batches (seeded, resume-exact, less padding) and the
compute precision (resolved per device, recorded). Tiny models on the CPU: seconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from expunge.data import Example, FormatSettings, tokenize_examples
from expunge.data.collator import collate
from expunge.data.synthetic import place_qa
from expunge.erase.unlearn.npo import NPOObjective, NPOSettings
from expunge.models import device as device_module
from expunge.models.device import resolve_precision
from expunge.models.lora import LoraSettings
from expunge.models.tiny import tiny_model
from expunge.records import RunRecord
from expunge.train import StepContext, TrainSettings, prepare_trainable, train
from expunge.train.kl import KLRetainObjective, kl_to_reference_sum
from expunge.train.loop import StreamSampler
from expunge.train.objectives import LMObjective
from expunge.train.reference import Reference, ReferenceCache


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def examples(n: int = 6) -> list[Example]:
    # responses of 1-3 repeats: rows of different lengths, so batches are padded
    return [
        Example(prompt=e.prompt, response=" ".join([e.response] * (1 + i % 3)))
        for i, e in enumerate(place_qa(n, seed=0))
    ]


def lora(model):
    settings = TrainSettings(
        mode="lora", lora=LoraSettings(r=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj"])
    )
    return prepare_trainable(model, settings)


def moved(model) -> None:
    """Give the LoRA adapter non-zero weights, so the model differs from its reference."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)


def batch_of(tok, rows: list[Example]) -> dict[str, torch.Tensor]:
    return collate(tokenize_examples(rows, tok, FormatSettings()), tok.pad_token_id)


def step_context(batch, stream: str, cache: ReferenceCache | None) -> StepContext:
    labels = int((batch["labels"][:, 1:] != -100).sum())
    ctx = StepContext(0, 1, {stream: labels}, {stream: batch["input_ids"].shape[0]})
    ctx.reference_cache = cache
    return ctx


# -- reference caching ---------------------------------------------------------------------------


@pytest.mark.parametrize("frozen_copy", [False, True])
def test_cached_kl_equals_the_exact_kl_and_its_gradient(frozen_copy: bool) -> None:
    model, tok = tiny_model("llama", seed=0)
    reference = Reference(model) if frozen_copy else None  # a frozen copy, or adapter disabled
    model = lora(model)
    moved(model)
    batch = batch_of(tok, examples())
    objective = KLRetainObjective(model, "retain", reference)
    exact, _ = objective(model, {"retain": batch}, step_context(batch, "retain", None))
    exact.backward()
    exact_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    cache = ReferenceCache("full")
    for _ in range(2):  # the first call fills the cache, the second only reads it
        cached, _ = objective(model, {"retain": batch}, step_context(batch, "retain", cache))
    assert cache.misses == batch["input_ids"].shape[0] and cache.hits == cache.misses
    assert exact.item() > 0
    torch.testing.assert_close(cached, exact, rtol=1e-5, atol=1e-7)
    model.zero_grad()
    cached.backward()
    cached_grads = [p.grad for p in model.parameters() if p.grad is not None]
    for a, b in zip(cached_grads, exact_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_topk_kl_is_exact_with_the_whole_vocabulary_and_a_close_lower_bound_below_it() -> None:
    model, tok = tiny_model("llama", seed=0)
    model = lora(model)
    moved(model)
    reference = Reference(model)
    batch = batch_of(tok, examples())
    vocab = model.config.vocab_size
    with torch.no_grad():
        exact = kl_to_reference_sum(model, reference, batch)
        whole = kl_to_reference_sum(model, reference, batch, ReferenceCache("topk", vocab))
        top = kl_to_reference_sum(model, reference, batch, ReferenceCache("topk", vocab // 4))
    torch.testing.assert_close(whole, exact, rtol=1e-5, atol=1e-6)
    # coarsening both distributions to k+1 outcomes can only lose divergence
    assert 0 < top.item() <= exact.item() * (1 + 1e-6)
    assert top.item() > 0.5 * exact.item()


def test_rows_are_cached_by_content_whatever_the_batch_they_come_in() -> None:
    model, tok = tiny_model("llama", seed=0)
    model = lora(model)
    moved(model)
    reference = Reference(model)
    rows = examples(4)[:4]
    cache = ReferenceCache("full")
    together = cache.label_logprobs(reference, model, batch_of(tok, rows))
    assert len(cache) == 4
    alone = cache.label_logprobs(reference, model, batch_of(tok, rows[2:3]))
    assert cache.hits == 1 and len(cache) == 4
    width = alone.shape[1]
    torch.testing.assert_close(alone[0], together[2, :width])


@pytest.mark.parametrize("normalization", ["sum", "mean"])
def test_npo_loss_is_the_same_with_and_without_the_cache(normalization: str) -> None:
    model, tok = tiny_model("llama", seed=0)
    model = lora(model)
    moved(model)
    objective = NPOObjective(model, NPOSettings(retain_weight=0.0, normalization=normalization))
    batch = batch_of(tok, examples())
    exact, _ = objective(model, {"forget": batch}, step_context(batch, "forget", None))
    cache = ReferenceCache("full")
    for _ in range(2):
        cached, _ = objective(model, {"forget": batch}, step_context(batch, "forget", cache))
    assert cache.hits == batch["input_ids"].shape[0]
    torch.testing.assert_close(cached, exact, rtol=1e-5, atol=1e-7)


def kl_run(cache_mode: str, steps: int = 6):
    model, tok = tiny_model("llama", seed=0)
    settings = TrainSettings(
        mode="lora", lora=LoraSettings(r=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj"]),
        max_steps=steps, batch_size=3, lr=5e-2, progress=False, precision="fp32",
        reference_cache=cache_mode,
    )  # fmt: skip
    model = prepare_trainable(model, settings)
    data = tokenize_examples(examples(), tok, FormatSettings())
    objective = KLRetainObjective(model, "train")
    return train(model, {"train": data}, objective, settings, tok.pad_token_id)


def test_training_with_the_cache_follows_the_exact_curve() -> None:
    _, exact = kl_run("off")
    _, cached = kl_run("full")
    assert exact.reference_cache == "off" and cached.reference_cache == "full"
    losses = [r["loss"] for r in exact.history]
    assert losses[-1] > 0  # the adapter moved away from the reference: a real KL to match
    np.testing.assert_allclose([r["loss"] for r in cached.history], losses, rtol=1e-4, atol=1e-8)


def test_auto_cache_keeps_full_distributions_only_when_they_fit() -> None:
    _, result = kl_run("auto", steps=1)
    assert result.reference_cache == "full"  # tiny vocabulary, a few positions
    model, tok = tiny_model("llama", seed=0)
    settings = TrainSettings(mode="full", max_steps=1, batch_size=2, progress=False,
                             precision="fp32", reference_cache_mib=0)  # fmt: skip
    data = tokenize_examples(examples(), tok, FormatSettings())
    _, result = train(model, {"train": data}, KLRetainObjective(model, "train"), settings,
                      tok.pad_token_id)  # fmt: skip
    assert result.reference_cache == "topk"
    use = result.reference_use
    assert use["served"] == ["distribution"] and use["mode"] == "topk" and use["top_k"] == 64
    assert use["misses"] == use["entries"] > 0


def test_a_run_without_a_reference_records_no_reference_cache() -> None:
    model, tok = tiny_model("llama", seed=0)
    settings = TrainSettings(mode="full", max_steps=1, batch_size=2, progress=False,
                             precision="fp32")  # fmt: skip
    data = tokenize_examples(examples(), tok, FormatSettings())
    _, result = train(model, {"train": data}, LMObjective("train"), settings, tok.pad_token_id)
    assert result.reference_use == {}
    record = RunRecord(command="test")
    result.note(record, "train")
    assert record.inputs["training"] == {"train": {"precision": "fp32"}}


# -- length-grouped batches ----------------------------------------------------------------------


def test_grouped_sampler_is_a_seeded_permutation_per_window_and_resumes_exactly() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 80, size=37).tolist()
    block, window = 4, 3
    grouped = StreamSampler(37, seed=5, salt=1, lengths=lengths, block=block, window=window)
    plain = StreamSampler(37, seed=5, salt=1)
    walk = [grouped.take(block) for _ in range(60)]
    span = block * window
    flat = [i for batch in walk for i in batch]
    plain_flat = plain.take(len(flat))
    for start in range(0, len(flat), span):  # each window holds the plain walk's indices
        assert sorted(flat[start : start + span]) == sorted(plain_flat[start : start + span])
    again = StreamSampler(37, seed=5, salt=1, lengths=lengths, block=block, window=window)
    assert [again.take(block) for _ in range(60)] == walk  # seeded
    for stop in (1, 7, 29):  # a resume from any batch continues the same walk
        resumed = StreamSampler(37, seed=5, salt=1, lengths=lengths, block=block, window=window)
        resumed.consumed = stop * block
        assert [resumed.take(block) for _ in range(60 - stop)] == walk[stop:]

    def padding(batches) -> int:
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b)
                   for b in batches)  # fmt: skip

    plain_batches = [plain_flat[i : i + block] for i in range(0, len(plain_flat), block)]
    assert padding(walk) < 0.5 * padding(plain_batches)


def test_grouped_training_is_deterministic_and_pads_less() -> None:
    def run(group: bool):
        model, tok = tiny_model("llama", seed=0)
        settings = TrainSettings(mode="full", max_steps=6, batch_size=2, lr=1e-2,
                                 progress=False, precision="fp32", group_by_length=group,
                                 length_window=3)  # fmt: skip
        data = tokenize_examples(examples(), tok, FormatSettings())
        from expunge.train import LMObjective

        return train(model, {"train": data}, LMObjective(), settings, tok.pad_token_id)[1]

    first, second = run(True), run(True)
    assert [r["loss"] for r in first.history] == [r["loss"] for r in second.history]
    assert first.tokens == run(False).tokens  # the same examples, fewer padding tokens


# -- precision -----------------------------------------------------------------------------------


def test_precision_resolves_per_device(monkeypatch) -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", cpu) == "fp32"


def test_bf16_training_is_deterministic_and_close_to_fp32() -> None:
    def run(precision: str):
        model, tok = tiny_model("llama", seed=0)
        settings = TrainSettings(mode="full", max_steps=4, batch_size=3, lr=1e-2,
                                 progress=False, precision=precision)  # fmt: skip
        data = tokenize_examples(examples(), tok, FormatSettings())
        from expunge.train import LMObjective

        return train(model, {"train": data}, LMObjective(), settings, tok.pad_token_id)[1]

    a, b, full = run("bf16"), run("bf16"), run("fp32")
    assert a.precision == "bf16" and full.precision == "fp32"
    assert [r["loss"] for r in a.history] == [r["loss"] for r in b.history]
    assert [r["loss"] for r in a.history] != [r["loss"] for r in full.history]  # bf16 did act
    np.testing.assert_allclose([r["loss"] for r in a.history],
                               [r["loss"] for r in full.history], rtol=0.05)  # fmt: skip


# -- shared prefixes -----------------------------------------------------------------------------


def prefixed_examples() -> list[Example]:
    """Chat examples whose prompts begin alike (a fixed instruction) and differ after it."""
    return [
        Example(prompt=f"Please decrypt this message, it is a long one: {e.prompt}",
                response=" ".join([e.response] * (1 + i % 3)))
        for i, e in enumerate(place_qa(3, seed=1))
    ]  # fmt: skip


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_a_shared_prefix_gives_the_same_losses_and_gradients(arch: str) -> None:
    from expunge.train.loop import shared_prefix
    from expunge.train.objectives import token_nll

    model, tok = tiny_model(arch, seed=0)
    settings = TrainSettings(
        mode="lora", lora=LoraSettings(r=4, alpha=8, dropout=0.0, targets=["all-linear"])
    )
    model = prepare_trainable(model, settings)
    moved(model)
    # float64, so a real difference would stand out (Llama's and Qwen2's RMSNorm still round
    # in float32 inside: the gradients summed over rows before or after it differ by ~1e-8)
    model = model.double()
    rows = tokenize_examples(prefixed_examples(), tok, FormatSettings())
    batch = collate(rows, tok.pad_token_id)
    shared = shared_prefix(rows)
    assert shared >= 8
    results = []
    for hint in (0, shared):
        model.zero_grad()
        nll, mask = token_nll(model, {**batch, "_cpu_shared_prefix": hint})
        (nll * mask).sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((nll.detach(), grads))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-12, atol=1e-12)
    for a, b in zip(results[1][1], results[0][1], strict=True):
        assert float((a - b).abs().max()) <= 1e-6 * float(a.abs().max())


def test_the_shared_prefix_stops_before_any_label() -> None:
    from expunge.train.loop import shared_prefix

    _, tok = tiny_model("llama", seed=0)
    rows = tokenize_examples(prefixed_examples(), tok, FormatSettings(loss_on="all"))
    assert shared_prefix(rows) == 0  # every token is a label: nothing may be shared
    rows = tokenize_examples(prefixed_examples(), tok, FormatSettings())
    first_label = min(next(i for i, x in enumerate(r.labels) if x != -100) for r in rows)
    assert 8 <= shared_prefix(rows) <= first_label - 1
    assert shared_prefix(rows[:1]) == 0


def test_training_with_shared_prefixes_follows_the_plain_curve() -> None:
    def run(share: bool):
        model, tok = tiny_model("llama", seed=0)
        settings = TrainSettings(
            mode="lora", lora=LoraSettings(r=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj"]),
            max_steps=5, batch_size=3, lr=5e-2, progress=False, precision="fp32",
            share_prefix=share,
        )  # fmt: skip
        model = prepare_trainable(model, settings)
        data = tokenize_examples(prefixed_examples(), tok, FormatSettings())
        objective = KLRetainObjective(model, "train")  # the reference shares the prefix too
        from expunge.train import LMObjective
        from expunge.train.objectives import SumObjective

        objective = SumObjective((1.0, LMObjective("train")), (1.0, objective))
        return train(model, {"train": data}, objective, settings, tok.pad_token_id)[1]

    plain, shared = run(False), run(True)
    np.testing.assert_allclose([r["loss"] for r in shared.history],
                               [r["loss"] for r in plain.history], rtol=1e-4)  # fmt: skip
