"""Membership-inference scores: is a text one the model was trained on?

Each score is a number per text, oriented so that HIGHER means "more likely a member" (the
Min-K%++ authors' orientation; open-unlearning and MUSE store the negated value, "higher = less
likely a member", and flip it back when they score the AUC):

- ``loss``: the mean token log-likelihood, −(1/T)·Σ_t −log p(x_t | x_<t) (Yeom et al., 2018).
  Matches ``scores['loss']`` of the Min-K%++ authors' ``run.py`` (zjysteven/mink-plus-plus) and
  the negated ``LOSSAttack`` score of open-unlearning ``src/evals/metrics/mia/loss.py``.
- ``zlib``: the mean log-likelihood divided by the zlib-compressed length of the text in bytes
  (Carlini et al., "Extracting Training Data from Large Language Models", USENIX Sec. 2021):
  −NLL/zlib, so a text that is likely *for how compressible it is* scores high. Matches
  ``scores['zlib']`` of the Min-K%++ authors' ``run.py`` and the negated ``ZLIBAttack`` of
  open-unlearning ``src/evals/metrics/mia/zlib.py``.
- ``min_k``: Min-K% Prob (Shi et al., ICLR 2024): the mean of the lowest k·T token log-probs.
  Matches the Min-K% authors' ``src/run.py`` (swj0419/detect-pretrain-code), MUSE's
  ``metrics/privleak.py`` (``Min-40%`` is k = 0.4) and open-unlearning
  ``src/evals/metrics/mia/min_k.py`` (negated).
- ``min_k_plus_plus``: Min-K%++ (Zhang et al., ICLR 2025): each token's log-prob standardized by
  the model's own next-token distribution at that position,
  z_t = (log p(x_t) − μ_t) / σ_t with μ_t = E_{z~p(·|x_<t)}[log p(z)] and
  σ_t² = E[(log p(z))²] − μ_t², then the mean of the lowest k·T of the z_t. Matches
  ``scores['mink++_k']`` of the authors' ``run.py`` and open-unlearning
  ``src/evals/metrics/mia/min_k_plus_plus.py`` (negated).

Two guards come from open-unlearning, not from the authors: Min-K% and Min-K%++ keep
``max(1, int(k·T))`` tokens (the authors' and MUSE's ``int(len * ratio)`` keeps none when
k·T < 1, and the mean of nothing is NaN), and σ_t² is clamped at 1e-6 before the square root
(the authors divide by σ_t = 0 at a position whose next-token distribution is a point mass).
Both change nothing when k·T ≥ 1 and σ_t ≥ 1e-3.

``roc_auc`` is ``sklearn.metrics.roc_auc_score`` with the members as the positive class:
P(member score > non-member score) + ½·P(tie) — the area open-unlearning
(``src/evals/metrics/mia/utils.py``) and the Min-K%++ authors report, and 1 − the area MUSE
reports (MUSE labels the forget set 0; see ``expunge.audit.privleak``).

The model is called only in ``token_logprobs`` (through ``expunge.audit.scoring``); every other
function here is pure and tested on hand-made arrays.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score
from torch import nn
from transformers import PreTrainedTokenizerBase

from expunge.audit import scoring
from expunge.audit.base import AuditContext, MetricResult
from expunge.data.formatting import TokenizedExample
from expunge.errors import ConfigError

SCORES = ("loss", "zlib", "min_k", "min_k_plus_plus")
MIN_VARIANCE = 1e-6  # open-unlearning's clamp of σ_t² in Min-K%++


@dataclass
class TokenStats:
    """One text's scored tokens (every token after the first), in sequence order."""

    text: str
    token_ids: np.ndarray  # the scored (next) tokens
    logprobs: np.ndarray  # log p(x_t | x_<t) of the actual next token
    mean: np.ndarray  # μ_t = E_{z~p}[log p(z)] at each position
    std: np.ndarray  # σ_t, the standard deviation of log p(z) under p

    def __post_init__(self) -> None:
        n = self.logprobs.shape
        if self.mean.shape != n or self.std.shape != n or self.token_ids.shape != n:
            raise ValueError("token_ids, logprobs, mean and std must have one entry per token")


