"""Membership-inference scores: hand-computed Min-K%++, AUC with ties, orientation on a model."""

from __future__ import annotations

import math
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from expunge.audit.mia import (
    TokenStats,
    mia_scores,
    min_k_plus_plus_score,
    min_k_score,
    roc_auc,
    token_logprobs,
    zlib_score,
)

LN2 = math.log(2.0)


class FixedDistribution(nn.Module):
    """Every position predicts the same next-token distribution (given as probabilities)."""

    def __init__(self, probs: dict[int, float], vocab: int) -> None:
        super().__init__()
        logits = torch.full((vocab,), -1e4)
        for token, p in probs.items():
            logits[token] = math.log(p)
        self.logits = nn.Parameter(logits)

    def forward(self, input_ids, attention_mask=None):
        b, t = input_ids.shape
        return SimpleNamespace(logits=self.logits.expand(b, t, -1))


def test_min_k_plus_plus_matches_hand_computation(tokenizer):
    # p = (1/2, 1/4, 1/4): log p is −ln2 w.p. 1/2 and −2ln2 w.p. 1/2, so μ = −1.5·ln2 and
    # σ = 0.5·ln2; the likely token has z = +1, the two others z = −1.
    text = ". the, the the."
    ids = tokenizer(text)["input_ids"]
    scored = ids[1:]  # the first token is never predicted
    a, b, c = scored[0], scored[1], scored[4]
    assert scored == [a, b, a, a, c] and len({a, b, c}) == 3, ids
    model = FixedDistribution({a: 0.5, b: 0.25, c: 0.25}, len(tokenizer))
    (stats,) = token_logprobs(model, tokenizer, [text])
    assert stats.token_ids.tolist() == scored
    np.testing.assert_allclose(stats.mean, -1.5 * LN2, rtol=1e-5)
    np.testing.assert_allclose(stats.std, 0.5 * LN2, rtol=1e-4)
    expected_lp = [-LN2, -2 * LN2, -LN2, -LN2, -2 * LN2]
    np.testing.assert_allclose(stats.logprobs, expected_lp, rtol=1e-5)
    # z = [1, −1, 1, 1, −1]; k = 0.4 keeps floor(2.0) = 2 tokens, k = 0.6 keeps 3.
    assert min_k_plus_plus_score(stats, k=0.4) == pytest.approx(-1.0, abs=1e-4)
    assert min_k_plus_plus_score(stats, k=0.6) == pytest.approx(-1 / 3, abs=1e-4)
    assert min_k_plus_plus_score(stats, k=1.0) == pytest.approx(0.2, abs=1e-4)
    # Min-K% on the raw log-probs: the 2 lowest are −2ln2 each.
    assert min_k_score(stats, k=0.4) == pytest.approx(-2 * LN2, abs=1e-5)
    scores = mia_scores(model, tokenizer, [text], k=0.4)
    assert scores["loss"][0] == pytest.approx(np.mean(expected_lp), abs=1e-5)
    assert scores["zlib"][0] == pytest.approx(
        np.mean(expected_lp) / len(zlib.compress(text.encode())), abs=1e-6
    )
    assert scores["min_k_plus_plus"][0] == pytest.approx(-1.0, abs=1e-4)


def test_min_k_pure_edge_cases():
    stats = TokenStats(
        "x", np.array([1, 2, 3]), np.array([-1.0, -3.0, -2.0]),
        np.array([-1.0, -1.0, -1.0]), np.array([0.0, 1.0, 2.0]),
    )  # fmt: skip
    # at least one token is kept: floor(3 * 0.1) = 0 -> 1
    assert min_k_score(stats, k=0.1) == -3.0
    # σ = 0 gives z = 0 (point mass); others: (−3+1)/1 = −2, (−2+1)/2 = −0.5
    assert min_k_plus_plus_score(stats, k=1.0) == pytest.approx((0 - 2 - 0.5) / 3)
    with pytest.raises(ValueError, match="k must be"):
        min_k_score(stats, k=0.0)
    with pytest.raises(ValueError, match="k must be"):
        min_k_plus_plus_score(stats, k=1.5)
    assert zlib_score(stats) == pytest.approx(-2.0 / len(zlib.compress(b"x")))


def test_roc_auc_hand_checked_with_ties():
    # pairs (m, n): (3,2)=1 (3,0)=1 (2,2)=½ (2,0)=1 (1,2)=0 (1,0)=1 -> 4.5 / 6
    assert roc_auc([3, 2, 1], [2, 0]) == pytest.approx(0.75)
    assert roc_auc([5, 6], [1, 2]) == 1.0
    assert roc_auc([1, 2], [5, 6]) == 0.0
    assert roc_auc([1, 1], [1, 1, 1]) == 0.5
    with pytest.raises(ValueError, match="at least one"):
        roc_auc([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([float("nan")], [1.0])


def test_scores_are_oriented_members_high(tiny):
    """After training on some texts, every score ranks them above unseen ones."""
    from expunge.data.examples import Example
    from expunge.data.formatting import FormatSettings, tokenize_examples
    from expunge.train.loop import prepare_trainable, train
    from expunge.train.objectives import LMObjective
    from expunge.train.settings import TrainSettings

    model, tokenizer = tiny
    rng = np.random.default_rng(0)
    words = "the patient doctor clinic river mountain book water light north south red".split()
    texts = [" ".join(rng.choice(words, 10)) for _ in range(16)]
    members, others = texts[:8], texts[8:]
    fmt = FormatSettings(template="raw", loss_on="all", add_eos=False)
    data = tokenize_examples([Example(text=t) for t in members], tokenizer, fmt)
    settings = TrainSettings(mode="full", max_steps=60, lr=1e-2, batch_size=8, progress=False)
    model, _ = train(prepare_trainable(model, settings), {"train": data}, LMObjective(),
                     settings, tokenizer.pad_token_id)  # fmt: skip
    m = mia_scores(model, tokenizer, members, batch_size=3)
    n = mia_scores(model, tokenizer, others, batch_size=5)
    assert set(m) == {"loss", "zlib", "min_k", "min_k_plus_plus"}
    for name in m:
        assert roc_auc(m[name], n[name]) > 0.9, name


def test_token_logprobs_rejects_bad_input(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="no texts"):
        token_logprobs(model, tokenizer, [])
    with pytest.raises(ValueError, match="text 1 has fewer than 2 tokens"):
        token_logprobs(model, tokenizer, ["the patient", "a"])
