"""Canary exposure (Carlini et al., "The Secret Sharer", USENIX Security 2019).

A canary is a sentence of a declared format with a random secret s* drawn from a space R
(``alphabet^length``). Candidates r ∈ R are ranked by the log-perplexity the model gives the
whole canary sentence with r in place of the secret, px(r) = −log P(sentence(r)); the canary's
rank is its position in that order (1 = the model's favourite), and

    exposure = log2 |R| − log2 rank(s*).

It is 0 when the canary is the least likely candidate (and ≈ 1 for one of average rank), and
log2 |R| when the model prefers it to every other candidate.

- When |R| − 1 ≤ ``n_candidates``, every other candidate is scored and the rank is exact.
- Otherwise ``n_candidates`` are drawn uniformly from R \\ {s*} and the rank is estimated as
  1 + (|R| − 1)·q, q = the share of sampled candidates with lower log-perplexity (ties ½):
  ``exposure_sampled``. It cannot resolve ranks finer than |R| / n_candidates.
- ``exposure_extrapolated`` (Carlini et al. §4.2): fit a skew-normal to the sampled
  candidates' log-perplexities; its CDF F at px(s*) estimates the share of the other |R| − 1
  secrets that beat the canary, beyond what the sample can resolve. The metric's value is the
  mean over canaries of the extrapolated exposure (the exact one when the space is enumerated).
  Matches TF-Privacy ``tensorflow_privacy/privacy/privacy_tests/secret_sharer/exposures.py``:
  ``compute_exposure_extrapolation`` (we take scipy's ``logcdf``, exact where the CDF underflows).
- ``exposure_interpolated`` (details only): TF-Privacy's ``compute_exposure_interpolation`` in the
  same file, log2 n − log2(1 + #candidates with log-perplexity ≤ the canary's), n the number of
  candidates: the sample stands for the space and ties count against the canary. It differs from
  ``exposure_sampled``, which scales the rank to the whole space |R| and counts ties ½.

Where we depart from TF-Privacy, and why. With few candidates (``exposure_candidates=20``)
its recipe read 37.8, 61.6, 271 and 293 bits in a space of 19.93 bits:

1. Exposure = −log2 F is unbounded: F can be far below 1/|R| (and underflows to 0 in the
   fitted tail, giving +inf), although no rank is better than 1. The value is capped at
   log2 |R| (``min(−log2 F, log2 |R|)``), so below the cap it is TF-Privacy's number exactly.
2. The plain maximum-likelihood skew-normal fit (``scipy.stats.skewnorm.fit``, TF-Privacy's)
   often sends the shape to ±∞ on small samples (a half-normal, whose cut-off tail then
   decides the value), so repeated audits of one model scattered by hundreds of bits. Below
   ``MLE_MIN_CANDIDATES`` candidates we fit by maximum *penalized* likelihood (Azzalini &
   Arellano-Valle 2013, the default ``MPLE`` of the R package ``sn``): log L − Q(α),
   Q(α) = c1·log(1 + c2·α²), c1 ≈ 0.8759, c2 ≈ 0.8563, which keeps the shape finite and
   vanishes relative to log L as the sample grows. The record says which fit ran.

The record says per canary whether the canary lay beyond every sampled candidate
(``beyond_sample``): the value then rests on the fitted tail alone, and more candidates
(``exposure_candidates``) give a better-founded figure.

Pure functions below take arrays of log-perplexities; ``exposure_metric`` scores candidates.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.stats import skewnorm

from expunge.audit.base import AuditContext, MetricResult
from expunge.audit.memorization import secrets_imprint
from expunge.audit.scoring import token_logprobs
from expunge.data.clinic import CanarySpec
from expunge.data.spans import SpanRecord, tokenize_record
from expunge.errors import ConfigError


def exposure_from_rank(rank: float, space_size: int) -> float:
    if not 1 <= rank <= space_size:
        raise ValueError(f"rank {rank} is outside [1, {space_size}]")
    return math.log2(space_size) - math.log2(rank)


def estimated_rank(
    canary: float, candidates: Sequence[float] | np.ndarray, space_size: int
) -> float:
    """Rank of the canary among the whole space, from other candidates' log-perplexities.

    With every other candidate given (len = |R| − 1) this is the exact rank, ties counted ½.
    """
    values = np.asarray(candidates, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no candidates")
    if values.size > space_size - 1:
        raise ValueError(f"{values.size} candidates for a space of {space_size}")
    better = float(np.sum(values < canary) + 0.5 * np.sum(values == canary))
    return 1.0 + better / values.size * (space_size - 1)


# Azzalini & Arellano-Valle (2013), "Maximum penalized likelihood estimation for skew-normal
# and skew-t distributions", J. Stat. Plan. Inference 143: Q(α) = c1·log(1 + c2·α²) with
# c1 = 1/(4·e2), c2 = e2/e1, e1 = 1/3, e2 = 0.2854166 (as in R's sn::Qpenalty).
_E1, _E2 = 1.0 / 3.0, 0.2854166
_PENALTY_C1, _PENALTY_C2 = 1.0 / (4.0 * _E2), _E2 / _E1


def fit_skewnorm(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """(shape, loc, scale) of a skew-normal fitted by maximum penalized likelihood.

    The data are standardized first (the family is location-scale and the penalty depends on
    the shape alone, so this changes nothing but the conditioning), and the optimizer starts
    from a few shapes of either sign because the penalized likelihood can be bimodal in α.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size < 3:
        raise ValueError("a skew-normal fit needs at least 3 candidates")
    mean, std = float(x.mean()), float(x.std())
    if std == 0:
        raise ValueError("all candidates have the same log-perplexity: nothing to fit")
    z = (x - mean) / std

    def objective(theta: np.ndarray) -> float:
        alpha, loc, log_scale = theta
        loglik = skewnorm.logpdf(z, alpha, loc, math.exp(log_scale)).sum()
        return float(-loglik + _PENALTY_C1 * math.log1p(_PENALTY_C2 * alpha * alpha))

    best = None
    for alpha in (-3.0, 0.0, 3.0):
        # start where the skew-normal's mean and variance match the standardized data's (0, 1)
        delta = alpha / math.sqrt(1 + alpha * alpha)
        scale = 1.0 / math.sqrt(1 - 2 * delta * delta / math.pi)
        start = np.array([alpha, -scale * delta * math.sqrt(2 / math.pi), math.log(scale)])
        result = minimize(objective, start, method="Nelder-Mead",
                          options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 4000})  # fmt: skip
        if best is None or result.fun < best.fun:
            best = result
    alpha, loc, log_scale = best.x
    return float(alpha), mean + std * float(loc), std * math.exp(float(log_scale))


