"""``graddiff`` — gradient difference: ascend on the forget set, descend on the retain set.

Liu et al., *Continual Learning and Private Unlearning*, CoLLAs 2022; TOFU's "Grad. Diff."
(Maini et al. 2024, §4)::

    L(θ) = −NLL_θ(D_f) + λ · R_θ(D_r),   R = NLL (default) or KL(π_ref ‖ π_θ)

λ = ``retain_weight`` (1.0 as in TOFU and open-unlearning); with the NLL it is open-unlearning
``src/trainer/unlearn/grad_diff.py`` (``gamma=1``, ``alpha=λ``) for one micro-batch per stream.
``retain_loss=kl`` gives TOFU's "KL minimization" variant, with the reference from the frozen
base (or the disabled adapter with LoRA: no second copy), averaged over the retain label
positions; open-unlearning's ``compute_kl_divergence`` averages over every position of the
batch, prompt and padding included.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from expunge.erase.unlearn.common import FORGET, RetainSettings, RetainTerm, mean_nll
from expunge.lazy import lazy
from expunge.train.objectives import Batch, StepContext

if TYPE_CHECKING:
    import torch
    from torch import nn
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    nn = lazy("torch.nn")
    torch = lazy("torch")


class GradDiffSettings(RetainSettings):
    pass


class GradDiffObjective:
    Settings: ClassVar[type[RetainSettings]] = GradDiffSettings

    def __init__(self, model: nn.Module, settings: GradDiffSettings | None = None) -> None:
        self.settings = settings or GradDiffSettings()
        self.retain = RetainTerm.own_reference(self.settings, model)
        self.streams: tuple[str, ...] = (FORGET, *self.retain.streams)

    def __call__(
        self, model: nn.Module, batches: dict[str, Batch], ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        forget = mean_nll(model, batches[FORGET], ctx, FORGET)
        loss, logs = -forget, {f"{FORGET}/nll": forget.detach()}
        retain, retain_logs = self.retain(model, batches, ctx)
        if retain is not None:
            loss = loss + retain
        return loss, logs | retain_logs
