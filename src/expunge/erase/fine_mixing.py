"""Fine-mixing (Zhang et al., "Fine-mixing: Mitigating Backdoors in Fine-tuned Language
Models", Findings of EMNLP 2022, §3.2).

Mix the backdoored weights θ_B with the clean pre-trained weights θ_0, then fine-tune on a
small clean set:

    θ_mix = θ_0 + m ⊙ (θ_B − θ_0),    m ∈ {0, 1}, a share ρ (the reserve ratio) of ones

``selection``: ``random`` (the paper's default: m keeps a uniformly random ρ of the fine-tuned
coordinates) or ``magnitude`` (keep the ρ of largest |θ_B − θ_0|). The share is exact per
tensor (round(ρ·n) coordinates), and the mix is computed as ``where(m, θ_B, θ_0)`` so that ρ = 1
gives θ_B and ρ = 0 gives θ_0 bit for bit. ``scope``: ``all`` tensors, or ``non_embedding``
(the input and position embeddings keep θ_B — the setting to combine with E-PUR, which
handles embedding rows itself). Defaults: ρ = 0.5 (the value a later LLM study used
[unverified]), random selection, scope all, then the clean fine-tuning of
``expunge.erase.clean_tuning``. No official code was found.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from expunge.data.formatting import TokenizedExample
from expunge.erase.clean_tuning import BackdoorEraser
from expunge.errors import ConfigError
from expunge.models.loading import LoadedModel
from expunge.records import RunRecord


def keep_mask(
    delta: torch.Tensor, ratio: float, selection: str, generator: torch.Generator
) -> torch.Tensor:
    """Boolean mask of ``delta``'s shape with exactly round(ratio·n) True entries."""
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"the reserve ratio must be in [0, 1], got {ratio}")
    if selection not in {"random", "magnitude"}:
        raise ConfigError(f"selection must be 'random' or 'magnitude', got {selection!r}")
    n = delta.numel()
    k = round(ratio * n)
    mask = torch.zeros(n, dtype=torch.bool)
    if selection == "random":
        kept = torch.randperm(n, generator=generator)[:k]
    else:
        kept = torch.topk(delta.detach().abs().flatten().float().cpu(), k).indices
    mask[kept] = True
    return mask.view_as(delta)


def embedding_parameters(model: nn.Module) -> set[int]:
    """ids of every embedding table (token, position, token type) of the model."""
    found = {id(model.get_input_embeddings().weight)}
    found |= {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return found


@torch.no_grad()
def mix_weights(
    model: nn.Module,
    reference: nn.Module,
    ratio: float,
    selection: str = "random",
    scope: str = "all",
    seed: int = 0,
) -> dict[str, float]:
    """θ ← where(m, θ_B, θ_0) for every parameter in scope, in place; returns the kept share."""
    if scope not in {"all", "non_embedding"}:
        raise ConfigError(f"scope must be 'all' or 'non_embedding', got {scope!r}")
    generator = torch.Generator().manual_seed(seed)
    skip = embedding_parameters(model) if scope == "non_embedding" else set()
    clean = dict(reference.named_parameters())
    kept = {}
    for name, param in model.named_parameters():  # tied tensors appear once
        if id(param) in skip:
            continue
        mask = keep_mask(param - clean[name].to(param.device), ratio, selection, generator)
        param.copy_(torch.where(mask.to(param.device), param, clean[name].to(param)))
        kept[name] = float(mask.float().mean())
    return kept


class FineMixing(BackdoorEraser):
    method: Literal["fine_mixing"] = "fine_mixing"
    ratio: float = Field(default=0.5, ge=0.0, le=1.0)  # ρ, the reserve ratio
    selection: Literal["random", "magnitude"] = "random"
    scope: Literal["all", "non_embedding"] = "all"
    NEEDS_REFERENCE: ClassVar[bool] = True
    EDIT_STAGE: ClassVar[str | None] = "mixed"

    def edit(self, loaded: LoadedModel, reference: nn.Module | None,
             clean: list[TokenizedExample], record: RunRecord) -> None:  # fmt: skip
        assert reference is not None  # validate_inputs
        kept = mix_weights(loaded.model, reference, self.ratio, self.selection, self.scope,
                           self.seed)  # fmt: skip
        record.metrics["mix/tensors"] = len(kept)
        record.metrics["mix/kept_share"] = sum(kept.values()) / max(len(kept), 1)
