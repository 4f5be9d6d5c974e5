"""The scoring engine: the one place that runs models for audits.

- ``token_logprobs``: batched log-probabilities of labelled tokens (whole text or response only),
  optionally with the mean and standard deviation of log p under the model's own next-token
  distribution at each position (what Min-K%++ needs);
- ``generate``: batched generation with the KV cache (greedy or sampled, seeded);
- ``greedy_match``: would greedy decoding reproduce this response? Decided from one forward pass
  over prompt+response — the argmax at every response position must be the next response token —
  instead of token-by-token generation. This is exactly ``generate(do_sample=False)``'s
  decision, because greedy decoding emits the argmax given the prefix, and the prefix is the
  response itself as long as every earlier token matched. The match is over token ids: a model
  that would write the same text with a different tokenization does not match.

Metric functions elsewhere receive arrays from here and never call the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from expunge.data.collator import collate
from expunge.data.formatting import IGNORE_INDEX, TokenizedExample
from expunge.lazy import lazy, no_grad
from expunge.train.objectives import label_logits
from expunge.train.progress import track

if TYPE_CHECKING:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn
    from transformers import PreTrainedTokenizerBase
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    nn = lazy("torch.nn")
    F = lazy("torch.nn.functional")
    np = lazy("numpy")
    torch = lazy("torch")


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(items: Sequence, batch_size: int):
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]


def _order_by_length(lengths: Sequence[int]) -> list[int]:
    """Score long sequences together: less padding, same results (order restored after)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


@dataclass
class TokenScores:
    """Per-example arrays over the scored tokens, in sequence order."""

    logprobs: list[np.ndarray]
    mean_logprob: list[np.ndarray] | None = None  # E_{z~p}[log p(z)] at each position
    std_logprob: list[np.ndarray] | None = None  # its standard deviation
    token_ids: list[np.ndarray] | None = None
    is_argmax: list[np.ndarray] | None = None  # was the token the model's greedy choice

    def nll_sums(self) -> np.ndarray:
        return np.array([-lp.sum() for lp in self.logprobs], dtype=np.float64)

    def counts(self) -> np.ndarray:
        return np.array([lp.size for lp in self.logprobs], dtype=np.int64)


@no_grad
def token_logprobs(
    model: nn.Module,
    examples: Sequence[TokenizedExample],
    pad_token_id: int,
    region: str = "labels",
    batch_size: int = 8,
    with_distribution: bool = False,
    progress: bool = False,
    description: str = "scoring",
    with_argmax: bool = False,
) -> TokenScores:
    """Log-probs of the tokens in ``region``: ``labels`` (the example's label mask, e.g. the
    response) or ``all`` (every token after the first). ``with_argmax`` also says, per token,
    whether it is the argmax of the model's prediction — what greedy decoding would emit given
    the same prefix (ties go to the lowest id, as in ``generate``)."""
    if region not in {"labels", "all"}:
        raise ValueError(f"region must be 'labels' or 'all', got {region!r}")
    device = _device_of(model)
    order = _order_by_length([len(e.input_ids) for e in examples])
    results: dict[int, tuple] = {}
    batches = list(_batches(order, batch_size))
    for chunk in track(batches, description, total=len(batches), enabled=progress):
        batch = collate([examples[i] for i in chunk], pad_token_id)
        if region == "labels":
            mask = batch["labels"][:, 1:] != IGNORE_INDEX
        else:
            mask = batch["attention_mask"][:, 1:].bool()
        scored = {
            "input_ids": batch["input_ids"].to(device),
            "attention_mask": batch["attention_mask"].to(device),
            # label_logits reads the positions to score off the labels: mark the region
            "labels": torch.where(F.pad(mask, (1, 0)), batch["input_ids"], IGNORE_INDEX).to(device),
        }
        # the output head and the log-softmax only at the scored positions (N, V)
        logits, targets, _ = label_logits(model, scored)
        logits = logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        columns = [picked.double().cpu(), targets.cpu()]
        if with_distribution:
            probs = logp.exp()
            mean = (probs * logp).sum(-1)
            var = (probs * logp.square()).sum(-1) - mean.square()
            columns += [mean.double().cpu(), var.clamp(min=0).sqrt().double().cpu()]
        if with_argmax:
            columns.append((logits.argmax(dim=-1) == targets).cpu())
        counts = mask.sum(dim=1).tolist()
        per_row = zip(*(column.split(counts) for column in columns), strict=True)
        for index, values in zip(chunk, per_row, strict=True):
            results[index] = tuple(value.numpy() for value in values)
    ordered = [results[i] for i in range(len(examples))]
    return TokenScores(
        logprobs=[r[0] for r in ordered],
        token_ids=[r[1] for r in ordered],
        mean_logprob=[r[2] for r in ordered] if with_distribution else None,
        std_logprob=[r[3] for r in ordered] if with_distribution else None,
        is_argmax=[r[-1] for r in ordered] if with_argmax else None,
    )


