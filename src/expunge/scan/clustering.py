"""Activation clustering (Chen et al., "Detecting Backdoor Attacks on Deep Neural Networks by
Activation Clustering", SafeAI 2019), as a baseline scorer for poisoned instruction data.

Reduce the rows' hidden states to ``components`` dimensions (the paper uses ICA to 10; we use
PCA, which scikit-learn computes deterministically), split them into two clusters with
k-means, and call the smaller cluster poisoned when its share of the rows is at most
``max_share`` (the paper's relative-size criterion). The paper clusters per class; a generative
training set has no classes, so all rows form one group (our adaptation). The score, for
ranking: how much closer a row is to the smaller cluster's centre than to the larger one's,

    score_i = ‖z_i − c_large‖ − ‖z_i − c_small‖.

Representation as in ``spectral``: the last layer's states averaged over the response tokens
by default.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA

from expunge.config import StrictModel
from expunge.scan.base import ScanContext, ScorerResult


def cluster_scores(
    features: np.ndarray, components: int, seed: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """(scores, in-smaller-cluster mask, the smaller cluster's share of the rows)."""
    n_comp = max(1, min(components, features.shape[0] - 1, features.shape[1]))
    reduced = PCA(n_components=n_comp, random_state=seed).fit_transform(features)
    km = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(reduced)
    sizes = np.bincount(km.labels_, minlength=2)
    small = int(np.argmin(sizes))
    distance = np.linalg.norm(reduced[:, None, :] - km.cluster_centers_[None], axis=-1)
    scores = distance[:, 1 - small] - distance[:, small]
    return scores, km.labels_ == small, float(sizes[small] / sizes.sum())


class Clustering(StrictModel):
    layer: int = -1
    position: Literal["prompt_end", "response_mean"] = "response_mean"
    components: int = Field(default=10, ge=1)
    max_share: float = Field(default=0.35, gt=0.0, le=0.5)  # smaller cluster ≤ this: poisoned

    def score(self, ctx: ScanContext) -> ScorerResult:
        features = ctx.states(self.layer, self.position)
        scores, small, share = cluster_scores(features.astype(np.float64), self.components,
                                              ctx.seed)  # fmt: skip
        flagged = small if share <= self.max_share else np.zeros(len(scores), dtype=bool)
        return ScorerResult(scores, flagged, {"layer": self.layer, "position": self.position,
                                              "smaller_cluster_share": share,
                                              "flag_rule": f"smaller cluster if ≤ {self.max_share}"})  # fmt: skip
