"""Spectral signatures (Tran, Li & Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS
2018), as a baseline scorer for poisoned instruction data.

Poisoned rows leave a trace along the top singular direction of the centred representations:
with R the (n_rows × d) hidden states minus their mean and v its top right singular vector,

    score_i = ⟨R_i, v⟩²

and the rows with the ``1.5·ε·n`` largest scores are flagged (ε = ``expected_rate``, an upper
bound of the poison rate the defender assumes; 1.5 is the paper's factor). The paper works per
class of a classifier; a generative training set has no classes, so all rows form one group
(our adaptation). Representation: the hidden states of ``layer`` (default the last) averaged
over the row's response tokens (``position=response_mean``) or at the last prompt token
(``prompt_end``), of the model trained on the rows.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from expunge.config import StrictModel
from expunge.scan.base import ScanContext, ScorerResult


def spectral_scores(features: np.ndarray) -> np.ndarray:
    """⟨R_i, v⟩² with R the centred features and v their top right singular vector."""
    centred = features - features.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[0]) ** 2


def top_share(scores: np.ndarray, share: float) -> np.ndarray:
    """The ``round(share·n)`` highest scores (at least one), as a boolean mask."""
    count = min(len(scores), max(1, round(share * len(scores))))
    flagged = np.zeros(len(scores), dtype=bool)
    flagged[np.argsort(-scores, kind="stable")[:count]] = True
    return flagged


class Spectral(StrictModel):
    layer: int = -1  # index into the model's hidden_states (-1: the last layer)
    position: Literal["prompt_end", "response_mean"] = "response_mean"
    expected_rate: float = Field(default=0.1, gt=0.0, lt=1.0)  # ε: flag 1.5·ε of the rows

    def score(self, ctx: ScanContext) -> ScorerResult:
        features = ctx.states(self.layer, self.position)
        scores = spectral_scores(features.astype(np.float64))
        flagged = top_share(scores, min(1.5 * self.expected_rate, 1.0))
        return ScorerResult(scores, flagged, {"layer": self.layer, "position": self.position,
                                              "flag_rule": f"top 1.5·{self.expected_rate}"})  # fmt: skip