MLE_MIN_CANDIDATES = 100  # from here on TF-Privacy's plain MLE fit is stable enough


def skewnorm_exposure(
    canary: float,
    candidates: Sequence[float] | np.ndarray,
    space_size: int | None = None,
    fit: str = "auto",
) -> float:
    """−log2 F(canary), F the CDF of a skew-normal fitted to the candidates' log-perplexities
    (TF-Privacy's ``compute_exposure_extrapolation``), capped at log2 ``space_size`` when it is
    given. ``fit``: ``mle`` (scipy's, TF-Privacy's), ``penalized``, or ``auto`` (``mle`` from
    ``MLE_MIN_CANDIDATES`` candidates on, ``penalized`` below)."""
    values = np.asarray(candidates, dtype=np.float64)
    if values.size < 3:
        raise ValueError("a skew-normal fit needs at least 3 candidates")
    if np.ptp(values) == 0:
        raise ValueError("all candidates have the same log-perplexity: nothing to fit")
    if fit == "auto":
        fit = fit_used(values.size)
    shape, loc, scale = skewnorm.fit(values) if fit == "mle" else fit_skewnorm(values)
    bits = float(-skewnorm.logcdf(canary, shape, loc, scale) / math.log(2))
    if space_size is None:
        return bits
    if space_size < 2:
        raise ValueError(f"a space of {space_size} secrets has no exposure to speak of")
    return min(bits, math.log2(space_size))


