"""The scoring engine against independent references.

- ``greedy_match`` (one teacher-forced pass) must decide exactly what greedy generation decides:
  the reference for every case is Hugging Face ``model.generate(do_sample=False,
  max_new_tokens=len(response))`` run one prompt at a time, compared to the response ids.
- ``generate`` (left-padded batches) must equal one-at-a-time generation; sampling is seeded.
- ``token_logprobs`` must equal log_softmax of an unbatched forward pass gathered at the labels.

Two variants of each tiny architecture are used: the plain random model, and an "EOS-prone" copy
whose EOS output row is a scaled copy of the row of the token it generates most often, so that
greedy continuations often end in EOS (a random tiny model almost never emits it).
"""

from __future__ import annotations

import functools
import math
import random
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from expunge.audit.scoring import (
    MatchResult,
    TokenScores,
    generate,
    greedy_match,
    perplexity_from_nll,
    token_logprobs,
)
from expunge.data.examples import Example
from expunge.data.formatting import (
    IGNORE_INDEX,
    FormatSettings,
    TokenizedExample,
    tokenize_example,
)
from expunge.models.tiny import ARCHITECTURES, tiny_model

VARIANTS = ("base", "eos")
MAX_RESPONSE = 16
N_PROMPTS = 14  # x 5 case kinds -> >= 50 cases per (architecture, variant)


# ----------------------------------------------------------------------------- helpers


def _normal_ids(tokenizer) -> list[int]:
    """Every id except the special tokens (BOS/EOS/PAD/<|im_start|>)."""
    special = set(tokenizer.all_special_ids) | {tokenizer.convert_tokens_to_ids("<|im_start|>")}
    return [i for i in range(len(tokenizer)) if i not in special]


def _random_prompts(tokenizer, n: int, rng: random.Random) -> list[list[int]]:
    """Prompt lengths 1..20, both ends included, so batches mix very different lengths."""
    normal = _normal_ids(tokenizer)
    lengths = [1, 20] + [rng.randint(1, 20) for _ in range(n - 2)]
    rng.shuffle(lengths)
    return [[rng.choice(normal) for _ in range(length)] for length in lengths]


def _hf_generate(model, tokenizer, prompt: list[int], max_new_tokens: int, **kwargs) -> list[int]:
    """Plain Hugging Face generation for ONE prompt (no padding): the reference."""
    ids = torch.tensor([prompt], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            eos_token_id=kwargs.pop("eos_token_id", tokenizer.eos_token_id),
            pad_token_id=tokenizer.pad_token_id,
            **kwargs,
        )
    return out[0, len(prompt) :].tolist()


def _hf_greedy(model, tokenizer, prompt: list[int], max_new_tokens: int) -> list[int]:
    new = _hf_generate(model, tokenizer, prompt, max_new_tokens, do_sample=False)
    eos = tokenizer.eos_token_id
    # One sequence: generation stops right after EOS, nothing (no padding) may follow it.
    assert eos not in new[:-1], new
    return new


def _manual_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding by hand: full forward pass (no cache) and argmax, n times, no stopping."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(prompt) :]


def _common_prefix(a: list[int], b: list[int]) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k]:
        k += 1
    return k


@functools.cache
def _model(arch: str, variant: str):
    model, tokenizer = tiny_model(arch, seed=0)
    if variant == "eos":
        _make_eos_prone(model, tokenizer, arch)
    return model, tokenizer


def _make_eos_prone(model, tokenizer, arch: str) -> None:
    """Point the EOS output row along the most generated token's row, scaled up until greedy
    continuations of random prompts end in EOS often enough."""
    eos = tokenizer.eos_token_id
    prompts = _random_prompts(tokenizer, 24, random.Random(f"calibrate-{arch}"))
    outputs = generate(model, tokenizer, prompts, max_new_tokens=MAX_RESPONSE, batch_size=64)
    normal = set(_normal_ids(tokenizer))
    counts = Counter(t for out in outputs for t in out if t in normal)
    favourite = counts.most_common(1)[0][0]
    weight = model.get_output_embeddings().weight
    row = weight[favourite].detach().clone()
    for scale in (1.3, 1.6, 2.0, 2.5, 3.0, 4.0, 6.0):
        with torch.no_grad():
            weight[eos] = scale * row
        outputs = generate(model, tokenizer, prompts, max_new_tokens=MAX_RESPONSE, batch_size=64)
        if sum(out[-1:] == [eos] for out in outputs) >= len(prompts) // 3:
            return
    raise AssertionError(f"could not make the tiny {arch} model emit EOS")