def perplexity_from_nll(nll_sums: np.ndarray, counts: np.ndarray) -> float:
    """Corpus perplexity: exp(total NLL / total tokens) — not the mean of per-example ppl."""
    total = float(np.sum(counts))
    if total == 0:
        raise ValueError("no tokens to score")
    return float(np.exp(np.sum(nll_sums) / total))


@dataclass
class MatchResult:
    match: bool
    matched_tokens: int  # length of the longest reproduced prefix of the response
    response_tokens: int


@no_grad
def greedy_match(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_token_id: int,
    batch_size: int = 16,
    progress: bool = False,
    eos_token_id: int | None = None,
    share_prefix: bool = True,
) -> list[MatchResult]:
    """Teacher-forced greedy match of each response after its prompt (one forward pass each).

    Pass the ``eos_token_id`` that generation stops at: tokens after a response's first EOS can
    never be generated, so such a response matches at most up to and including that EOS.

    ``share_prefix``: the prompts of a batch usually begin alike (a chat template's system
    prompt, one prompt asked with many candidate responses); the tokens they all share run
    through the model once, and every row continues from that KV cache. Cases are batched in
    prompt order so that shared prompts sit together.
    """
    if len(prompts) != len(responses):
        raise ValueError("prompts and responses differ in length")
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        if not prompt:
            raise ValueError(
                f"case {i}: an empty prompt cannot be matched (nothing to condition on)"
            )
        if not response:
            raise ValueError(f"case {i}: empty response")
    device = _device_of(model)
    share_prefix = share_prefix and _accepts(model, "past_key_values")
    if share_prefix:
        order = sorted(range(len(prompts)), key=lambda i: (tuple(prompts[i]), -len(responses[i])))
    else:
        order = _order_by_length([len(p) + len(r) for p, r in zip(prompts, responses, strict=True)])
    results: dict[int, MatchResult] = {}
    batches = list(_batches(order, batch_size))
    keep_supported = _accepts(model, "logits_to_keep")
    for chunk in track(batches, "greedy match", total=len(batches), enabled=progress):
        # a shared prefix, leaving every row at least its last prompt token to run; a batch of
        # one row shares with nobody, and the prefix call would only add a pass
        shared = (
            _common_prefix([prompts[i] for i in chunk]) if share_prefix and len(chunk) > 1 else 0
        )
        shared = min(shared, min(len(prompts[i]) for i in chunk) - 1)
        cache = _prefix_cache(model, prompts[chunk[0]][:shared], len(chunk), device)
        if shared < MIN_SHARED_PREFIX or cache is None:
            shared = 0
        items = [
            TokenizedExample(list(prompts[i][shared:]) + list(responses[i]), [], 0) for i in chunk
        ]
        # Left padding puts every response at the end of its row, so the output head only has
        # to run over the last max(n)+1 positions (it is a large share of a small model's cost).
        batch = collate(
            [TokenizedExample(e.input_ids, e.input_ids, 0) for e in items], pad_token_id,
            padding_side="left",
        )  # fmt: skip
        attention = batch["attention_mask"]
        width = attention.shape[1]
        keep = max(len(responses[i]) for i in chunk) + 1
        extra: dict = {"logits_to_keep": keep} if keep_supported else {}
        positions = _position_ids(attention)
        if shared:
            attention = torch.cat([torch.ones(len(chunk), shared, dtype=attention.dtype),
                                   attention], dim=1)  # fmt: skip
            positions = positions + shared
            extra["past_key_values"] = cache
        logits = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=attention.to(device),
            position_ids=positions.to(device),
            **extra,
        ).logits
        window = logits.shape[1]  # keep, or the whole width if the model ignores logits_to_keep
        predicted = logits[:, :-1].argmax(dim=-1).cpu()  # predicted[:, j] is token width-window+j+1
        for row, index in enumerate(chunk):
            n = len(responses[index])
            guesses = predicted[row, window - 1 - n : window - 1]
            targets = batch["input_ids"][row, width - n :]
            agree = (guesses == targets).tolist()
            prefix_ok = next((k for k, ok in enumerate(agree) if not ok), n)
            response = list(responses[index])
            if eos_token_id is not None and eos_token_id in response[:-1]:
                prefix_ok = min(prefix_ok, response.index(eos_token_id) + 1)
            results[index] = MatchResult(prefix_ok == n, prefix_ok, n)
    return [results[i] for i in range(len(prompts))]