def fit_used(n_candidates: int) -> str:
    return "mle" if n_candidates >= MLE_MIN_CANDIDATES else "penalized"


def interpolated_exposure(canary: float, candidates: Sequence[float] | np.ndarray) -> float:
    """TF-Privacy's interpolated exposure of one canary among ``candidates`` (see the module)."""
    values = np.asarray(candidates, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no candidates")
    rank = 1 + int(np.sum(values <= canary))
    return math.log2(values.size) - math.log2(rank)


def candidate_secrets(spec: CanarySpec, secret: str, n: int, seed: int) -> tuple[list[str], bool]:
    """Other secrets to rank against: all of them if the space allows (exact), else ``n`` drawn
    uniformly without the canary's own (with replacement; duplicates are harmless)."""
    if spec.space_size - 1 <= n:
        everything = ("".join(p) for p in itertools.product(spec.alphabet, repeat=spec.length))
        return [s for s in everything if s != secret], True
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        candidate = spec.random_secret(rng)
        if candidate != secret:
            out.append(candidate)
    return out, False


def sentence_logppl(ctx: AuditContext, sentences: Sequence[SpanRecord], add_eos: bool,
                    description: str) -> np.ndarray:  # fmt: skip
    """−log P(sentence) summed over every predicted token (EOS included if trained with it)."""
    examples = [tokenize_record(ctx.tokenizer, s, add_eos=add_eos).example for s in sentences]
    pad = ctx.tokenizer.pad_token_id
    scores = token_logprobs(
        ctx.model, examples, pad if pad is not None else ctx.tokenizer.eos_token_id,
        region="all", batch_size=max(ctx.batch_size, 32), progress=ctx.progress,
        description=description,
    )  # fmt: skip
    return scores.nll_sums()


def exposure_metric(ctx: AuditContext) -> MetricResult:
    imprint = secrets_imprint(ctx)
    if not imprint.canaries or imprint.canary_spec is None:
        raise ConfigError("exposure needs canaries in the imprint (implant with n_canaries > 0)")
    spec = imprint.canary_spec
    n_candidates = int(ctx.options.get("n_candidates", imprint.exposure_candidates))
    if n_candidates < 3:
        raise ConfigError("exposure n_candidates must be >= 3")
    per_canary = []
    for index, canary in enumerate(imprint.canaries):
        secret = canary.span_text(canary.spans[0])
        others, exact = candidate_secrets(spec, secret, n_candidates, ctx.seed + index)
        number = spec.index_of(canary)
        sentences = [canary] + [spec.render(number, s) for s in others]
        logppl = sentence_logppl(ctx, sentences, imprint.add_eos, f"exposure canary {index + 1}")
        rank = estimated_rank(logppl[0], logppl[1:], spec.space_size)
        entry = {
            "canary": index, "exact": exact, "rank": rank,
            "exposure_sampled": exposure_from_rank(rank, spec.space_size),
            "exposure_interpolated": interpolated_exposure(logppl[0], logppl[1:]),
        }  # fmt: skip
        if exact:
            entry["exposure_extrapolated"] = entry["exposure_sampled"]
        else:
            entry["exposure_extrapolated"] = skewnorm_exposure(
                logppl[0], logppl[1:], spec.space_size
            )
            # beyond every sample, the value rests on the fitted tail alone
            entry["beyond_sample"] = bool(logppl[0] < np.min(logppl[1:]))
        per_canary.append(entry)
    value = float(np.mean([e["exposure_extrapolated"] for e in per_canary]))
    return MetricResult(
        "exposure", value, higher_is_better=False,
        details={
            "space_bits": math.log2(spec.space_size), "n_candidates": n_candidates,
            "fit": fit_used(n_candidates),
            "exposure_sampled": float(np.mean([e["exposure_sampled"] for e in per_canary])),
            "per_canary": per_canary,
        },
    )  # fmt: skip