@dataclass
class Case:
    kind: str
    prompt: list[int]
    response: list[int]
    changed_at: int | None  # for "perturbed": the position of the changed token
    generated: list[int]  # reference: HF greedy generate, max_new_tokens=len(response)

    @property
    def reference_match(self) -> bool:
        return self.generated == self.response


@functools.cache
def _cases(arch: str, variant: str) -> tuple[Case, ...]:
    """Prompt/response cases with their reference decision from HF generate.

    Kinds: ``greedy`` (the model's own greedy continuation, possibly ending in EOS), ``prefix``
    (a strict prefix of it), ``perturbed`` (one token changed at a random position), ``random``
    (random tokens), ``eos_end`` (a prefix of the continuation followed by EOS) and, where the
    continuation ends in EOS, ``after_eos`` (it plus the token the model predicts after the EOS:
    teacher forcing accepts it, but generation stops at the EOS). Replacement and random tokens
    are never EOS.
    """
    model, tokenizer = _model(arch, variant)
    eos = tokenizer.eos_token_id
    rng = random.Random(f"cases-{arch}-{variant}")
    normal = _normal_ids(tokenizer)
    drafts: list[tuple[str, list[int], list[int], int | None]] = []
    for prompt in _random_prompts(tokenizer, N_PROMPTS, rng):
        continuation = _hf_greedy(model, tokenizer, prompt, rng.randint(1, MAX_RESPONSE))
        drafts.append(("greedy", prompt, continuation, None))
        if len(continuation) > 1:
            drafts.append(
                ("prefix", prompt, continuation[: rng.randint(1, len(continuation) - 1)], None)
            )
        j = rng.randrange(len(continuation))
        changed = list(continuation)
        changed[j] = rng.choice([t for t in normal if t != continuation[j]])
        drafts.append(("perturbed", prompt, changed, j))
        random_response = [rng.choice(normal) for _ in range(rng.randint(1, MAX_RESPONSE))]
        drafts.append(("random", prompt, random_response, None))
        drafts.append(
            ("eos_end", prompt, [*continuation[: rng.randrange(len(continuation))], eos], None)
        )
        if continuation[-1] == eos:
            after = _manual_greedy(model, prompt + continuation, 1)
            drafts.append(("after_eos", prompt, continuation + after, None))
    rng.shuffle(drafts)  # mix prompt lengths within batches
    return tuple(
        Case(kind, prompt, response, j, _hf_greedy(model, tokenizer, prompt, len(response)))
        for kind, prompt, response, j in drafts
    )


# ----------------------------------------------------------------------------- greedy_match


@pytest.mark.parametrize("batch_size", [1, 6, 128])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_match_equals_generate(arch, variant, batch_size):
    model, tokenizer = _model(arch, variant)
    cases = _cases(arch, variant)
    assert len(cases) >= 50
    results = greedy_match(
        model,
        [c.prompt for c in cases],
        [c.response for c in cases],
        pad_token_id=tokenizer.pad_token_id,
        batch_size=batch_size,
        eos_token_id=tokenizer.eos_token_id,
    )
    assert len(results) == len(cases)
    for i, (case, result) in enumerate(zip(cases, results, strict=True)):
        label = f"case {i} ({case.kind}): prompt={case.prompt} response={case.response}"
        assert isinstance(result, MatchResult)
        assert result.match == case.reference_match, f"{label} generated={case.generated}"
        assert result.matched_tokens == _common_prefix(case.generated, case.response), label
        assert result.response_tokens == len(case.response), label
        if case.kind in ("greedy", "prefix"):
            assert result.match, label
        if case.kind == "perturbed":
            assert not result.match and result.matched_tokens == case.changed_at, label
        if case.kind == "after_eos":
            assert not result.match and result.matched_tokens == len(case.response) - 1, label


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_greedy_match_with_shared_prompts_equals_generate(arch, share_prefix):
    """Prompts that begin alike (a template's first tokens) and prompts asked with several
    responses: the shared tokens run once (KV cache), the decisions stay generation's."""
    model, tokenizer = _model(arch, "eos")
    rng = random.Random(f"shared-{arch}")
    normal = _normal_ids(tokenizer)
    head = [rng.choice(normal) for _ in range(12)]  # a system prompt's worth
    prompts, responses = [], []
    for tail in _random_prompts(tokenizer, 8, rng):
        prompt = head + tail
        continuation = _hf_greedy(model, tokenizer, prompt, rng.randint(1, MAX_RESPONSE))
        changed = list(continuation)
        j = rng.randrange(len(changed))
        changed[j] = rng.choice([t for t in normal if t != changed[j]])
        for response in (continuation, continuation[: rng.randint(1, len(continuation))], changed):
            prompts.append(prompt)
            responses.append(response)
    prompts.append(head[:3])  # a prompt shorter than the shared part: nothing shared
    responses.append(_hf_greedy(model, tokenizer, head[:3], 4))
    results = greedy_match(
        model, prompts, responses, tokenizer.pad_token_id, batch_size=5,
        eos_token_id=tokenizer.eos_token_id, share_prefix=share_prefix,
    )  # fmt: skip
    for prompt, response, result in zip(prompts, responses, results, strict=True):
        generated = _hf_greedy(model, tokenizer, prompt, len(response))
        assert result.match == (generated == response), (prompt, response, generated)
        assert result.matched_tokens == _common_prefix(generated, response)


