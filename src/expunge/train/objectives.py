"""Objectives: ``(model, batches, ctx) -> (loss, logs)`` over named data streams.

An objective never sees the optimizer, the schedule or the process group. It receives one
micro-batch per stream it declares and a ``StepContext`` that knows the global number of label
tokens and sequences in the whole optimizer step (all micro-batches, all processes), so a loss
normalized with ``ctx.mean_over_tokens`` gives the same gradient whether the step runs as one big
batch, with gradient accumulation, or spread over many processes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from expunge.data.formatting import IGNORE_INDEX
from expunge.lazy import lazy
from expunge.train.labels import Batch, label_logits, label_positions  # noqa: F401 (their home)

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from expunge.train.reference import ReferenceCache
else:  # loaded when first used (expunge.lazy)
    torch, F, nn = lazy("torch"), lazy("torch.nn.functional"), lazy("torch.nn")


@dataclass
class StepContext:
    step: int
    world_size: int
    tokens: dict[str, int]  # label tokens per stream in the whole optimizer step
    sequences: dict[str, int]  # sequences per stream in the whole optimizer step
    extras: dict[str, Any] = field(default_factory=dict)
    # frozen-reference outputs per example for this training run (train.reference_cache);
    # None: objectives run the reference on every batch
    reference_cache: ReferenceCache | None = None

    def mean_over_tokens(self, stream: str, summed: torch.Tensor) -> torch.Tensor:
        """``summed`` (a local sum over label tokens) as this process's share of the global mean.

        DDP averages gradients over processes, hence the factor ``world_size``.
        """
        return summed * self.world_size / max(self.tokens[stream], 1)

    def mean_over_sequences(self, stream: str, summed: torch.Tensor) -> torch.Tensor:
        return summed * self.world_size / max(self.sequences[stream], 1)


class Objective(Protocol):
    streams: tuple[str, ...]

    def __call__(
        self, model: nn.Module, batches: dict[str, Batch], ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def token_nll(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood (B, T-1) of the labels (0 elsewhere) and the label mask."""
    logits, targets, mask = label_logits(model, batch)
    nll = F.cross_entropy(
        # at least float32 (bf16 log-softmax loses too much), float64 kept for exact checks
        logits.to(torch.promote_types(logits.dtype, torch.float32)),
        targets,
        reduction="none",
    )
    return nll.new_zeros(mask.shape).masked_scatter(mask, nll), mask


def logits_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_nll`` from logits already computed (B, T, V) and unshifted labels (B, T)."""
    # Shift the labels, not the logits: slicing (B, T, V) logits copies them and their gradient.
    labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    nll = F.cross_entropy(
        # at least float32 (bf16 log-softmax loses too much), float64 kept for exact checks
        logits.reshape(-1, logits.size(-1)).to(torch.promote_types(logits.dtype, torch.float32)),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(labels)[:, :-1]
    mask = labels[:, :-1] != IGNORE_INDEX
    return nll, mask


class LMObjective:
    """Causal-LM loss: mean NLL over every label token of the step (SFT)."""

    def __init__(self, stream: str = "train") -> None:
        self.streams = (stream,)
        self.stream = stream

    def __call__(
        self, model: nn.Module, batches: dict[str, Batch], ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        nll, _ = token_nll(model, batches[self.stream])
        loss = ctx.mean_over_tokens(self.stream, nll.sum())
        return loss, {f"{self.stream}/nll": loss.detach()}


class SumObjective:
    """``Σ weight_i · objective_i``, each over its own streams; logs keep their names."""

    def __init__(self, *terms: tuple[float, Objective]) -> None:
        self.terms = terms
        self.streams = tuple(dict.fromkeys(s for _, o in terms for s in o.streams))

    def __call__(
        self, model: nn.Module, batches: dict[str, Batch], ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total: torch.Tensor | None = None
        logs: dict[str, torch.Tensor] = {}
        for weight, objective in self.terms:
            loss, term_logs = objective(model, batches, ctx)
            total = weight * loss if total is None else total + weight * loss
            logs.update(term_logs)
        assert total is not None, "SumObjective needs at least one term"
        return total, logs
