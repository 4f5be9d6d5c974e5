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
  candidates' log-perplexities and take exposure = −log2 F(px(s*)), F its CDF — the share of the
  space expected to beat the canary, extrapolated beyond the sample. The metric's value is the
  mean over canaries of the extrapolated exposure (the exact one when the space is enumerated).
  Matches TF-Privacy ``tensorflow_privacy/privacy/privacy_tests/secret_sharer/exposures.py``:
  ``compute_exposure_extrapolation`` (we take scipy's ``logcdf``, exact where the CDF underflows).
- ``exposure_interpolated`` (details only): TF-Privacy's ``compute_exposure_interpolation`` in the
  same file, log2 n − log2(1 + #candidates with log-perplexity ≤ the canary's), n the number of
  candidates: the sample stands for the space and ties count against the canary. It differs from
  ``exposure_sampled``, which scales the rank to the whole space |R| and counts ties ½.

Pure functions below take arrays of log-perplexities; ``exposure_metric`` scores candidates.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence

import numpy as np
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


def skewnorm_exposure(canary: float, candidates: Sequence[float] | np.ndarray) -> float:
    """−log2 of the fitted skew-normal CDF at the canary's log-perplexity."""
    values = np.asarray(candidates, dtype=np.float64)
    if values.size < 3:
        raise ValueError("a skew-normal fit needs at least 3 candidates")
    if np.ptp(values) == 0:
        raise ValueError("all candidates have the same log-perplexity: nothing to fit")
    shape, loc, scale = skewnorm.fit(values)
    return float(-skewnorm.logcdf(canary, shape, loc, scale) / math.log(2))


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
        entry["exposure_extrapolated"] = (
            entry["exposure_sampled"] if exact else skewnorm_exposure(logppl[0], logppl[1:])
        )
        per_canary.append(entry)
    value = float(np.mean([e["exposure_extrapolated"] for e in per_canary]))
    return MetricResult(
        "exposure", value, higher_is_better=False,
        details={
            "space_bits": math.log2(spec.space_size), "n_candidates": n_candidates,
            "exposure_sampled": float(np.mean([e["exposure_sampled"] for e in per_canary])),
            "per_canary": per_canary,
        },
    )  # fmt: skip