# Below this many shared tokens the extra prefix call costs more than it saves.
MIN_SHARED_PREFIX = 8


def _prefix_cache(model: nn.Module, prefix: Sequence[int], rows: int, device: torch.device):
    """The KV cache of ``prefix`` repeated for ``rows`` rows (None where the model's cache
    cannot be repeated, or the prefix is too short to be worth a call)."""
    if len(prefix) < MIN_SHARED_PREFIX:
        return None
    ids = torch.tensor([list(prefix)], device=device)
    cache = model(input_ids=ids, use_cache=True).past_key_values
    if not hasattr(cache, "batch_repeat_interleave"):
        return None
    cache.batch_repeat_interleave(rows)
    return cache


def _common_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix every sequence starts with."""
    first = sequences[0]
    length = min(len(s) for s in sequences)
    for position in range(length):
        token = first[position]
        if any(s[position] != token for s in sequences):
            return position
    return length


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token, as ``generate`` does under left padding."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _accepts(model: nn.Module, argument: str) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return argument in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


@no_grad
def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
    stop_at_eos: bool = True,
) -> list[list[int]]:
    """New token ids for each prompt (left-padded batches, KV cache), cut at the first EOS."""
    device = _device_of(model)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    order = _order_by_length([len(p) for p in prompts])
    outputs: dict[int, list[int]] = {}
    generator_seed = torch.Generator().manual_seed(seed)
    batches = list(_batches(order, batch_size))
    was_training = model.training
    model.eval()
    for chunk in track(batches, "generating", total=len(batches), enabled=progress):
        items = [TokenizedExample(list(prompts[i]), list(prompts[i]), 0) for i in chunk]
        batch = collate(items, pad, padding_side="left")
        kwargs = {"do_sample": do_sample}
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
            # Seed per batch from one generator: reproducible whatever the batch count.
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator_seed)))
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        out = model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad,
            eos_token_id=eos if stop_at_eos else None,
            **kwargs,
        )
        new = out[:, batch["input_ids"].shape[1] :].cpu().tolist()
        for row, index in enumerate(chunk):
            ids = new[row]
            if stop_at_eos and eos is not None and eos in ids:
                ids = ids[: ids.index(eos) + 1]
            outputs[index] = ids
    model.train(was_training)
    return [outputs[i] for i in range(len(prompts))]