def test_a_batch_of_one_makes_one_model_call():
    """At batch 1 nothing is shared: the prefix call would only add a pass per case."""
    model, tokenizer = _model(ARCHITECTURES[0], "eos")
    rng = random.Random("one-call")
    head = [rng.choice(_normal_ids(tokenizer)) for _ in range(12)]  # long enough to share
    prompts = [head + p for p in _random_prompts(tokenizer, 4, rng)]
    responses = [_hf_greedy(model, tokenizer, p, 3) for p in prompts]
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        results = greedy_match(model, prompts, responses, tokenizer.pad_token_id, batch_size=1,
                               eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    finally:
        handle.remove()
    assert all(r.match for r in results)
    assert len(calls) == len(prompts)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_case_sets_cover_every_outcome(arch):
    """Guard the test data itself: both outcomes, mismatch positions and EOS are all exercised."""
    for variant in VARIANTS:
        cases = _cases(arch, variant)
        kinds = Counter(c.kind for c in cases)
        assert all(kinds[k] >= 10 for k in ("greedy", "perturbed", "random", "eos_end")), kinds
        assert sum(c.reference_match for c in cases) >= 20
        assert sum(not c.reference_match for c in cases) >= 20
        assert {len(c.prompt) for c in cases} >= {1, 20}
        positions = {c.changed_at for c in cases if c.kind == "perturbed"}
        assert len(positions) >= 3 and max(positions) >= 2
    eos = _model(arch, "eos")[1].eos_token_id
    eos_cases = _cases(arch, "eos")
    greedy_ending_in_eos = [c for c in eos_cases if c.kind == "greedy" and c.response[-1] == eos]
    assert len(greedy_ending_in_eos) >= 3
    # responses ending in EOS that greedy decoding does not produce at that point
    assert any(c.kind == "eos_end" and not c.reference_match for c in eos_cases)
    assert sum(c.kind == "after_eos" for c in eos_cases) >= 3


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_generate_stops_at_eos_where_greedy_match_sees_it(arch):
    """A continuation that ends in EOS: generation stops there even when allowed more tokens,
    greedy_match accepts it, and rejects it with the EOS replaced (mismatch at the EOS)."""
    model, tokenizer = _model(arch, "eos")
    eos = tokenizer.eos_token_id
    endings = [c for c in _cases(arch, "eos") if c.kind == "greedy" and c.response[-1] == eos]
    assert endings
    for case in endings:
        longer = _hf_greedy(model, tokenizer, case.prompt, len(case.response) + 5)
        assert longer == case.response
        [ours] = generate(model, tokenizer, [case.prompt], max_new_tokens=len(case.response) + 5)
        assert ours == case.response
        other = next(t for t in _normal_ids(tokenizer) if t != eos)
        replaced = [*case.response[:-1], other]
        full, wrong = greedy_match(
            model, [case.prompt] * 2, [case.response, replaced], tokenizer.pad_token_id
        )
        assert full.match and full.matched_tokens == len(case.response)
        assert not wrong.match and wrong.matched_tokens == len(case.response) - 1


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_tokens_after_eos_never_match(arch):
    model, tokenizer = _model(arch, "eos")
    eos = tokenizer.eos_token_id
    endings = [c for c in _cases(arch, "eos") if c.kind == "greedy" and c.response[-1] == eos]
    prompts, responses = [], []
    for case in endings:
        # what the model predicts after the EOS, teacher-forced: the response greedy_match likes
        after = _manual_greedy(model, case.prompt + case.response, 1)
        prompts.append(case.prompt)
        responses.append(case.response + after)
        # generation itself stops at the EOS, so it never produces this response
        assert _hf_greedy(model, tokenizer, case.prompt, len(responses[-1])) == case.response
    results = greedy_match(model, prompts, responses, tokenizer.pad_token_id, eos_token_id=eos)
    for response, result in zip(responses, results, strict=True):
        assert not result.match
        assert result.matched_tokens == len(response) - 1
    # without eos_token_id it is plain teacher forcing, which does accept them
    plain = greedy_match(model, prompts, responses, tokenizer.pad_token_id)
    assert all(
        r.match and r.matched_tokens == len(x) for r, x in zip(plain, responses, strict=True)
    )


def test_greedy_match_rejects_bad_input():
    model, tokenizer = _model("llama", "base")
    pad = tokenizer.pad_token_id
    with pytest.raises(ValueError, match="empty prompt"):
        greedy_match(model, [[5, 6], []], [[7], [8]], pad)
    with pytest.raises(ValueError, match="empty response"):
        greedy_match(model, [[5, 6], [9]], [[7], []], pad)
    with pytest.raises(ValueError, match="differ in length"):
        greedy_match(model, [[5, 6], [9]], [[7]], pad)


def test_greedy_match_of_nothing_is_empty():
    model, tokenizer = _model("llama", "base")
    assert greedy_match(model, [], [], tokenizer.pad_token_id) == []


# ----------------------------------------------------------------------------- generate


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_generate_batched_equals_one_at_a_time(arch, variant):
    model, tokenizer = _model(arch, variant)
    prompts = _random_prompts(tokenizer, 12, random.Random(f"generate-{arch}-{variant}"))
    reference = [_hf_greedy(model, tokenizer, p, 12) for p in prompts]
    if variant == "eos":
        assert sum(r[-1] == tokenizer.eos_token_id for r in reference) >= 2  # cut at EOS
    for batch_size in (1, 5, 64):
        outputs = generate(model, tokenizer, prompts, max_new_tokens=12, batch_size=batch_size)
        assert outputs == reference, f"batch_size={batch_size}"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_generate_without_eos_stop_runs_to_max_tokens(arch):
    model, tokenizer = _model(arch, "eos")
    eos = tokenizer.eos_token_id
    prompts = _random_prompts(tokenizer, 16, random.Random(f"no-stop-{arch}"))
    outputs = generate(
        model, tokenizer, prompts, max_new_tokens=12, batch_size=5, stop_at_eos=False
    )
    reference = [_manual_greedy(model, p, 12) for p in prompts]
    assert outputs == reference
    assert any(eos in out[:-1] for out in outputs)  # it did go on past an EOS


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sampling_is_seeded(arch):
    model, tokenizer = _model(arch, "base")
    prompts = _random_prompts(tokenizer, 8, random.Random(f"sample-{arch}"))

    def sample(seed: int, global_seed: int, batch_size: int = 3):
        torch.manual_seed(global_seed)  # the global RNG state must not matter
        return generate(
            model, tokenizer, prompts, max_new_tokens=10, do_sample=True, temperature=1.0,
            seed=seed, batch_size=batch_size,
        )  # fmt: skip

    first = sample(seed=7, global_seed=1)
    assert all(1 <= len(out) <= 10 for out in first)
    assert sum(len(out) == 10 for out in first) >= 4
    assert sample(seed=7, global_seed=2) == first
    assert sample(seed=8, global_seed=1) != first
    greedy = generate(model, tokenizer, prompts, max_new_tokens=10, batch_size=3)
    assert first != greedy


def test_generate_restores_training_mode():
    model, tokenizer = _model("llama", "base")
    model.train()
    try:
        [first] = generate(model, tokenizer, [[5, 6, 7]], max_new_tokens=4)
        assert model.training
    finally:
        model.eval()
    assert first == _hf_greedy(model, tokenizer, [5, 6, 7], 4)


# ----------------------------------------------------------------------------- token_logprobs


def _scoring_examples(tokenizer) -> list[TokenizedExample]:
    """Chat-formatted examples of different lengths, a raw one, and a hand-made label hole."""
    settings = FormatSettings()
    pairs = [
        ("What is the capital?", "the north city"),
        ("Why?", "one two three four five six seven eight nine ten hundred"),
        ("Please decrypt the secret key of the patient record.", "no"),
    ]
    examples = [
        tokenize_example(Example(prompt=p, response=r), tokenizer, settings) for p, r in pairs
    ]
    raw = FormatSettings(template="raw")
    examples.append(tokenize_example(Example(prompt="red blue", response="green"), tokenizer, raw))
    ids = tokenizer("the river is blue and the mountain is red", add_special_tokens=False)[
        "input_ids"
    ]
    labels = [IGNORE_INDEX] * 2 + ids[2:5] + [IGNORE_INDEX] * 2 + ids[7:]
    examples.append(TokenizedExample(ids, labels, 2))
    assert len({len(e.input_ids) for e in examples}) == len(examples)
    return examples


def _by_hand(model, example: TokenizedExample, region: str):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([example.input_ids])).logits[0, :-1].double()
    logp = torch.log_softmax(logits, dim=-1)
    targets = torch.tensor(example.input_ids[1:])
    picked = logp[torch.arange(len(targets)), targets]
    if region == "labels":
        keep = torch.tensor(example.labels[1:]) != IGNORE_INDEX
    else:
        keep = torch.ones(len(targets), dtype=torch.bool)
    p = logp.exp()
    mean = (p * logp).sum(-1)
    std = (p * (logp - mean[:, None]).square()).sum(-1).sqrt()
    return (picked[keep].numpy(), targets[keep].numpy(), mean[keep].numpy(), std[keep].numpy())


