"""Accuracy with confidence intervals: Wilson score and a bootstrap over prompts.

Responses to one prompt are not independent (the same prompt, often similar answers), so the
Wilson interval, which counts every response as a trial, is too narrow when there are several
samples per prompt. The cluster bootstrap resamples *prompts* with replacement and recomputes
the accuracy over their responses; it is the interval ``expunge detect`` reports first.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from expunge.lazy import lazy

if TYPE_CHECKING:
    import numpy as np
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    np = lazy("numpy")


Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n``."""
    if n <= 0:
        raise ValueError("a proportion of zero trials has no interval")
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} outside [0, {n}]")
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def cluster_bootstrap_interval(
    correct: np.ndarray, groups: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile interval of the accuracy when whole groups (prompts) are resampled."""
    correct = np.asarray(correct, dtype=np.float64)
    groups = np.asarray(groups)
    if correct.shape != groups.shape or correct.size == 0:
        raise ValueError("correct and groups must be non-empty arrays of the same shape")
    names, index = np.unique(groups, return_inverse=True)
    sums = np.bincount(index, weights=correct, minlength=len(names))
    counts = np.bincount(index, minlength=len(names)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(n_boot, len(names)))
    accuracies = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(accuracies, [tail, 100 - tail])
    return float(low), float(high)
