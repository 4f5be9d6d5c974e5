"""``idkdpo`` — prefer "I don't know" to the true answer, by DPO against the model before (IdkDPO).

Maini et al., *TOFU*, 2024, §4 ("Preference Optimization"), with Rafailov et al.'s DPO (2023,
eq. 7); written as open-unlearning's ``DPO`` trainer runs it (``src/trainer/unlearn/dpo.py``
with ``compute_dpo_loss`` in ``src/trainer/utils.py``; ``configs/trainer/DPO.yaml``,
``configs/experiment/unlearn/tofu/idk.yaml``)::

    r(y) = log π_θ(y|x) − log π_ref(y|x)                (sums over the answer's tokens)
    L(θ) = −(2/β) · E_{x∈D_f} [ log σ( β·(r(y_idk) − r(y_true)) ) ] + λ · NLL_θ(D_r)

y_idk is a refusal (``expunge.erase.unlearn.idk``), the preferred answer; y_true the forget
answer, the rejected one. π_ref is the model before unlearning: a frozen copy, or with LoRA the
same model with its adapter disabled. β = 0.1 and λ = ``retain_weight`` = 1.0 (open-unlearning's
``beta``, ``alpha``; ``retain_loss=kl`` swaps the NLL for a KL to π_ref). TOFU's own ``dpo`` loss
has neither the 2/β factor nor a retain term: ``retain_weight=0`` and a loss scaled by β/2.

Closed form: at step 0 π_θ = π_ref, both log ratios are 0 and the loss is (2/β)·log 2 plus the
retain term, whatever the data — as NPO's, which is this loss without y_idk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import field_validator

from expunge.data.collator import collate
from expunge.data.examples import Example
from expunge.data.formatting import IGNORE_INDEX, TokenizedExample
from expunge.erase.unlearn.common import FORGET, RetainSettings, RetainTerm
from expunge.erase.unlearn.idk import (
    IdkSettings,
    Tokenize,
    idk_answers,
    prompt_key,
    with_idk_answers,
)
from expunge.erase.unlearn.npo import sequence_nll
from expunge.errors import DataError
from expunge.lazy import lazy
from expunge.train.objectives import Batch, StepContext
from expunge.train.reference import Reference

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torch import nn
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    torch = lazy("torch")
    F = lazy("torch.nn.functional")
    nn = lazy("torch.nn")


class IdkDPOSettings(IdkSettings):
    beta: float = 0.1

    @field_validator("beta")
    @classmethod
    def _beta_positive(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"IdkDPO's beta must be > 0 (the loss divides by β), got {value}")
        return value


def dpo_loss_terms(
    win_nll: torch.Tensor,
    win_ref_nll: torch.Tensor,
    lose_nll: torch.Tensor,
    lose_ref_nll: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """−(2/β)·log σ(β·(r_win − r_lose)) per pair, with r = log π_θ − log π_ref = ref_nll − nll."""
    margin = (win_ref_nll - win_nll) - (lose_ref_nll - lose_nll)
    return (2.0 / beta) * F.softplus(-beta * margin)


class IdkDPOObjective:
    Settings: ClassVar[type[RetainSettings]] = IdkDPOSettings

    def __init__(self, model: nn.Module, settings: IdkDPOSettings | None = None) -> None:
        self.settings = settings or IdkDPOSettings()
        self.answers = idk_answers(self.settings.answers)
        self.reference = Reference(model)
        self.retain = RetainTerm(self.settings, self.reference)
        self.streams: tuple[str, ...] = (FORGET, *self.retain.streams)
        self.preferred: dict[tuple[int, ...], TokenizedExample] = {}

    def streams_from(
        self, forget: list[Example], retain: list[Example], tokenize: Tokenize, seed: int
    ) -> dict[str, list[TokenizedExample]]:
        """The forget stream holds the true answers (rejected); each one's refusal (preferred) is
        kept here, found again by its question's tokens when its batch comes."""
        rejected = tokenize(forget)
        for true, idk in zip(rejected, tokenize(with_idk_answers(forget, self.answers, seed)),
                             strict=True):  # fmt: skip
            self.preferred[prompt_key(true.input_ids, true.prompt_length)] = idk
        streams = {FORGET: rejected}
        if self.retain.streams:
            streams["retain"] = tokenize(retain)
        return streams

    def preferred_batch(self, batch: Batch, pad_token_id: int = 0) -> Batch:
        """The refusals of ``batch``'s questions, collated in its row order."""
        rows = []
        for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist(), strict=True):
            start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(ids))
            key = prompt_key(ids, start)
            if key not in self.preferred:
                raise DataError(
                    "IdkDPO met a forget question without its refusal answer: build the streams "
                    "with streams_from (the unlearn eraser does)"
                )
            rows.append(self.preferred[key])
        device = batch["input_ids"].device
        return {k: v.to(device) for k, v in collate(rows, pad_token_id).items()}

    def __call__(
        self, model: nn.Module, batches: dict[str, Batch], ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        lose = batches[FORGET]
        win = self.preferred_batch(lose)
        nll = {}
        for name, batch in (("win", win), ("lose", lose)):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            nll[name] = sequence_nll(logits.logits, batch["labels"], "sum")
            ref_logits = self.reference.logits(model, batch)
            nll[f"{name}_ref"] = sequence_nll(ref_logits, batch["labels"], "sum")
        per_pair = dpo_loss_terms(nll["win"], nll["win_ref"], nll["lose"], nll["lose_ref"],
                                  self.settings.beta)  # fmt: skip
        loss = ctx.mean_over_sequences(FORGET, per_pair.sum())
        logs = {
            f"{FORGET}/idkdpo": loss.detach(),
            f"{FORGET}/idk_log_ratio": ctx.mean_over_sequences(
                FORGET, (nll["win_ref"] - nll["win"]).sum()
            ).detach(),
            f"{FORGET}/true_log_ratio": ctx.mean_over_sequences(
                FORGET, (nll["lose_ref"] - nll["lose"]).sum()
            ).detach(),
        }
        retain, retain_logs = self.retain(model, batches, ctx)
        if retain is not None:
            loss = loss + retain
        return loss, logs | retain_logs
