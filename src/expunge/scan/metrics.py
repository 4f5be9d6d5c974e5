"""How well scores separate poisoned rows from clean ones: AUROC and TPR at a fixed FPR.

Pure functions of (labels, scores) with higher scores meaning "more likely poisoned"; both use
``sklearn.metrics``. A set with a single class has no ROC: both return None.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def _checked(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    y, s = np.asarray(labels, dtype=int), np.asarray(scores, dtype=float)
    if y.shape != s.shape:
        raise ValueError(f"{s.size} scores for {y.size} labels")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y, s


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    y, s = _checked(labels, scores)
    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, s))


def tpr_at_fpr(labels: Sequence[int], scores: Sequence[float], fpr: float = 0.05) -> float | None:
    """The largest true-positive rate among thresholds whose false-positive rate is ≤ ``fpr``
    (no interpolation: a threshold the scores cannot realise does not count)."""
    y, s = _checked(labels, scores)
    if len(np.unique(y)) < 2:
        return None
    false_pos, true_pos, _ = roc_curve(y, s)
    return float(true_pos[false_pos <= fpr + 1e-12].max())


def flag_quality(labels: Sequence[int], flagged: Sequence[bool]) -> dict[str, float | None]:
    """Precision and recall of a set of flagged rows."""
    y, f = np.asarray(labels, dtype=bool), np.asarray(flagged, dtype=bool)
    hits = int((y & f).sum())
    return {
        "precision": hits / int(f.sum()) if f.any() else None,
        "recall": hits / int(y.sum()) if y.any() else None,
    }
