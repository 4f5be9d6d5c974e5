"""Truth ratio and forget quality (KS test) against open-unlearning and TOFU's code.

Inputs: ``parity_inputs.truth_ratio_losses`` — the mean token NLL of the paraphrased answer and
of 3 wrong answers for 12 forget questions, for an "unlearned" model (``UNLEARNED``: the wrong
answers' losses spread out) and a retain-only "retrained" model (``RETRAINED``). The references
got the same numbers as their precomputed per-answer ``avg_loss`` (open-unlearning) or
``avg_paraphrased_loss`` / ``average_perturb_loss`` (TOFU's eval logs).
"""

from __future__ import annotations

from parity_inputs import RETRAINED, UNLEARNED, truth_ratio_losses

from expunge.audit.forget_quality import forget_quality, truth_ratio_summary, truth_ratios

# open-unlearning src/evals/metrics/memorization.py truth_ratio: value_by_index scores (wrong
# over paraphrase) and agg_value per aggregator
OU_VALUES_UNLEARNED = [
    0.49880605928253047, 1.3584555047148665, 1.2044902726397695, 0.48333522327253164,
    0.36666075089586975, 0.7464457795352666, 1.238161950074788, 0.7161439152526002,
    0.33378230160547, 0.44405678962482026, 1.2543790752437354, 1.6186969432544174,
]  # fmt: skip
OU_VALUES_RETRAINED = [
    0.7648944859938973, 1.3690601722787863, 0.78774716048057, 0.382749891758059,
    0.49659811357362577, 1.112368175964332, 1.1328930811890774, 0.45742012293608797,
    0.2859772021154048, 0.6379965040965933, 1.775768111381159, 1.3596239002545796,
]  # fmt: skip
OU_CLOSER_TO_1 = {"unlearned": 0.6148520394784357, "retrained": 0.6353437025641332}
OU_TRUE_BETTER = {"unlearned": 0.2842307650442426, "retrained": 0.26555137658714684}
# open-unlearning src/evals/metrics/privacy.py ks_test (forget quality) on the two value lists
OU_FORGET_QUALITY = 0.9984852944874484
# TOFU aggregate_eval_stat.py: get_forget_quality (KS on exp(perturbed - paraphrased) = 1/R)
# and get_model_utility's "Truth Ratio Forget" (mean(min(R, 1/R))) / "Truth Ratio Retain"
# (mean(max(0, 1 - 1/exp(perturbed - paraphrased)))), both given the unlearned losses
TOFU_FORGET_QUALITY, TOFU_KS_STATISTIC = 0.9984852944874484, 0.16666666666666666
TOFU_TRUTH_RATIO_FORGET, TOFU_TRUTH_RATIO_RETAIN = 0.6148520392730003, 0.28423076488458

UNLEARNED_LOSSES = truth_ratio_losses(**UNLEARNED)
RETRAINED_LOSSES = truth_ratio_losses(**RETRAINED)


def test_truth_ratios_match_open_unlearning(parity) -> None:
    name = "truth_ratio values / open-unlearning memorization.py"
    parity(name, truth_ratios(*UNLEARNED_LOSSES), OU_VALUES_UNLEARNED, rel=1e-12)
    parity(name, truth_ratios(*RETRAINED_LOSSES), OU_VALUES_RETRAINED, rel=1e-12)


def test_truth_ratio_summaries_match_open_unlearning_and_tofu(parity) -> None:
    for which, losses in (("unlearned", UNLEARNED_LOSSES), ("retrained", RETRAINED_LOSSES)):
        ratios = truth_ratios(*losses)
        parity("truth_ratio closer_to_1_better / open-unlearning memorization.py",
               truth_ratio_summary(ratios), OU_CLOSER_TO_1[which], rel=1e-12)  # fmt: skip
        parity("truth_ratio true_better / open-unlearning memorization.py",
               truth_ratio_summary(ratios, "true_better"), OU_TRUE_BETTER[which],
               rel=1e-12)  # fmt: skip
    # TOFU has no 1e-10 guard: the same to ~1e-9 relative on these probabilities
    ratios = truth_ratios(*UNLEARNED_LOSSES)
    parity("truth_ratio closer_to_1_better / TOFU aggregate_eval_stat.py",
           truth_ratio_summary(ratios), TOFU_TRUTH_RATIO_FORGET, rel=1e-8)  # fmt: skip
    parity("truth_ratio true_better / TOFU aggregate_eval_stat.py",
           truth_ratio_summary(ratios, "true_better"), TOFU_TRUTH_RATIO_RETAIN,
           rel=1e-8)  # fmt: skip


def test_forget_quality_matches_open_unlearning_and_tofu(parity) -> None:
    p, statistic = forget_quality(truth_ratios(*UNLEARNED_LOSSES), truth_ratios(*RETRAINED_LOSSES))
    parity("forget_quality / open-unlearning privacy.py ks_test", p, OU_FORGET_QUALITY, rel=1e-12)
    parity("forget_quality / TOFU aggregate_eval_stat.py", p, TOFU_FORGET_QUALITY, rel=1e-12)
    parity("forget_quality / TOFU aggregate_eval_stat.py", statistic, TOFU_KS_STATISTIC,
           rel=1e-12)  # fmt: skip


def test_the_papers_arithmetic_mean_departs_from_the_references() -> None:
    # the option exists to reproduce the paper's formula, not the published tables: on these
    # losses it moves forget quality from the references' 0.998 to about 0.26
    p, _ = forget_quality(
        truth_ratios(*UNLEARNED_LOSSES, mean="arithmetic"),
        truth_ratios(*RETRAINED_LOSSES, mean="arithmetic"),
    )
    assert p < 0.3 < OU_FORGET_QUALITY
