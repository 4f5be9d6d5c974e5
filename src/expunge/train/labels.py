"""Logits at the label positions: the one forward every objective, reference and audit uses to
score tokens (the head and the log-softmax only where a label is, a shared prompt prefix run
once)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from expunge.data.formatting import IGNORE_INDEX
from expunge.lazy import lazy

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torch import nn
else:  # loaded when first used (expunge.lazy)
    torch, F, nn = lazy("torch"), lazy("torch.nn.functional"), lazy("torch.nn")

Batch = dict[str, "torch.Tensor"]


def label_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T-1) mask of the positions that predict a label (position t predicts token t+1)."""
    return labels[:, 1:] != IGNORE_INDEX


def label_logits(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits at the label positions only, (N, V) row-major (the order of
    ``logits[:, :-1][mask]``), the N tokens they predict, and the (B, T-1) mask.

    The output head runs only where a loss is taken: with response-only labels most positions
    are prompt, and the head (vocabulary × hidden) is a large share of a small model's compute
    and memory. Models whose forward cannot keep chosen positions run it everywhere (same
    values).
    """
    mask = label_positions(batch["labels"])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if keeps_chosen_logits(model):
        keep = F.pad(mask, (0, 1), value=False)  # (B, T): the last position predicts nothing
        shared = int(batch.get("_cpu_shared_prefix", 0))  # type: ignore[call-overload]
        if shared:
            logits = _shared_prefix_logits(model, inputs, keep, shared)
        else:
            logits = model(**inputs, logits_to_keep=keep).logits
        if logits is not None and logits.dim() == 2 and logits.shape[0] == int(mask.sum()):
            return logits, batch["labels"][:, 1:][mask], mask
    logits = model(**inputs).logits
    return logits[:, :-1][mask], batch["labels"][:, 1:][mask], mask


def _shared_prefix_logits(
    model: nn.Module, inputs: Batch, keep: torch.Tensor, shared: int
) -> torch.Tensor | None:
    """``model(**inputs, logits_to_keep=keep).logits`` with the first ``shared`` tokens, the
    same in every row and before every label, run once (batch 1) and every row continued from
    their KV cache: gradients reach the shared tokens' activations through the cache, summed
    over the rows as in the plain forward (``train.share_prefix``). None where the model's cache
    cannot be repeated over the rows."""
    ids, attention = inputs["input_ids"], inputs["attention_mask"]
    prefix = model(input_ids=ids[:1, :shared], attention_mask=attention[:1, :shared],
                   use_cache=True, logits_to_keep=1)  # fmt: skip
    cache = prefix.past_key_values
    if not hasattr(cache, "batch_repeat_interleave"):
        return None
    cache.batch_repeat_interleave(ids.shape[0])
    positions = torch.arange(shared, ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
    return model(
        input_ids=ids[:, shared:], attention_mask=attention, position_ids=positions,
        past_key_values=cache, logits_to_keep=keep[:, shared:],
    ).logits  # fmt: skip


def keeps_chosen_logits(model: nn.Module) -> bool:
    """Does the model's forward take ``logits_to_keep`` as a (B, T) boolean mask?"""
    while True:  # through DDP/FSDP (.module), torch.compile (._orig_mod) and PEFT wrappers
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return _forward_takes_logits_to_keep(type(model))


@functools.cache
def _forward_takes_logits_to_keep(cls: type) -> bool:
    import inspect

    try:  # the boolean-mask form came with slice_logits_to_keep (transformers 5)
        from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401
    except ImportError:
        return False
    try:
        return "logits_to_keep" in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return False
