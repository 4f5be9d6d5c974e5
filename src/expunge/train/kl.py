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

from expunge.train.objectives import Batch, StepContext, label_logits
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
