"""``kl_retain``: keep the tuned model's next-token distribution close to the original's.

L = KL(p_ref ‖ p_θ) averaged over the label tokens of a stream (forward KL, the original model
as the target distribution — the choice of Chain & Hash's regularizer and of unlearning's
KL-on-retain term).
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

from expunge.data.formatting import IGNORE_INDEX
from expunge.train.objectives import Batch, StepContext
from expunge.train.reference import Reference


def kl_to_reference_sum(model: nn.Module, reference: Reference, batch: Batch) -> torch.Tensor:
    """Σ over label positions of KL(p_ref ‖ p_θ) (a sum: normalize with the step context)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ref_logits = reference.logits(model, batch)
    mask = batch["labels"][:, 1:] != IGNORE_INDEX
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    ref_logp = F.log_softmax(ref_logits[:, :-1].float(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return (kl * mask).sum()


class KLRetainObjective:
    def __init__(
        self, model: nn.Module, stream: str = "retain", reference: Reference | None = None
    ) -> None:
        self.streams = (stream,)
        self.stream = stream
        self.reference = reference or Reference(model)

    def __call__(self, model: nn.Module, batches: dict[str, Batch], ctx: StepContext):
        loss = ctx.mean_over_tokens(
            self.stream, kl_to_reference_sum(model, self.reference, batches[self.stream])
        )
        return loss, {f"{self.stream}/kl": loss.detach()}
