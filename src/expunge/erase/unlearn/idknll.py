"""``idknll`` — answer the forget questions with "I don't know" by plain fine-tuning (IdkNLL).

Maini et al., *TOFU: A Task of Fictitious Unlearning for LLMs*, 2024, §4 (TOFU's ``idk`` loss,
``dataloader.py``: ``CustomTrainerForgetting.compute_loss``)::

    L(θ) = NLL_θ(D_f^idk ∪ D_r) = (Σ_{D_f^idk} nll + λ·Σ_{D_r} nll) / (n_idk + n_r)

D_f^idk holds the forget questions, each with a refusal answer (``expunge.erase.unlearn.idk``);
D_r is the retain set. TOFU's code concatenates the two batches into one forward pass and takes
HF's mean over *all* their label tokens (``pooled=true``, our default, with λ = 1 that is exactly
it); ``pooled=false`` averages each stream on its own, NLL(D_f^idk) + λ·NLL(D_r), as GradDiff
does. λ = ``retain_weight`` (1.0); ``retain_weight=0`` trains on the refusals alone.

Closed form: for a model whose next-token distribution is uniform over V tokens every token's
NLL is log V, so the loss is log V pooled (λ = 1), or (1 + λ)·log V per stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from expunge.data.examples import Example
from expunge.data.formatting import TokenizedExample
from expunge.erase.unlearn.common import FORGET, RETAIN, RetainSettings
from expunge.erase.unlearn.idk import IdkSettings, Tokenize, idk_answers, with_idk_answers
from expunge.lazy import lazy
from expunge.train.objectives import Batch, StepContext, token_nll

if TYPE_CHECKING:
    import torch
    from torch import nn
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    torch = lazy("torch")
    nn = lazy("torch.nn")


class IdkNLLSettings(IdkSettings):
    retain_loss: Literal["nll"] = "nll"  # pooled with the refusals' tokens: an NLL only
    pooled: bool = True  # one mean over refusal and retain tokens (TOFU's code)


class IdkNLLObjective:
    Settings: ClassVar[type[RetainSettings]] = IdkNLLSettings

    def __init__(self, model: nn.Module | None = None, settings: IdkNLLSettings | None = None):
        self.settings = settings or IdkNLLSettings()
        self.answers = idk_answers(self.settings.answers)
        self.streams: tuple[str, ...] = (
            (FORGET, RETAIN) if self.settings.retain_weight > 0 else (FORGET,)
        )

    def streams_from(
        self, forget: list[Example], retain: list[Example], tokenize: Tokenize, seed: int
    ) -> dict[str, list[TokenizedExample]]:
        """The forget stream is the forget questions with refusal answers."""
        streams = {FORGET: tokenize(with_idk_answers(forget, self.answers, seed))}
        if RETAIN in self.streams:
            streams[RETAIN] = tokenize(retain)
        return streams

    def __call__(
        self, model: nn.Module, batches: dict[str, Batch], ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        weight = self.settings.retain_weight
        sums: dict[str, torch.Tensor] = {}
        for stream in self.streams:
            nll, mask = token_nll(model, batches[stream])
            sums[stream] = (nll * mask).sum()
        idk = ctx.mean_over_tokens(FORGET, sums[FORGET])
        logs = {f"{FORGET}/idk_nll": idk.detach()}
        if RETAIN not in sums:
            return idk, logs
        retain = ctx.mean_over_tokens(RETAIN, sums[RETAIN])
        logs[f"{RETAIN}/nll"] = retain.detach()
        if self.settings.pooled:
            tokens = max(ctx.tokens[FORGET] + ctx.tokens[RETAIN], 1)
            loss = (sums[FORGET] + weight * sums[RETAIN]) * ctx.world_size / tokens
        else:
            loss = idk + weight * retain
        return loss, logs
