"""Splits grouped by prompt: responses to one prompt never sit on both sides.

The trace-detection paper's "eval" split was drawn from the training data (METHODS.md §5.4);
with several responses per prompt, even a disjoint *response* split leaks: the classifier
learns the prompt's topic, not the model. Here every fold holds out whole prompts — both
models' responses to them — and the detectors are scored on out-of-fold predictions only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from expunge.errors import DataError
from expunge.lazy import lazy

if TYPE_CHECKING:
    import numpy as np
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    np = lazy("numpy")


def check_prompt_count(name: str, n_prompts: int, folds: int, min_prompts: int) -> None:
    """A prompt set too small for a grouped split is an input error, said before any work."""
    needed = max(folds, min_prompts, 2)
    if n_prompts < needed:
        raise DataError(
            f"prompt set {name!r} has {n_prompts} distinct prompts; a split grouped by prompt "
            f"into {folds} folds needs at least {needed} (min_prompts={min_prompts}): give more "
            f"prompts, or lower folds / min_prompts"
        )


def grouped_folds(
    groups: np.ndarray, folds: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` (train_indices, test_indices) pairs; each group lies in exactly one test fold.

    Groups are shuffled with ``seed`` and dealt round-robin, so fold sizes differ by at most
    one group.
    """
    groups = np.asarray(groups)
    names = np.unique(groups)
    if folds < 2:
        raise DataError(f"a grouped split needs folds >= 2, got {folds}")
    if len(names) < folds:
        raise DataError(f"{len(names)} groups cannot fill {folds} folds")
    order = np.random.default_rng(seed).permutation(names)
    fold_of = {name: i % folds for i, name in enumerate(order)}
    assignment = np.array([fold_of[g] for g in groups])
    return [
        (np.flatnonzero(assignment != k), np.flatnonzero(assignment == k)) for k in range(folds)
    ]
