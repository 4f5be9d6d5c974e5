"""Fine-mixing (Zhang et al., "Fine-mixing: Mitigating Backdoors in Fine-tuned Language
Models", Findings of EMNLP 2022, §3.2).

Mix the backdoored weights θ_B with the clean pre-trained weights θ_0, then fine-tune on a
small clean set:

    θ_mix = θ_0 + m ⊙ (θ_B − θ_0),    m ∈ {0, 1}, a share ρ (the reserve ratio) of ones

``selection``: ``random`` (the paper's default: m keeps a uniformly random ρ of the fine-tuned
coordinates), ``magnitude`` (keep the ρ of largest |θ_B − θ_0|) or ``fisher`` (ours: keep the ρ
of largest F_i (θ_B − θ_0)_i², F the diagonal empirical Fisher of θ_B on the clean set, which to
second order is twice the clean loss that returning coordinate i to θ_0 would add; Matena &
Raffel, NeurIPS 2022, merge models by the same F). The share is exact per
tensor (round(ρ·n) coordinates), and the mix is computed as ``where(m, θ_B, θ_0)`` so that ρ = 1
gives θ_B and ρ = 0 gives θ_0 bit for bit. ``scope``: ``all`` tensors, or ``non_embedding``
(the input and position embeddings keep θ_B — the setting to combine with E-PUR, which
handles embedding rows itself). Defaults: ρ = 0.5 (the value a later LLM study used
[unverified]), random selection, scope all, then the clean fine-tuning of
``expunge.erase.backdoor.clean_tuning``. ``preset=demo`` (a LoRA-implanted model, LoRA clean
tuning) keeps ρ = 0.1: a random mask of a LoRA update keeps, in expectation, ρ times the update,
and the held-out LoRA backdoors of the generalization protocol survived half of it
(``docs/results/2026-12-03-generalization.md``). No official code was found.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from expunge.data.formatting import TokenizedExample
from expunge.erase.backdoor.clean_tuning import BackdoorEraser
from expunge.erase.ops.fisher import fisher_diagonal
from expunge.erase.ops.mixing import mix_weights
from expunge.lazy import lazy
from expunge.models.loading import LoadedModel
from expunge.records import RunRecord

if TYPE_CHECKING:
    from torch import nn
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    nn = lazy("torch.nn")


class FineMixing(BackdoorEraser):
    method: Literal["fine_mixing"] = "fine_mixing"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        **BackdoorEraser.PRESETS,
        "demo": {**BackdoorEraser.PRESETS["demo"], "ratio": 0.1},
    }
    ratio: float = Field(default=0.5, ge=0.0, le=1.0)  # ρ, the reserve ratio
    selection: Literal["random", "magnitude", "fisher"] = "random"
    scope: Literal["all", "non_embedding"] = "all"
    NEEDS_REFERENCE: ClassVar[bool] = True
    EDIT_STAGE: ClassVar[str | None] = "mixed"

    def edit(self, loaded: LoadedModel, reference: nn.Module | None,
             clean: list[TokenizedExample], record: RunRecord) -> None:  # fmt: skip
        assert reference is not None  # validate_inputs
        fisher = None
        if self.selection == "fisher":  # of θ_B: the model as given, before any edit but E-PUR's
            fisher = fisher_diagonal(loaded.model, clean, loaded.tokenizer.pad_token_id)
        kept = mix_weights(loaded.model, reference, self.ratio, self.selection, self.scope,
                           self.seed, fisher)  # fmt: skip
        record.metrics["mix/tensors"] = len(kept)
        record.metrics["mix/kept_share"] = sum(kept.values()) / max(len(kept), 1)
