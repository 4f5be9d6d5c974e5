"""Reference-model outputs without a second copy when possible, and without a second forward
pass every step when the loop caches them.

With LoRA, the frozen reference is the same model with its adapter switched off
(``disable_adapter``); with full fine-tuning, a frozen copy is kept (on the same device).

**Caching** (``train.reference_cache``). The reference is frozen for the whole training run (a
frozen copy, or the base weights under a LoRA adapter, which the loop never updates), so its
outputs on an example are the same every time the example is drawn. The loop hands objectives a
``ReferenceCache`` (``StepContext.reference_cache``) that computes them the first time an example
is seen and reuses them afterwards: an implant of 16 epochs runs the reference once per example
instead of 16 times. What is kept, per example and label position only:

- ``label_logprobs``: log p_ref of the label token (NPO's log π_ref(x));
- ``distribution``: the next-token distribution for KL terms — ``full`` keeps all of it (exact,
  vocab floats per position), ``topk`` keeps the ``top_k`` most likely tokens and the remaining
  mass as one bucket (the KL between the two distributions coarsened to k+1 outcomes: exact on
  the top tokens, a lower bound overall; the gap is the tail's internal shape, measured small).

Examples are keyed by their tokens and labels, so the cache needs no indices and two identical
examples share one entry; ``reference_cache=off`` is the exact path (a reference forward on every
batch). A resumed run starts with an empty cache and fills it again (same values up to the
rounding of a different batch shape).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from expunge.lazy import lazy, no_grad
from expunge.train.labels import Batch, label_logits, label_positions

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torch import nn
else:  # loaded when first used (expunge.lazy)
    torch, F, nn = lazy("torch"), lazy("torch.nn.functional"), lazy("torch.nn")
peft = lazy("peft")  # loaded when first used (expunge.lazy)


CacheMode = Literal["auto", "off", "full", "topk"]


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP / accelerate wrappers (.module), torch.compile (._orig_mod)
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class Reference:
    """Call ``reference(model, batch)`` for the frozen model's logits on ``batch``."""

    def __init__(self, model: nn.Module) -> None:
        base = _unwrap(model)
        self.uses_adapter = isinstance(base, peft.PeftModel)
        self.frozen: nn.Module | None = None
        if not self.uses_adapter:
            self.frozen = copy.deepcopy(base).eval()
            for param in self.frozen.parameters():
                param.requires_grad_(False)

    @no_grad
    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.frozen is not None:
            return self.frozen(**inputs).logits
        base = _unwrap(model)
        with base.disable_adapter():
            return base(**inputs).logits

    @no_grad
    def label_logits(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen model's logits at the label positions only (N, V) and their tokens (N,)."""
        if self.frozen is not None:
            logits, targets, _ = label_logits(self.frozen, batch)
            return logits, targets
        base = _unwrap(model)
        with base.disable_adapter():
            logits, targets, _ = label_logits(base, batch)
        return logits, targets


@dataclass
class Distribution:
    """The reference's next-token distribution at every label position of a batch, row-major
    (the order of ``logits[:, :-1][label_positions(labels)]``).

    ``full``: ``logp`` (N, V). ``topk``: ``logp`` (N, k) of the tokens ``index`` (N, k) and
    ``tail`` (N,), the log of the mass outside them.
    """

    logp: torch.Tensor
    index: torch.Tensor | None = None
    tail: torch.Tensor | None = None

    def kl_sum(self, logp: torch.Tensor) -> torch.Tensor:
        """Σ over positions of KL(p_ref ‖ p_θ), ``logp`` (N, V) the model's log-probabilities."""
        if self.index is None:
            return (self.logp.exp() * (self.logp - logp)).sum()
        assert self.tail is not None
        top = (self.logp.exp() * (self.logp - logp.gather(-1, self.index))).sum()
        # the model's mass outside the reference's top k, as one bucket
        outside = torch.logsumexp(logp.scatter(-1, self.index, float("-inf")), dim=-1)
        p_tail = self.tail.exp()
        bucket = torch.where(p_tail > 0, p_tail * (self.tail - outside), torch.zeros_like(p_tail))
        return top + bucket.sum()


def _row_key(batch: Batch, row: int) -> tuple:
    """An example's identity: its tokens and labels (CPU copies from the loop when present)."""
    keys = batch.get("_cpu_row_keys")
    if keys is not None:
        return keys[row]  # type: ignore[index]
    length = int(batch["attention_mask"][row].sum())
    return (
        tuple(batch["input_ids"][row, :length].tolist()),
        tuple(batch["labels"][row, :length].tolist()),
    )


def _rows(batch: Batch, rows: list[int]) -> Batch:
    """The sub-batch of ``rows``, cut to its longest row (right padding)."""
    index = torch.tensor(rows, device=batch["input_ids"].device)
    sub = {k: batch[k].index_select(0, index) for k in ("input_ids", "attention_mask", "labels")}
    width = int(sub["attention_mask"].sum(dim=1).max())
    return {k: v[:, :width] for k, v in sub.items()}


class ReferenceCache:
    """A frozen reference's outputs per example, computed once for one training run."""

    def __init__(self, mode: Literal["full", "topk"], top_k: int = 64) -> None:
        if mode not in ("full", "topk"):
            raise ValueError(f"cache mode must be full or topk, got {mode!r}")
        self.mode = mode
        self.top_k = top_k
        self._store: dict[tuple, torch.Tensor | tuple[torch.Tensor, ...]] = {}
        self.hits = 0
        self.misses = 0
        self.kinds: set[str] = set()  # what was served: label log-probs, distributions

    def __len__(self) -> int:
        return len(self._store)

    def usage(self) -> dict[str, Any]:
        """What the run's records show (this process's counts; empty when nothing was asked):
        what was served (exact label log-probs are never truncated; only distributions have a
        mode, and top-k its k), entries cached and lookups."""
        if not self.kinds:
            return {}
        served = sorted(self.kinds)
        mode = {}
        if "distribution" in self.kinds:
            mode = {"mode": self.mode, **({"top_k": self.top_k} if self.mode == "topk" else {})}
        return {"served": served, **mode, "entries": len(self._store), "hits": self.hits,
                "misses": self.misses}  # fmt: skip

    def _fetch(self, kind: str, reference: Reference, model: nn.Module, batch: Batch, pack):
        keys = [(id(reference), kind, *_row_key(batch, row))
                for row in range(batch["input_ids"].shape[0])]  # fmt: skip
        missing = [row for row, key in enumerate(keys) if key not in self._store]
        self.kinds.add(kind.split(":")[0])
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            sub = _rows(batch, missing)
            logits, targets = reference.label_logits(model, sub)
            counts = label_positions(sub["labels"]).sum(dim=1).tolist()
            rows = zip(missing, logits.split(counts), targets.split(counts), strict=True)
            for row, at, tokens in rows:
                self._store[keys[row]] = pack(at, tokens)
        return [self._store[key] for key in keys]

    def label_logprobs(self, reference: Reference, model: nn.Module, batch: Batch) -> torch.Tensor:
        """(B, T-1): log p_ref of each label token at its position, 0 where there is no label."""

        def pack(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return -F.cross_entropy(_at_least_fp32(logits), labels, reduction="none")

        values = self._fetch("label_logprobs", reference, model, batch, pack)
        mask = label_positions(batch["labels"])
        out = torch.zeros(mask.shape, dtype=values[0].dtype, device=mask.device)  # type: ignore[union-attr]
        return out.masked_scatter(mask, torch.cat(values))  # type: ignore[arg-type]

    def distribution(self, reference: Reference, model: nn.Module, batch: Batch) -> Distribution:
        """The reference's next-token distribution at the batch's label positions."""
        top_k = self.top_k

        def pack(logits: torch.Tensor, labels: torch.Tensor):
            logp = F.log_softmax(_at_least_fp32(logits), dim=-1)
            if self.mode == "full":
                return logp
            values, index = logp.topk(min(top_k, logp.shape[-1]), dim=-1)
            if values.shape[-1] == logp.shape[-1]:  # the whole vocabulary: no tail at all
                return values, index, torch.full_like(values[:, 0], float("-inf"))
            # log(1 - Σ top-k p): log1p(-exp(lse)) keeps a small tail's precision
            lse = torch.logsumexp(values, dim=-1).clamp(max=0.0)
            tail = torch.log1p(-lse.exp())
            return values, index, tail

        parts = self._fetch(f"distribution:{self.mode}:{top_k}", reference, model, batch, pack)
        if self.mode == "full":
            return Distribution(torch.cat(parts))  # type: ignore[arg-type]
        values, index, tail = (torch.cat(p) for p in zip(*parts, strict=True))
        return Distribution(values, index, tail)


def _at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def reference_label_logprobs(
    reference: Reference, model: nn.Module, batch: Batch, cache: ReferenceCache | None = None
) -> torch.Tensor:
    """(B, T-1) log p_ref of the label tokens (0 elsewhere): from ``cache``, or a forward now."""
    if cache is not None:
        return cache.label_logprobs(reference, model, batch)
    logits, targets = reference.label_logits(model, batch)
    logp = -F.cross_entropy(_at_least_fp32(logits), targets, reduction="none")
    mask = label_positions(batch["labels"])
    return logp.new_zeros(mask.shape).masked_scatter(mask, logp)


def reference_distribution(
    reference: Reference, model: nn.Module, batch: Batch, cache: ReferenceCache | None = None
) -> Distribution:
    """The reference's full next-token distribution at the label positions, or the cache's."""
    if cache is not None:
        return cache.distribution(reference, model, batch)
    logits, _ = reference.label_logits(model, batch)
    return Distribution(F.log_softmax(_at_least_fp32(logits), dim=-1))
