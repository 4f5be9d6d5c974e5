"""TOFU's truth ratio and forget quality (Maini et al., *TOFU: A Task of Fictitious Unlearning
for LLMs*, 2024, §2.5), as TOFU's code and open-unlearning compute them.

**Truth ratio** of a forget question q, from a paraphrase ã of its correct answer and wrong
("perturbed") answers â_1..â_m written in the same words. With P(a|q)^{1/|a|} = exp(−mean token
NLL of a), the length-normalized probability (the mean runs over the answer's label tokens in
the audit's format)::

    R(q) = exp(−(1/m)·Σ_j NLL(â_j)) / (exp(−NLL(ã)) + 1e-10)        mean=geometric (default)
    R(q) = (1/m)·Σ_j exp(−NLL(â_j)) / (exp(−NLL(ã)) + 1e-10)        mean=arithmetic

The default averages the wrong answers' mean losses, a *geometric* mean of their normalized
probabilities, as open-unlearning (``src/evals/metrics/memorization.py``: ``truth_ratio``, with
its 1e-10 guard) and TOFU's own code (``aggregate_eval_stat.py``: ``exp(perturbed −
paraphrased)``, its inverse, without the guard) do; the published tables come from that code.
The paper writes the *arithmetic* mean of the probabilities: ``mean=arithmetic``. The two
differ most when the wrong answers' losses are spread out. R ≪ 1: the model prefers the truth
(it knows the fact); R ≈ 1: it cannot tell. The answers are read through
``expunge.data.benchmarks.tofu.truth_ratio_answers``: TOFU's ``paraphrased_answer`` and
``perturbed_answer`` columns, or the people world's ``meta.paraphrase`` and ``meta.perturbed``
(the answer itself is the base where there is no paraphrase, as on TOFU's real-world sets).

The metric ``truth_ratio`` reports the summary of option ``aggregator``:
``closer_to_1_better`` (default; TOFU's forget-set statistic mean(min(R, 1/R)), 1 = cannot tell
the truth from a lie) or ``true_better`` (TOFU's statistic on the retain and utility sets,
mean(max(0, 1 − R)), high = prefers the truth) — open-unlearning's aggregators of the same
names. Every R is kept in ``details.values``: what forget quality needs.

**Forget quality**: the p-value of the two-sample Kolmogorov–Smirnov test (scipy's
``ks_2samp``, default method) between the truth ratios of the audited model and of a model
*retrained without the forget set*, on the forget questions — open-unlearning
``src/evals/metrics/privacy.py``: ``ks_test``, and TOFU ``aggregate_eval_stat.py``:
``get_forget_quality`` (KS on 1/R gives the same p). High (TOFU's threshold: p > 0.05) means
the two distributions cannot be told apart. The reference is given by the option
``reference=PATH`` (``expunge.audit.reference``) and must use the same ``mean``. TOFU plots
log10 p; both are recorded.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy.stats import ks_2samp

from expunge.audit.base import AuditContext, MetricResult, wrong_imprint
from expunge.audit.reference import reference_result
from expunge.audit.scoring import token_logprobs
from expunge.data.examples import Example
from expunge.data.formatting import tokenize_examples
from expunge.errors import ConfigError, DataError

# -- pure functions --------------------------------------------------------------------------------


MEANS = ("geometric", "arithmetic")
AGGREGATORS = ("closer_to_1_better", "true_better")
EPS = 1e-10  # open-unlearning's guard against a zero denominator


def truth_ratios(
    paraphrase_nll: Sequence[float],
    perturbed_nll: Sequence[Sequence[float]],
    mean: str = "geometric",
) -> np.ndarray:
    """R per question from mean token NLLs (wrong answers over the paraphrase; see the module)."""
    if mean not in MEANS:
        raise ValueError(f"mean must be one of {MEANS}, got {mean!r}")
    para = np.asarray(paraphrase_nll, dtype=np.float64)
    if para.ndim != 1 or para.size == 0:
        raise ValueError("need one paraphrase NLL per question")
    if len(perturbed_nll) != para.size:
        raise ValueError(f"{len(perturbed_nll)} perturbed lists for {para.size} questions")
    out = np.empty_like(para)
    for i, wrong in enumerate(perturbed_nll):
        wrong_arr = np.asarray(wrong, dtype=np.float64)
        if wrong_arr.size == 0:
            raise ValueError(f"question {i} has no perturbed answers")
        if mean == "geometric":
            wrong_prob = np.exp(-np.mean(wrong_arr))
        else:
            wrong_prob = np.mean(np.exp(-wrong_arr))
        out[i] = wrong_prob / (np.exp(-para[i]) + EPS)
    return out


def truth_ratio_summary(ratios: Sequence[float], aggregator: str = "closer_to_1_better") -> float:
    """mean(min(R, 1/R)) (``closer_to_1_better``) or mean(max(0, 1 − R)) (``true_better``)."""
    if aggregator not in AGGREGATORS:
        raise ValueError(f"aggregator must be one of {AGGREGATORS}, got {aggregator!r}")
    r = np.asarray(ratios, dtype=np.float64)
    if r.size == 0 or not (r >= 0).all():
        raise ValueError("truth ratios must be a non-empty list of non-negative numbers")
    if aggregator == "closer_to_1_better":
        return float(np.mean(np.minimum(r, 1.0 / (r + EPS))))
    return float(np.mean(np.maximum(0.0, 1.0 - r)))


def forget_quality(
    ratios: Sequence[float], reference_ratios: Sequence[float]
) -> tuple[float, float]:
    """(p-value, statistic) of the two-sample KS test between two truth-ratio samples.

    scipy's ``method="auto"``: the exact distribution for small samples, the asymptotic one
    when the exact computation fails (its warning about that is silenced: it is expected).
    """
    if len(ratios) == 0 or len(reference_ratios) == 0:
        raise ValueError("forget quality needs truth ratios from both models")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ks_2samp: Exact calculation unsuccessful")
        result = ks_2samp(np.asarray(ratios, float), np.asarray(reference_ratios, float))
    return float(result.pvalue), float(result.statistic)


# -- metrics ---------------------------------------------------------------------------------------


def truth_examples(ctx: AuditContext, examples: list[Example] | None = None) -> list[Example]:
    """The Q/A pairs with a truth ratio (default: the imprint's forget set), read through
    ``truth_ratio_answers``: TOFU's ``paraphrased_answer``/``perturbed_answer`` or the people
    world's ``paraphrase``/``perturbed``."""
    from expunge.data.benchmarks.tofu import truth_ratio_answers
    from expunge.imprints.knowledge import KnowledgeImprint

    if examples is None:
        if not isinstance(ctx.imprint, KnowledgeImprint):
            raise wrong_imprint(ctx, "knowledge")
        examples = ctx.imprint.forget
    qa = [e for e in examples if e.kind == "prompt_response"]
    usable = [e for e in qa if truth_ratio_answers(e) is not None]
    if not usable:
        raise DataError(
            "the truth ratio needs Q/A pairs with wrong answers (TOFU's perturbed_answer, or the "
            "people world's meta.perturbed) and the right one reworded (paraphrased_answer / "
            f"meta.paraphrase; the answer itself where there is none); of {len(qa)} Q/A pairs "
            "none has them"
        )
    limit = ctx.options.get("max_examples")
    return usable[: int(limit)] if limit else usable


def mean_token_nll(ctx: AuditContext, examples: list[Example]) -> np.ndarray:
    tokenized = tokenize_examples(examples, ctx.tokenizer, ctx.format)
    pad = ctx.tokenizer.pad_token_id
    if pad is None:
        pad = ctx.tokenizer.eos_token_id
    scores = token_logprobs(ctx.model, tokenized, pad, batch_size=ctx.batch_size)
    return scores.nll_sums() / np.maximum(scores.counts(), 1)


def _choice(ctx: AuditContext, name: str, known: tuple[str, ...]) -> str:
    value = str(ctx.options.get(name, known[0]))
    if value not in known:
        raise ConfigError(f"truth ratio option {name}={value!r}: known: {', '.join(known)}")
    return value


def truth_ratio_stats(
    ctx: AuditContext, examples: list[Example], mean: str = "geometric"
) -> dict[str, list]:
    """Per question: the base answer's mean token NLL, each wrong answer's, and R."""
    from expunge.data.benchmarks.tofu import truth_ratio_answers

    bases, wrong, owners = [], [], []
    for index, example in enumerate(examples):
        base, wrong_answers = truth_ratio_answers(example)  # type: ignore[misc]
        bases.append(Example(prompt=example.prompt, response=base))
        for answer in wrong_answers:
            wrong.append(Example(prompt=example.prompt, response=answer))
            owners.append(index)
    base_nll = mean_token_nll(ctx, bases)
    wrong_nll = mean_token_nll(ctx, wrong)
    grouped: list[list[float]] = [[] for _ in examples]
    for owner, value in zip(owners, wrong_nll, strict=True):
        grouped[owner].append(float(value))
    ratios = truth_ratios(base_nll, grouped, mean=mean)
    return {"values": [float(r) for r in ratios],
            "paraphrase_avg_loss": [float(v) for v in base_nll],
            "perturbed_avg_loss": grouped}  # fmt: skip


SUMMARIES = {"closer_to_1_better": "mean(min(R, 1/R))", "true_better": "mean(max(0, 1 - R))"}


def truth_ratio_metric(ctx: AuditContext) -> MetricResult:
    mean = _choice(ctx, "mean", MEANS)
    aggregator = _choice(ctx, "aggregator", AGGREGATORS)
    examples = truth_examples(ctx)
    stats = truth_ratio_stats(ctx, examples, mean)
    return MetricResult(
        name="truth_ratio", value=truth_ratio_summary(stats["values"], aggregator),
        higher_is_better=True,
        details={"n_examples": len(examples), "mean": mean, "aggregator": aggregator,
                 "summary": f"{SUMMARIES[aggregator]} over the forget Q/A",
                 **stats, "median_ratio": float(np.median(stats["values"]))},
    )  # fmt: skip


def forget_quality_metric(ctx: AuditContext) -> MetricResult:
    own = truth_ratio_metric(ctx)
    reference, source = reference_result(ctx, "truth_ratio", truth_ratio_metric)
    values = reference.details.get("values")
    if not values:
        raise DataError(f"the reference ({source}) has no per-example truth ratios")
    # records written before the option existed averaged arithmetically
    theirs = reference.details.get("mean", "arithmetic")
    if theirs != own.details["mean"]:
        raise DataError(
            f"the reference ({source}) averaged the wrong answers' probabilities with the "
            f"{theirs} mean, this audit with the {own.details['mean']} mean: set mean={theirs} "
            "or audit the reference again"
        )
    if len(values) != len(own.details["values"]):
        raise DataError(
            f"the reference ({source}) has {len(values)} truth ratios, this audit "
            f"{len(own.details['values'])}: audit both on the same imprint and max_examples"
        )
    pvalue, statistic = forget_quality(own.details["values"], values)
    return MetricResult(
        name="forget_quality", value=pvalue, higher_is_better=True,
        details={"test": "two-sample Kolmogorov-Smirnov on forget-set truth ratios",
                 "ks_statistic": statistic,
                 "log10_pvalue": float(np.log10(max(pvalue, 1e-300))),
                 "mean": own.details["mean"], "truth_ratio": own.value,
                 "reference_truth_ratio": reference.value,
                 "reference": source, "n_examples": own.details["n_examples"],
                 "truth_ratio_details": own.details},
    )  # fmt: skip
