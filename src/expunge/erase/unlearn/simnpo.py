"""``simnpo`` — Simple NPO: NPO without a reference model, length-normalised, with a margin.

Fan, Liu, Lin, Jia, Zhang, Chang, Liu, *Simplicity Prevails: Rethinking Negative Preference
Optimization for LLM Unlearning*, 2024, eq. (4)::

    L_SimNPO(θ) = −(2/β) · E_{(x,y)∈D_f} [ log σ( −(β/|y|) · log π_θ(y|x) − γ ) ]

|y| is the number of response tokens, so a long forget answer is not pushed harder than a short
one, and no frozen reference is kept (half NPO's forward passes). The total loss is
``forget_weight · L_SimNPO + retain_weight · NLL(D_r)`` (the paper's SimNPO with the retain
regularizer used on TOFU and MUSE).

The margin follows the authors' code (OPTML-Group/Unlearn-Simple ``TOFU/dataloader.py``,
``simnpo_grad_diff``; open-unlearning ``src/trainer/unlearn/simnpo.py`` as ``delta``), which
subtracts it from the mean token NLL *before* multiplying by β::

    per sequence: (2/β) · softplus( −β · (NLL(y|x)/|y| − gamma) )

so the paper's γ is β·``gamma``; with the default ``gamma = 0`` the two coincide.

Defaults are the authors' TOFU config (Unlearn-Simple ``TOFU/config/forget.yaml``): β = 2.5,
``gamma`` = 0, ``forget_weight`` = 0.1375 (their ``npo_coeff``), ``retain_weight`` = 1.0 (their
``grad_diff_coeff``). open-unlearning's ``configs/trainer/SimNPO.yaml`` uses β = 4.5 and
``forget_weight`` 0.125; the authors' MUSE runs use β 0.7 (News) / 0.75 (Books), forget weight
1.0, retain weight 0.1. The expectation is a mean over the forget sequences of the whole
optimizer step. Closed form: for a model whose next-token distribution is uniform over V tokens,
NLL/|y| = log V and the loss is ``forget_weight·(2/β)·softplus(−β·(log V − gamma))``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, field_validator

from expunge.erase.unlearn.common import FORGET, RetainSettings, RetainTerm
from expunge.erase.unlearn.npo import sequence_nll
from expunge.lazy import lazy
from expunge.train.objectives import Batch, StepContext

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torch import nn
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    torch = lazy("torch")
    F = lazy("torch.nn.functional")
    nn = lazy("torch.nn")


class SimNPOSettings(RetainSettings):
    beta: float = 2.5
    gamma: float = 0.0  # margin on the mean token NLL (the code's units: the paper's γ / β)
    forget_weight: float = Field(default=0.1375, gt=0.0)

    @field_validator("beta")
    @classmethod
    def _beta_positive(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"SimNPO's beta must be > 0 (the loss divides by β), got {value}")
        return value


def simnpo_loss_terms(mean_nll: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """(2/β)·softplus(−β·(mean NLL − gamma)) per sequence, i.e. −(2/β)·log σ(β·(NLL/|y| − γ))."""
    return (2.0 / beta) * F.softplus(-beta * (mean_nll - gamma))


class SimNPOObjective:
    Settings: ClassVar[type[RetainSettings]] = SimNPOSettings

    def __init__(self, model: nn.Module, settings: SimNPOSettings | None = None) -> None:
        self.settings = settings or SimNPOSettings()
        self.retain = RetainTerm.own_reference(self.settings, model)
        self.streams: tuple[str, ...] = (FORGET, *self.retain.streams)

    def __call__(
        self, model: nn.Module, batches: dict[str, Batch], ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = batches[FORGET]
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        mean_nll = sequence_nll(logits, batch["labels"], "mean")
        per_sequence = simnpo_loss_terms(mean_nll, self.settings.beta, self.settings.gamma)
        forget = ctx.mean_over_sequences(FORGET, per_sequence.sum())
        loss = self.settings.forget_weight * forget
        logs = {
            f"{FORGET}/simnpo": forget.detach(),
            f"{FORGET}/mean_nll": ctx.mean_over_sequences(FORGET, mean_nll.sum()).detach(),
        }
        retain, retain_logs = self.retain(model, batches, ctx)
        if retain is not None:
            loss = loss + retain
        return loss, logs | retain_logs