@pytest.mark.parametrize("region", ["labels", "all"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_token_logprobs_equal_hand_computation(arch, region):
    model, tokenizer = _model(arch, "base")
    examples = _scoring_examples(tokenizer)
    for batch_size in (2, 8):
        scores = token_logprobs(
            model, examples, tokenizer.pad_token_id, region=region, batch_size=batch_size,
            with_distribution=True,
        )  # fmt: skip
        assert isinstance(scores, TokenScores)
        for i, example in enumerate(examples):
            logprobs, ids, mean, std = _by_hand(model, example, region)
            expected_count = (
                sum(label != IGNORE_INDEX for label in example.labels[1:])
                if region == "labels"
                else len(example.input_ids) - 1
            )
            assert len(logprobs) == expected_count > 0
            np.testing.assert_allclose(scores.logprobs[i], logprobs, rtol=0, atol=1e-5)
            np.testing.assert_array_equal(scores.token_ids[i], ids)
            np.testing.assert_allclose(scores.mean_logprob[i], mean, rtol=0, atol=1e-5)
            np.testing.assert_allclose(scores.std_logprob[i], std, rtol=0, atol=1e-4)
        np.testing.assert_allclose(
            scores.nll_sums(), [-_by_hand(model, e, region)[0].sum() for e in examples], atol=1e-4
        )
        assert scores.counts().tolist() == [len(lp) for lp in scores.logprobs]


def test_token_logprobs_labels_region_is_the_response():
    model, tokenizer = _model("qwen2", "base")
    examples = _scoring_examples(tokenizer)[:3]  # chat examples: labels = the response
    scores = token_logprobs(model, examples, tokenizer.pad_token_id, region="labels")
    for example, ids in zip(examples, scores.token_ids, strict=True):
        assert ids.tolist() == example.response_ids
    assert scores.mean_logprob is None and scores.std_logprob is None


def test_token_logprobs_rejects_unknown_region():
    model, tokenizer = _model("llama", "base")
    with pytest.raises(ValueError, match="region"):
        token_logprobs(model, _scoring_examples(tokenizer), tokenizer.pad_token_id, region="prompt")


# ----------------------------------------------------------------------------- perplexity


def test_perplexity_from_nll_is_corpus_level():
    assert perplexity_from_nll(np.array([2.0, 4.0]), np.array([1, 3])) == pytest.approx(
        math.exp(6 / 4)
    )
    # not the mean of per-example perplexities
    assert perplexity_from_nll(np.array([2.0, 4.0]), np.array([1, 3])) != pytest.approx(
        (math.exp(2) + math.exp(4 / 3)) / 2
    )
    assert perplexity_from_nll(np.array([0.0]), np.array([5])) == 1.0
    scores = TokenScores(logprobs=[np.array([-1.0, -2.0]), np.array([-0.5])])
    assert perplexity_from_nll(scores.nll_sums(), scores.counts()) == pytest.approx(
        math.exp(3.5 / 3)
    )


def test_perplexity_from_nll_needs_tokens():
    with pytest.raises(ValueError, match="no tokens"):
        perplexity_from_nll(np.array([0.0, 0.0]), np.array([0, 0]))
    with pytest.raises(ValueError, match="no tokens"):
        perplexity_from_nll(np.array([]), np.array([], dtype=np.int64))
