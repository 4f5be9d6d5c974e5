"""TOFU's model utility and answer probability (Maini et al., *TOFU*, 2024, §2.5), computed as
open-unlearning computes them (``configs/eval/tofu_metrics/*.yaml``; ``src/evals/metrics/
memorization.py``: ``probability``, ``probability_w_options``, ``truth_ratio``; ``utility.py``:
``hm_aggregate``; ``utils.py``: ``evaluate_probability``) and TOFU's ``aggregate_eval_stat.py``.

With ``avg_loss(a)`` the mean token NLL of answer ``a`` after question ``q`` (in the audit's
format), ``p(a) = exp(−avg_loss(a))`` is the length-normalised probability:

- **Q_A_Prob** (``forget_prob``; ``retain_Q_A_Prob``): mean over the questions of p(answer);
- **Q_A_Prob_normalised** (``ra_``, ``wf_``): mean of p(answer) / (p(answer) + Σ_j p(wrong_j)
  + 1e-10), the real-world sets' multiple-choice-like probability;
- **Q_A_ROUGE**: mean ROUGE-L recall (stemmed) of the greedy answer against the answer;
- **Truth_Ratio** (``true_better``): mean(max(0, 1 − R)), R from the base answer (the paraphrase
  on ``retain``, the answer itself on ``real_authors``/``world_facts``) and the wrong ones
  (``expunge.audit.forget_quality``).

**Model utility** (``model_utility``) is the harmonic mean (``scipy.stats.hmean``) of the nine
numbers ``retain_Q_A_Prob``, ``retain_Q_A_ROUGE``, ``retain_Truth_Ratio``,
``ra_Q_A_Prob_normalised``, ``ra_Q_A_ROUGE``, ``ra_Truth_Ratio``, ``wf_Q_A_Prob_normalised``,
``wf_Q_A_ROUGE``, ``wf_Truth_Ratio``, each in the details with its per-question values. The sets
are a TOFU imprint's ``eval_sets`` (``retain_perturbed``, ``real_authors``, ``world_facts``); an
imprint without them (the people world) uses its retain set and the real-author and world-fact
questions shipped with expunge (``data/resources``, as the TOFU-layout export writes them).

Options: ``max_examples`` (per set), ``max_new_tokens`` (32; open-unlearning generates up to
200, which matters only for answers longer than 32 tokens), ``mean`` (``geometric``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import hmean

from expunge.audit.base import AuditContext, MetricResult
from expunge.audit.forget_quality import (
    EPS,
    MEANS,
    mean_token_nll,
    truth_examples,
    truth_ratio_stats,
    truth_ratio_summary,
)
from expunge.audit.knowledge import generate_answers, imprint_set, mean_rouge_l, rouge_per_example
from expunge.data.examples import Example
from expunge.errors import ConfigError

# -- pure functions --------------------------------------------------------------------------------

UTILITY_SETS = {"retain": "retain_perturbed", "ra": "real_authors", "wf": "world_facts"}
COMPONENTS = tuple(
    f"{prefix}_{stat}"
    for prefix in UTILITY_SETS
    for stat in ("Q_A_Prob" if prefix == "retain" else "Q_A_Prob_normalised", "Q_A_ROUGE",
                 "Truth_Ratio")
)  # fmt: skip


def answer_probabilities(avg_losses: Sequence[float]) -> np.ndarray:
    """p(a) = exp(−mean token NLL of a), per answer."""
    return np.exp(-np.asarray(avg_losses, dtype=np.float64))


def normalised_probabilities(
    correct_losses: Sequence[float], wrong_losses: Sequence[Sequence[float]]
) -> np.ndarray:
    """p(answer) / (p(answer) + Σ_j p(wrong_j) + 1e-10) per question."""
    correct = answer_probabilities(correct_losses)
    wrong = np.array([answer_probabilities(w).sum() for w in wrong_losses])
    return correct / (correct + wrong + EPS)


def model_utility(components: Sequence[float]) -> float:
    """The harmonic mean of TOFU's nine utility numbers (0 if any is 0, as scipy's ``hmean``)."""
    values = np.asarray(components, dtype=np.float64)
    if values.size == 0 or (values < 0).any():
        raise ValueError("model utility needs non-negative numbers")
    return float(hmean(values))


# -- metrics ---------------------------------------------------------------------------------------


def _limit(ctx: AuditContext, examples: list[Example]) -> list[Example]:
    limit = ctx.options.get("max_examples")
    return examples[: int(limit)] if limit else examples


def shipped_utility_set(name: str) -> list[Example]:
    """``real_authors`` / ``world_facts`` from the questions shipped with expunge."""
    from expunge.data.benchmarks.export import _mc_rows

    resource = {"real_authors": "real_authors_mc.jsonl", "world_facts": "general_mc.jsonl"}[name]
    return [Example(prompt=r["question"], response=r["answer"],
                    meta={"perturbed_answer": r["perturbed_answer"]})
            for r in _mc_rows(resource, perturbed=True)]  # fmt: skip


def utility_set(ctx: AuditContext, name: str) -> tuple[list[Example], str]:
    """The examples of a utility set, and where they came from."""
    if ctx.imprint is not None and name in getattr(ctx.imprint, "eval_sets", {}):
        return imprint_set(ctx, name), f"eval set {name}"
    if name == "retain_perturbed":
        return imprint_set(ctx, "retain"), "the imprint's retain set"
    return shipped_utility_set(name), f"expunge's shipped {name} questions"


def _component_set(ctx: AuditContext, prefix: str, mean: str, max_new: int) -> dict[str, Any]:
    examples, source = utility_set(ctx, UTILITY_SETS[prefix])
    examples = _limit(ctx, truth_examples(ctx, examples))
    stats = truth_ratio_stats(ctx, examples, mean)
    answers = [Example(prompt=e.prompt, response=e.response) for e in examples]
    correct = mean_token_nll(ctx, answers)
    if prefix == "retain":
        prob = answer_probabilities(correct)
        prob_name = "retain_Q_A_Prob"
    else:
        prob = normalised_probabilities(correct, stats["perturbed_avg_loss"])
        prob_name = f"{prefix}_Q_A_Prob_normalised"
    outputs = generate_answers(ctx, ("utility", prefix, len(examples)), examples, max_new)
    references = [e.response or "" for e in examples]
    return {
        "source": source, "n_examples": len(examples),
        prob_name: {"value": float(np.mean(prob)), "values": [float(p) for p in prob],
                    "avg_loss": [float(v) for v in correct]},
        f"{prefix}_Q_A_ROUGE": {"value": mean_rouge_l(outputs, references, "recall"),
                                "per_example": rouge_per_example(outputs, references)},
        f"{prefix}_Truth_Ratio": {"value": truth_ratio_summary(stats["values"], "true_better"),
                                  **stats},
    }  # fmt: skip


def model_utility_metric(ctx: AuditContext) -> MetricResult:
    mean = str(ctx.options.get("mean", "geometric"))
    if mean not in MEANS:
        raise ConfigError(f"model_utility option mean={mean!r}: known: {', '.join(MEANS)}")
    max_new = int(ctx.options.get("max_new_tokens", 32))
    sets = {prefix: _component_set(ctx, prefix, mean, max_new) for prefix in UTILITY_SETS}
    components = {name: sets[name.split("_")[0]][name] for name in COMPONENTS}
    return MetricResult(
        name="model_utility",
        value=model_utility([c["value"] for c in components.values()]),
        higher_is_better=True,
        details={"aggregate": "harmonic mean of the nine numbers (scipy.stats.hmean)",
                 "components": {k: v["value"] for k, v in components.items()},
                 "sets": {p: {"source": s["source"], "n_examples": s["n_examples"]}
                          for p, s in sets.items()},
                 "per_example": components, "mean": mean, "max_new_tokens": max_new},
    )  # fmt: skip


def forget_prob_metric(ctx: AuditContext) -> MetricResult:
    """TOFU's forget ``Q_A_Prob``: mean p(answer) over the forget Q/A (lower after unlearning)."""
    examples = _limit(ctx, [e for e in imprint_set(ctx, "forget") if e.kind == "prompt_response"])
    if not examples:
        raise ConfigError("the knowledge imprint's forget set has no prompt/response pairs")
    losses = mean_token_nll(ctx, [Example(prompt=e.prompt, response=e.response) for e in examples])
    prob = answer_probabilities(losses)
    return MetricResult(
        name="forget_prob", value=float(np.mean(prob)), higher_is_better=False,
        details={"n_examples": len(examples), "values": [float(p) for p in prob],
                 "avg_loss": [float(v) for v in losses],
                 "definition": "mean over the forget Q/A of exp(-mean token NLL of the answer)"},
    )  # fmt: skip
