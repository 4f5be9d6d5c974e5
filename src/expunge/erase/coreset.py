"""Coreset selection of the forget set: unlearn with a small share of it.

Pal et al., *LLM Unlearning Reveals a Stronger-Than-Expected Coreset Effect in Current
Benchmarks*, 2025: NPO and RMU unlearning with a random 5% of the forget set (WMDP, MUSE)
matches unlearning with all of it — *given the same number of optimizer steps*. So the default
here is to match the step budget: the coreset trains for as many steps as ``train.epochs`` over
the full forget set would take (``match_steps=true``); ``match_steps=false`` trains epochs over
the coreset instead (far fewer steps — the comparison the paper warns against).

Selectors: ``random`` (seeded, uniform without replacement). The paper's other selectors
(GraNd, Moderate, Min-K% prob) and keyword extraction are not built yet.
"""

from __future__ import annotations

import random
from typing import Literal, TypeVar

from pydantic import Field

from expunge.config import StrictModel
from expunge.errors import DataError

T = TypeVar("T")


class CoresetSettings(StrictModel):
    method: Literal["none", "random"] = "none"
    ratio: float = Field(default=0.05, gt=0.0, le=1.0)
    match_steps: bool = True


def coreset_size(n: int, ratio: float) -> int:
    """round(ratio·n), at least one example."""
    if n < 1:
        raise DataError("cannot select a coreset of an empty forget set")
    return min(n, max(1, round(ratio * n)))


def random_coreset(examples: list[T], ratio: float, seed: int = 0) -> list[T]:
    """A seeded uniform sample of ``ratio`` of ``examples``, in their original order."""
    chosen = random.Random(seed).sample(range(len(examples)), coreset_size(len(examples), ratio))
    return [examples[i] for i in sorted(chosen)]
