"""Membership inference on the forget set, and MUSE's PrivLeak.

- ``forget_mia_auc``: the ROC AUC of a membership-inference score between the forget set
  (members: the model was fine-tuned on them) and the imprint's holdout set (non-members: never
  trained on — for the people world, invented people outside the world; MUSE's members are its
  ``privleak/forget`` texts, the imprint's ``privleak_forget`` eval set), with the forget set as
  the positive class: 1 = the forget set looks trained on, 0.5 = no signal. This is the
  orientation of open-unlearning's ``mia_*`` metrics (``src/evals/metrics/mia/utils.py``:
  ``mia_auc``). Scores come from ``expunge.audit.mia`` (``loss``, ``zlib``, ``min_k``,
  ``min_k_plus_plus``; higher = member); the option ``score`` picks the reported one (default
  ``min_k``), ``k`` the Min-K% share (default 0.4: MUSE's ``Min-40%``, the score behind its
  PrivLeak, and open-unlearning's ``k`` for TOFU and MUSE). All four AUCs are in the details.
- ``privleak`` (Shi et al., *MUSE: Machine Unlearning Six-Way Evaluation for Language Models*,
  2024, §3): the AUC relative to a model retrained without the forget set. MUSE scores its AUC
  with the forget set as label 0 (``metrics/privleak.py``: ``forget_holdout_Min-40%``), i.e.
  AUC_MUSE = 1 − ``forget_mia_auc``, and ``eval.py`` reports::

      PrivLeak = (AUC_MUSE − AUC_MUSE,retrained) / AUC_MUSE,retrained · 100   (percent)

  which is open-unlearning's ``privleak`` (``src/evals/metrics/privacy.py``, ``1 − auc`` on both
  sides). Close to 0 is good. A model that still knows the forget set reads near −100 (its
  forget set looks far more familiar than unseen text); positive means "over-unlearned" (the
  forget set now looks *less* familiar than never-seen text, itself a tell). The reference is
  the option ``reference=PATH`` (``expunge.audit.reference``); its ``score`` and ``k`` must be
  this audit's.

Each example is scored as the text the model was trained on: a prompt/response pair rendered
in the audit's format (chat template or raw) with its response, a text example as is.
"""

from __future__ import annotations

from expunge.audit.base import AuditContext, MetricResult, wrong_imprint
from expunge.audit.mia import SCORES, mia_scores, roc_auc
from expunge.audit.reference import reference_result
from expunge.data.examples import Example
from expunge.data.formatting import resolve_template, segments_for
from expunge.errors import ConfigError, DataError

# -- pure functions --------------------------------------------------------------------------------


DEFAULT_K = 0.4  # MUSE's Min-40%


def privleak(auc: float, reference_auc: float) -> float:
    """MUSE's PrivLeak in percent from two ``forget_mia_auc`` values (forget set positive).

    ((1 − auc) − (1 − reference_auc)) / (1 − reference_auc) · 100. open-unlearning adds 1e-10
    to the denominator; a reference AUC of 1 (MUSE's AUC 0) is refused here instead.
    """
    if not 0 <= reference_auc < 1 or not 0 <= auc <= 1:
        raise ValueError(f"AUCs must lie in [0, 1] (reference < 1), got {auc}, {reference_auc}")
    muse, muse_reference = 1.0 - auc, 1.0 - reference_auc
    return (muse - muse_reference) / muse_reference * 100.0


# -- metrics ---------------------------------------------------------------------------------------


def example_text(example: Example, ctx: AuditContext) -> str:
    fmt = resolve_template(ctx.tokenizer, ctx.format)
    return "".join(text for text, _ in segments_for(example, ctx.tokenizer, fmt))


def _member_sets(ctx: AuditContext) -> tuple[list[Example], list[Example]]:
    from expunge.imprints.knowledge import KnowledgeImprint

    if not isinstance(ctx.imprint, KnowledgeImprint):
        raise wrong_imprint(ctx, "knowledge")
    if not ctx.imprint.holdout:
        raise DataError(
            "membership inference needs non-members: the knowledge imprint has no holdout set "
            "(examples never trained on; the people world makes one with n_holdout > 0)"
        )
    limit = ctx.options.get("max_examples")
    # MUSE's members are its privleak/forget texts (a benchmark imprint's eval set), TOFU's and
    # the people world's the forget set itself
    forget = ctx.imprint.eval_sets.get("privleak_forget") or ctx.imprint.forget
    holdout = ctx.imprint.holdout
    return (forget[: int(limit)], holdout[: int(limit)]) if limit else (forget, holdout)


def forget_mia_auc_metric(ctx: AuditContext) -> MetricResult:
    score = str(ctx.options.get("score", "min_k"))
    if score not in SCORES:
        raise ConfigError(f"forget_mia_auc: unknown score {score!r}; known: {', '.join(SCORES)}")
    k = float(ctx.options.get("k", DEFAULT_K))
    members, others = _member_sets(ctx)
    texts = [example_text(e, ctx) for e in members + others]
    scores = mia_scores(ctx.model, ctx.tokenizer, texts, batch_size=ctx.batch_size, k=k)
    n = len(members)
    aucs = {name: roc_auc(values[:n], values[n:]) for name, values in scores.items()}
    return MetricResult(
        name="forget_mia_auc", value=aucs[score], higher_is_better=False,
        details={"score": score, "k": k, "auc_by_score": aucs, "n_members": n,
                 "n_nonmembers": len(others), "members": "forget set",
                 "nonmembers": "holdout set", "positive_class": "forget set",
                 "ideal": "the retrained model's AUC (~0.5)",
                 "member_scores": [float(v) for v in scores[score][:n]],
                 "nonmember_scores": [float(v) for v in scores[score][n:]]},
    )  # fmt: skip


def privleak_metric(ctx: AuditContext) -> MetricResult:
    own = forget_mia_auc_metric(ctx)
    reference, source = reference_result(ctx, "forget_mia_auc", forget_mia_auc_metric)
    for key in ("score", "k"):
        theirs = reference.details.get(key, own.details[key])
        if theirs != own.details[key]:
            raise DataError(
                f"the reference ({source}) used {key} {theirs!r}, this audit "
                f"{own.details[key]!r}: PrivLeak compares the same score (set {key}={theirs!r} "
                "or audit the reference again)"
            )
    if reference.value >= 1.0:
        raise DataError(
            f"the reference ({source}) has an MIA AUC of 1 (MUSE's AUC 0: every holdout text looks "
            "more familiar than every forget text), which PrivLeak divides by; audit more "
            "examples or check the reference"
        )
    return MetricResult(
        name="privleak", value=privleak(own.value, reference.value), higher_is_better=False,
        details={"unit": "percent", "ideal": "0 (near -100: not unlearned; positive: "
                 "over-unlearned)", "auc": own.value, "reference_auc": reference.value,
                 "muse_auc": 1.0 - own.value, "muse_reference_auc": 1.0 - reference.value,
                 "score": own.details["score"], "k": own.details["k"], "reference": source,
                 "mia": own.details},
    )  # fmt: skip
