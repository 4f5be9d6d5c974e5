"""E-PUR — embedding purification (Zhang et al., "Fine-mixing: Mitigating Backdoors in
Fine-tuned Language Models", Findings of EMNLP 2022, §3.3).

Trigger words are rare, so poisoned fine-tuning moves their embeddings far while ordinary
tokens' rows barely move relative to how often they were seen. For every token k:

    score_k = δ_k / log max(f_k, c),    δ_k = ‖e_B[k] − e_0[k]‖₂

with e_B the backdoored and e_0 the clean pre-trained input embeddings, f_k the count of k in
the defender's clean data and c (``min_count``, default 20) a floor that keeps the log
positive and stops never-seen tokens from dividing by zero. The ``top_k`` highest-scoring rows
are reset to e_0. Neither the normalizer's floor nor how many rows to reset is pinned down by
public code (none was released): both are knobs [paper + unverified details].

Tied input/output embeddings (SmolLM2, Qwen2) share the row, so the output head's row is reset
too; an untied output head is left alone. E-PUR is applied before any other method
(``epur=true`` on every backdoor eraser) or alone (``expunge erase epur``: reset, then clean
fine-tuning).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from expunge.data.formatting import TokenizedExample
from expunge.erase.clean_tuning import BackdoorEraser, token_counts
from expunge.errors import ConfigError


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


@torch.no_grad()
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


class Epur(BackdoorEraser):
    """E-PUR alone: reset the flagged embedding rows to θ_0, then fine-tune on the clean set."""

    method: Literal["epur"] = "epur"
    epur: bool = True
