"""Membership inference on the forget set, and MUSE's PrivLeak.

- ``forget_mia_auc``: the ROC AUC of a membership-inference score between the forget set
  (members: the model was fine-tuned on them) and the imprint's holdout set (non-members: never
  trained on — for the people world, invented people outside the world). Scores come from
  ``expunge.audit.mia`` (``loss``, ``zlib``, ``min_k``, ``min_k_plus_plus``; higher = member);
  the option ``score`` picks the reported one (default ``min_k``, MUSE's choice; all four AUCs
  are in the details), ``k`` the Min-K% share (default 0.2).
- ``privleak`` (Shi et al., *MUSE: Machine Unlearning Six-Way Evaluation for Language Models*,
  2024, §3): the AUC relative to a model retrained without the forget set::

      PrivLeak = (AUC_unlearned − AUC_retrained) / AUC_retrained · 100   (percent)

  Close to 0 is good; positive leaks membership, strongly negative means "over-unlearned" (the
  forget set now looks *less* familiar than never-seen text, itself a tell). The reference is
  the option ``reference=PATH`` (``expunge.audit.reference``).

Each example is scored as the text the model was trained on: a prompt/response pair rendered
in the audit's format (chat template or raw) with its response, a text example as is.
"""

from __future__ import annotations

from expunge.audit.base import AuditContext, MetricResult
from expunge.audit.mia import SCORES, mia_scores, roc_auc
from expunge.audit.reference import reference_result
from expunge.data.examples import Example
from expunge.data.formatting import resolve_template, segments_for
from expunge.errors import ConfigError, DataError

# -- pure functions --------------------------------------------------------------------------------


def privleak(auc: float, reference_auc: float) -> float:
    """(AUC − AUC_ref) / AUC_ref in percent."""
    if not 0 < reference_auc <= 1 or not 0 <= auc <= 1:
        raise ValueError(f"AUCs must lie in [0, 1] (reference > 0), got {auc}, {reference_auc}")
    return (auc - reference_auc) / reference_auc * 100.0


# -- metrics ---------------------------------------------------------------------------------------


def example_text(example: Example, ctx: AuditContext) -> str:
    fmt = resolve_template(ctx.tokenizer, ctx.format)
    return "".join(text for text, _ in segments_for(example, ctx.tokenizer, fmt))


def _member_sets(ctx: AuditContext) -> tuple[list[Example], list[Example]]:
    from expunge.imprints.knowledge import KnowledgeImprint

    if not isinstance(ctx.imprint, KnowledgeImprint):
        raise ConfigError("this metric needs a knowledge imprint: --imprint DIR/imprint.json")
    if not ctx.imprint.holdout:
        raise DataError(
            "membership inference needs non-members: the knowledge imprint has no holdout set "
            "(examples never trained on; the people world makes one with n_holdout > 0)"
        )
    limit = ctx.options.get("max_examples")
    forget, holdout = ctx.imprint.forget, ctx.imprint.holdout
    return (forget[: int(limit)], holdout[: int(limit)]) if limit else (forget, holdout)


def forget_mia_auc_metric(ctx: AuditContext) -> MetricResult:
    score = str(ctx.options.get("score", "min_k"))
    if score not in SCORES:
        raise ConfigError(f"forget_mia_auc: unknown score {score!r}; known: {', '.join(SCORES)}")
    k = float(ctx.options.get("k", 0.2))
    members, others = _member_sets(ctx)
    texts = [example_text(e, ctx) for e in members + others]
    scores = mia_scores(ctx.model, ctx.tokenizer, texts, batch_size=ctx.batch_size, k=k)
    n = len(members)
    aucs = {name: roc_auc(values[:n], values[n:]) for name, values in scores.items()}
    return MetricResult(
        name="forget_mia_auc", value=aucs[score], higher_is_better=False,
        details={"score": score, "k": k, "auc_by_score": aucs, "n_members": n,
                 "n_nonmembers": len(others), "members": "forget set",
                 "nonmembers": "holdout set", "ideal": "the retrained model's AUC (~0.5)"},
    )  # fmt: skip


def privleak_metric(ctx: AuditContext) -> MetricResult:
    own = forget_mia_auc_metric(ctx)
    reference, source = reference_result(ctx, "forget_mia_auc", forget_mia_auc_metric)
    if reference.details.get("score", own.details["score"]) != own.details["score"]:
        raise DataError(
            f"the reference ({source}) used score {reference.details['score']!r}, this audit "
            f"{own.details['score']!r}: PrivLeak compares the same score"
        )
    return MetricResult(
        name="privleak", value=privleak(own.value, reference.value), higher_is_better=False,
        details={"unit": "percent", "ideal": "0 (negative: over-unlearned)", "auc": own.value,
                 "reference_auc": reference.value, "score": own.details["score"],
                 "reference": source},
    )  # fmt: skip
