"""Embedding purification (E-PUR's reset; ``erase/backdoor/epur.py`` has the paper and equation).

    score_k = δ_k / log max(f_k, c),    δ_k = ‖e_B[k] − e_0[k]‖₂

and the ``top_k`` highest-scoring input-embedding rows are reset to the reference's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from expunge.data.formatting import TokenizedExample
from expunge.errors import ConfigError
from expunge.lazy import lazy, no_grad

if TYPE_CHECKING:
    import torch
    from torch import nn
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    nn = lazy("torch.nn")
    torch = lazy("torch")


def epur_scores(
    backdoored: torch.Tensor, clean: torch.Tensor, counts: torch.Tensor, min_count: float = 20.0
) -> torch.Tensor:
    """score_k = ‖backdoored[k] − clean[k]‖ / log max(counts[k], min_count), per row k."""
    if min_count <= 1:
        raise ConfigError(f"min_count must be > 1 (log of it divides), got {min_count}")
    if backdoored.shape != clean.shape or counts.shape != backdoored.shape[:1]:
        raise ValueError(
            f"shapes differ: {tuple(backdoored.shape)}, {tuple(clean.shape)}, {tuple(counts.shape)}"
        )
    delta = (backdoored.double() - clean.double()).norm(dim=1)
    return delta / torch.log(counts.double().clamp(min=min_count))


@no_grad
def purify_embeddings(
    model: nn.Module,
    reference: nn.Module,
    clean: list[TokenizedExample],
    top_k: int = 100,
    min_count: float = 20.0,
) -> list[int]:
    """Reset the ``top_k`` highest-scoring input-embedding rows to the reference; return their ids."""
    weight = model.get_input_embeddings().weight
    ref = reference.get_input_embeddings().weight.to(weight.device)
    counts = token_counts(clean, weight.shape[0])
    scores = epur_scores(weight, ref, counts.to(weight.device), min_count)
    k = min(top_k, weight.shape[0])
    flagged = torch.topk(scores, k).indices
    weight[flagged] = ref[flagged].to(weight.dtype)
    return sorted(flagged.tolist())


@no_grad
def token_counts(clean: list[TokenizedExample], vocab_size: int) -> torch.Tensor:
    """How often each token id occurs in the clean set (E-PUR's f_k)."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for example in clean:
        ids = torch.tensor([i for i in example.input_ids if 0 <= i < vocab_size], dtype=torch.long)
        counts.index_add_(0, ids, torch.ones(len(ids), dtype=torch.float64))
    return counts
