"""Weight mixing with a reference checkpoint (Fine-mixing's θ_mix; ``erase/backdoor/fine_mixing.py``).

    θ_mix = θ_0 + m ⊙ (θ_B − θ_0),    m ∈ {0, 1}, a share ρ of ones per tensor

computed as ``where(m, θ_B, θ_0)``, so that ρ = 1 gives θ_B and ρ = 0 gives θ_0 bit for bit.
m keeps, per tensor, a random share (``random``), the largest |θ_B − θ_0| (``magnitude``), or the
largest F ⊙ (θ_B − θ_0)² (``fisher``, F the diagonal Fisher of θ_B on the clean set,
``erase/ops/fisher.py``): the coordinates whose return to θ_0 would cost the clean task most,
to second order. With F constant it is ``magnitude``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from expunge.errors import ConfigError
from expunge.lazy import lazy, no_grad

if TYPE_CHECKING:
    import torch
    from torch import nn
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    nn = lazy("torch.nn")
    torch = lazy("torch")


SELECTIONS = ("random", "magnitude", "fisher")


def keep_mask(
    delta: torch.Tensor, ratio: float, selection: str, generator: torch.Generator,
    fisher: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Boolean mask of ``delta``'s shape with exactly round(ratio·n) True entries."""
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"the reserve ratio must be in [0, 1], got {ratio}")
    if selection not in SELECTIONS:
        raise ConfigError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    if selection == "fisher" and fisher is None:
        raise ConfigError("selection=fisher needs the Fisher of the clean set")
    n = delta.numel()
    k = round(ratio * n)
    mask = torch.zeros(n, dtype=torch.bool)
    if selection == "random":
        kept = torch.randperm(n, generator=generator)[:k]
    else:
        score = delta.detach().float()
        score = score.abs() if selection == "magnitude" else fisher.to(score) * score.square()
        kept = torch.topk(score.flatten().cpu(), k).indices
    mask[kept] = True
    return mask.view_as(delta)


def embedding_parameters(model: nn.Module) -> set[int]:
    """ids of every embedding table (token, position, token type) of the model."""
    found = {id(model.get_input_embeddings().weight)}
    found |= {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return found


@no_grad
def mix_weights(
    model: nn.Module,
    reference: nn.Module,
    ratio: float,
    selection: str = "random",
    scope: str = "all",
    seed: int = 0,
    fisher: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """θ ← where(m, θ_B, θ_0) for every parameter in scope, in place; returns the kept share.
    ``fisher`` (``selection=fisher``): the diagonal Fisher of θ_B by parameter name."""
    if scope not in {"all", "non_embedding"}:
        raise ConfigError(f"scope must be 'all' or 'non_embedding', got {scope!r}")
    generator = torch.Generator().manual_seed(seed)
    skip = embedding_parameters(model) if scope == "non_embedding" else set()
    clean = dict(reference.named_parameters())
    kept = {}
    for name, param in model.named_parameters():  # tied tensors appear once
        if id(param) in skip:
            continue
        mask = keep_mask(param - clean[name].to(param.device), ratio, selection, generator,
                         fisher[name] if fisher is not None else None)  # fmt: skip
        param.copy_(torch.where(mask.to(param.device), param, clean[name].to(param)))
        kept[name] = float(mask.float().mean())
    return kept
