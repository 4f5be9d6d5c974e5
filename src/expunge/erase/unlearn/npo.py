"""``npo`` — Negative Preference Optimization.

Zhang, Lin, Bai & Mei, *Negative Preference Optimization: From Catastrophic Collapse to
Effective Unlearning*, COLM 2024, eq. (3)::

    L_NPO(θ) = −(2/β) · E_{x∈D_f} [ log σ( −β · (log π_θ(x) − log π_ref(x)) ) ]
             =  (2/β) · E_{x∈D_f} [ softplus( β · (log π_θ(x) − log π_ref(x)) ) ]

π_ref is the model before unlearning: the frozen base, or with LoRA the same model with its
adapter disabled (``Reference``: no second copy in memory). At step 0, π_θ = π_ref and the
loss is exactly (2/β)·log 2 whatever the data — the sanity check our tests assert.

``log π(x)`` has two conventions and β does not transfer between them, so it is explicit:

- ``normalization=sum`` (the paper; open-unlearning ``src/trainer/utils.py``:
  ``compute_dpo_loss`` over ``compute_batch_nll``): the sum of the response tokens' log-probs
  of each sequence; β = 0.1 (our default).
- ``normalization=mean`` (the OPTML group's WMDP code: ``NPO_FT`` in Unlearn-ILU
  ``src/unlearn/GA.py`` and Unlearn-Simple ``WMDP/src/unlearn/GA.py``): the mean token
  log-prob of each sequence — they take HF's ``outputs.loss``, the mean over the batch's label
  tokens, with one sequence per batch. Unlearn-ILU hard-codes β = 0.1; β = 0.0225 is the value
  in Unlearn-Simple ``WMDP/configs/unlearn/wmdp/NPO.json`` and Unlearn-Smooth
  ``WMDP/run_wmdp_unlearn.sh``.

The expectation is a mean over the forget sequences of the whole optimizer step. The paper's
NPO has no retain term (``retain_weight=0``, our default); ``retain_weight>0`` adds
λ · NLL(D_r) (the paper's "NPO-RT") or λ · KL to the reference (``retain_loss=kl``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator

from expunge.erase.unlearn.common import FORGET, RetainSettings, RetainTerm
from expunge.lazy import lazy
from expunge.train.objectives import Batch, StepContext, logits_nll, token_nll
from expunge.train.reference import Reference, reference_label_logprobs

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torch import nn
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    F = lazy("torch.nn.functional")
    nn = lazy("torch.nn")
    torch = lazy("torch")


class NPOSettings(RetainSettings):
    beta: float = 0.1
    normalization: Literal["sum", "mean"] = "sum"
    retain_weight: float = Field(default=0.0, ge=0.0)

    @field_validator("beta")
    @classmethod
    def _beta_positive(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(
                f"NPO's beta must be > 0 (the loss is −(2/β)·log σ(−β·ratio)), got {value}"
            )
        return value


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor, normalization: str) -> torch.Tensor:
    """−log π(x) per sequence (B,): the sum or the mean over its label tokens."""
    nll, mask = logits_nll(logits, labels)
    summed = (nll * mask).sum(dim=1)
    if normalization == "sum":
        return summed
    return summed / mask.sum(dim=1).clamp(min=1)


def npo_loss_terms(nll: torch.Tensor, ref_nll: torch.Tensor, beta: float) -> torch.Tensor:
    """(2/β)·softplus(β·(log π_θ − log π_ref)) per sequence, with log π = −nll."""
    return (2.0 / beta) * F.softplus(beta * (ref_nll - nll))


class NPOObjective:
    Settings: ClassVar[type[RetainSettings]] = NPOSettings

    def __init__(self, model: nn.Module, settings: NPOSettings | None = None) -> None:
        self.settings = settings or NPOSettings()
        self.reference = Reference(model)
        self.retain = RetainTerm(self.settings, self.reference)
        self.streams: tuple[str, ...] = (FORGET, *self.retain.streams)

    def __call__(
        self, model: nn.Module, batches: dict[str, Batch], ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = batches[FORGET]
        norm = self.settings.normalization
        token, mask = token_nll(model, batch)  # the output head at the label positions only
        nll = token.sum(dim=1)
        # log π_ref(x): from the loop's cache (computed once per example) or a forward now
        ref_nll = -reference_label_logprobs(self.reference, model, batch, ctx.reference_cache).sum(
            1
        )
        if norm == "mean":
            count = mask.sum(dim=1).clamp(min=1)
            nll, ref_nll = nll / count, ref_nll / count
        per_sequence = npo_loss_terms(nll, ref_nll, self.settings.beta)
        loss = ctx.mean_over_sequences(FORGET, per_sequence.sum())
        logs = {
            f"{FORGET}/npo": loss.detach(),
            f"{FORGET}/log_ratio": ctx.mean_over_sequences(FORGET, (ref_nll - nll).sum()).detach(),
        }
        retain, retain_logs = self.retain(model, batches, ctx)
        if retain is not None:
            loss = loss + retain
        return loss, logs | retain_logs
