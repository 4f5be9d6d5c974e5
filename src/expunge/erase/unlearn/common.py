"""Pieces shared by the unlearning objectives: the forget NLL and the retain term.

All sums are normalized with the step context, so a loss is the same whether the step runs as
one batch, with accumulation or over several processes (see ``expunge.train.objectives``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from expunge.config import StrictModel
from expunge.lazy import lazy
from expunge.train.kl import kl_to_reference_sum
from expunge.train.objectives import Batch, StepContext, token_nll
from expunge.train.reference import Reference

if TYPE_CHECKING:
    import torch
    from torch import nn
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    nn = lazy("torch.nn")
    torch = lazy("torch")

FORGET, RETAIN = "forget", "retain"


class RetainSettings(StrictModel):
    """The utility-preserving term on the retain set: weight · (NLL or KL to the original)."""

    retain_weight: float = Field(default=1.0, ge=0.0)
    retain_loss: Literal["nll", "kl"] = "nll"


def mean_nll(model: nn.Module, batch: Batch, ctx: StepContext, stream: str) -> torch.Tensor:
    """This micro-batch's share of the step's mean NLL over the label tokens of ``stream``."""
    nll, mask = token_nll(model, batch)
    return ctx.mean_over_tokens(stream, (nll * mask).sum())


class RetainTerm:
    """``weight · NLL(retain)`` or ``weight · KL(p_ref ‖ p_θ)(retain)``; nothing when weight is 0."""

    def __init__(self, settings: RetainSettings, reference: Reference | None) -> None:
        self.weight = settings.retain_weight
        self.kind = settings.retain_loss
        self.reference = reference
        if self.kind == "kl" and self.weight > 0 and reference is None:
            raise ValueError("a KL retain term needs the reference model")
        self.streams: tuple[str, ...] = (RETAIN,) if self.weight > 0 else ()

    @classmethod
    def own_reference(cls, settings: RetainSettings, model: nn.Module) -> RetainTerm:
        """The retain term of an objective whose forget term needs no reference: a frozen copy
        of ``model`` is kept only for a KL retain term."""
        needs_reference = settings.retain_loss == "kl" and settings.retain_weight > 0
        return cls(settings, Reference(model) if needs_reference else None)

    def __call__(
        self, model: nn.Module, batches: dict[str, Batch], ctx: StepContext
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        if not self.streams:
            return None, {}
        batch = batches[RETAIN]
        if self.kind == "nll":
            term = mean_nll(model, batch, ctx, RETAIN)
        else:
            assert self.reference is not None
            kl = kl_to_reference_sum(model, self.reference, batch, ctx.reference_cache)
            term = ctx.mean_over_tokens(RETAIN, kl)
        return self.weight * term, {f"{RETAIN}/{self.kind}": term.detach()}
