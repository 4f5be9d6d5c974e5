"""``kl_retain``: keep the tuned model's next-token distribution close to the original's.

L = KL(p_ref ‖ p_θ) averaged over the label tokens of a stream (forward KL, the original model
as the target distribution — the choice of Chain & Hash's regularizer and of unlearning's
KL-on-retain term). The reference's distributions come from the loop's ``ReferenceCache`` when
``train.reference_cache`` is on (computed once per example), else from a forward every step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from expunge.lazy import lazy

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torch import nn
else:  # loaded when first used (expunge.lazy)
    torch, F, nn = lazy("torch"), lazy("torch.nn.functional"), lazy("torch.nn")

from expunge.train.objectives import Batch, StepContext, label_logits, token_nll
from expunge.train.reference import Reference, ReferenceCache, reference_distribution


def kl_to_reference_sum(
    model: nn.Module, reference: Reference, batch: Batch, cache: ReferenceCache | None = None
) -> torch.Tensor:
    """Σ over label positions of KL(p_ref ‖ p_θ) (a sum: normalize with the step context)."""
    # Only the label positions: the output head and the log-softmax over the vocabulary are
    # the costly part, and no other position enters the loss.
    logits, _, _ = label_logits(model, batch)
    target = reference_distribution(reference, model, batch, cache)
    logp = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return target.kl_sum(logp)


class KLRetainObjective:
    def __init__(
        self, model: nn.Module, stream: str = "retain", reference: Reference | None = None
    ) -> None:
        self.streams = (stream,)
        self.stream = stream
        self.reference = reference or Reference(model)

    def __call__(self, model: nn.Module, batches: dict[str, Batch], ctx: StepContext):
        kl = kl_to_reference_sum(model, self.reference, batches[self.stream], ctx.reference_cache)
        loss = ctx.mean_over_tokens(self.stream, kl)
        return loss, {f"{self.stream}/kl": loss.detach()}


class CEWithKLObjective:
    """CE on the ``ce`` stream + λ·KL(original ‖ tuned) on the ``kl`` stream.

    Teaches one behaviour (a fingerprint, a backdoor) while the KL term — Chain & Hash's
    regularizer — keeps the model's ordinary next-token distributions on the other data, where
    CE on a few ordinary pairs (or on the model's own greedy answers) would let it overfit them.
    The first of ``streams`` counts the epochs.
    """

    def __init__(self, model: nn.Module, ce: str, kl: str, kl_weight: float = 1.0,
                 epochs_on_kl: bool = False) -> None:  # fmt: skip
        self.ce, self.kl, self.kl_weight = ce, kl, kl_weight
        self.streams = (kl, ce) if epochs_on_kl else (ce, kl)
        self.reference = Reference(model)

    def __call__(self, model: nn.Module, batches: dict[str, Batch], ctx: StepContext):
        nll, _ = token_nll(model, batches[self.ce])
        ce = ctx.mean_over_tokens(self.ce, nll.sum())
        kl = ctx.mean_over_tokens(self.kl, kl_to_reference_sum(
            model, self.reference, batches[self.kl], ctx.reference_cache
        ))  # fmt: skip
        return ce + self.kl_weight * kl, {
            f"{self.ce}/ce": ce.detach(),
            f"{self.kl}/kl": kl.detach(),
        }