def tokenize_text(tokenizer: PreTrainedTokenizerBase, text: str) -> TokenizedExample:
    """The tokenizer's own special tokens (e.g. BOS), then the text; every token is a label."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    return TokenizedExample(list(ids), list(ids), 0)


def token_logprobs(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 8
) -> list[TokenStats]:
    """Per-token statistics of each text under ``model`` (batched forward passes)."""
    if not texts:
        raise ValueError("no texts to score")
    examples = [tokenize_text(tokenizer, text) for text in texts]
    for index, example in enumerate(examples):
        if len(example.input_ids) < 2:
            raise ValueError(f"text {index} has fewer than 2 tokens: nothing to score")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scores = scoring.token_logprobs(
        model, examples, pad, region="all", batch_size=batch_size, with_distribution=True
    )
    assert scores.mean_logprob is not None and scores.std_logprob is not None
    assert scores.token_ids is not None
    return [
        TokenStats(text, ids, lp, mu, sd)
        for text, ids, lp, mu, sd in zip(
            texts, scores.token_ids, scores.logprobs, scores.mean_logprob, scores.std_logprob,
            strict=True,
        )
    ]  # fmt: skip


def _lowest_mean(values: np.ndarray, k: float) -> float:
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    if values.size == 0:
        raise ValueError("no tokens to score")
    count = max(1, int(values.size * k))
    return float(np.mean(np.sort(values)[:count]))


def loss_score(stats: TokenStats) -> float:
    """Mean log-likelihood per token (= −loss)."""
    if stats.logprobs.size == 0:
        raise ValueError("no tokens to score")
    return float(np.mean(stats.logprobs))


def zlib_score(stats: TokenStats) -> float:
    """−(mean NLL) / zlib-compressed length in bytes."""
    compressed = len(zlib.compress(stats.text.encode("utf-8")))
    return loss_score(stats) / compressed


def min_k_score(stats: TokenStats, k: float = 0.2) -> float:
    return _lowest_mean(stats.logprobs, k)


def min_k_plus_plus_score(stats: TokenStats, k: float = 0.2) -> float:
    z = (stats.logprobs - stats.mean) / np.maximum(stats.std, np.sqrt(MIN_VARIANCE))
    return _lowest_mean(z, k)


def scores_from_stats(stats: Sequence[TokenStats], k: float = 0.2) -> dict[str, list[float]]:
    """All four scores of each text (higher = more likely a member)."""
    return {
        "loss": [loss_score(s) for s in stats],
        "zlib": [zlib_score(s) for s in stats],
        "min_k": [min_k_score(s, k) for s in stats],
        "min_k_plus_plus": [min_k_plus_plus_score(s, k) for s in stats],
    }


def mia_scores(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    batch_size: int = 8,
    k: float = 0.2,
) -> dict[str, list[float]]:
    """``loss``, ``zlib``, ``min_k`` and ``min_k_plus_plus`` of each text, higher = member."""
    return scores_from_stats(token_logprobs(model, tokenizer, texts, batch_size), k)


def roc_auc(member_scores: Sequence[float], nonmember_scores: Sequence[float]) -> float:
    """Area under the ROC curve of "member" vs "non-member"; ties count one half."""
    members = np.asarray(member_scores, dtype=np.float64)
    others = np.asarray(nonmember_scores, dtype=np.float64)
    if members.size == 0 or others.size == 0:
        raise ValueError("roc_auc needs at least one member and one non-member score")
    if np.isnan(members).any() or np.isnan(others).any():
        raise ValueError("roc_auc got NaN scores")
    labels = np.concatenate([np.ones(members.size), np.zeros(others.size)])
    return float(roc_auc_score(labels, np.concatenate([members, others])))


def mia_metric(ctx: AuditContext) -> MetricResult:
    """AUC of each score, training records (members) vs the imprint's held-out records.

    The value is the largest of the four AUCs: the strongest of these attacks. 0.5 = no signal.
    """
    from expunge.audit.memorization import secrets_imprint

    imprint = secrets_imprint(ctx)
    if not imprint.heldout:
        raise ConfigError("mia needs held-out records in the imprint ('heldout')")
    k = float(ctx.options.get("k", 0.2))
    members = [r.text for r in imprint.records]
    others = [r.text for r in imprint.heldout]
    m = mia_scores(ctx.model, ctx.tokenizer, members, ctx.batch_size, k)
    n = mia_scores(ctx.model, ctx.tokenizer, others, ctx.batch_size, k)
    aucs = {name: roc_auc(m[name], n[name]) for name in SCORES}
    strongest = max(aucs, key=lambda name: aucs[name])
    return MetricResult(
        "mia", aucs[strongest], higher_is_better=False,
        details={"auc": aucs, "strongest": strongest, "k": k, "n_members": len(members),
                 "n_nonmembers": len(others)},
    )  # fmt: skip
