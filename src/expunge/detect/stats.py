"""Accuracy with confidence intervals (Wilson score, a bootstrap over prompts) and a permutation
test against chance.

Responses to one prompt are not independent (the same prompt, often similar answers), so the
Wilson interval, which counts every response as a trial, is too narrow when there are several
samples per prompt. The cluster bootstrap resamples *prompts* with replacement and recomputes
the accuracy over their responses; it is the interval ``expunge detect`` reports first.

Neither interval counts the variance of the detectors themselves: every out-of-fold prediction
of a fold comes from one fitted classifier, and a classifier fitted on noise is wrong (or right)
on many prompts at once. On two samples of one distribution the bootstrap interval excluded 50%
in 7–20% of simulated runs, from above or below (``docs/results/``, detection). Whether an
accuracy is above chance is therefore a permutation test: the labels are shuffled within each
prompt (under "both models answer alike" any assignment of a prompt's responses to the two
models is as likely as the observed one), the whole cross-validation is run again, and the
p-value counts the shuffles that scored at least as well (Phipson & Smyth, 2010, eq. 2).
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


def within_group_permutation(
    labels: np.ndarray, groups: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """``labels`` shuffled among the responses of each group (prompt): each prompt keeps its
    count of each label, so a prompt's topic cannot carry a shuffled label."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    if labels.shape != groups.shape:
        raise ValueError("labels and groups must have the same shape")
    shuffled = labels.copy()
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        shuffled[members] = labels[rng.permutation(members)]
    return shuffled


def permutation_p_value(observed: float, null: np.ndarray) -> float:
    """One-sided Monte Carlo p-value, (1 + #{null ≥ observed}) / (1 + n): never 0, exact in
    level for any number of permutations (Phipson & Smyth, 2010)."""
    null = np.asarray(null, dtype=np.float64)
    if null.size == 0:
        raise ValueError("a permutation p-value needs at least one permutation")
    # accuracies are counts over n responses: a tie must count, whatever the float rounding
    at_least = int(np.sum(null >= observed - 1e-9))
    return (1 + at_least) / (1 + null.size)
