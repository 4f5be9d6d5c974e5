"""ROUGE-L against TOFU's, MUSE's and open-unlearning's scoring functions on fixed strings.

Inputs: ``parity_inputs.ROUGE_PAIRS`` — (generation, ground truth) pairs with stemming, case,
punctuation, digits, an empty generation and a non-ASCII word.
"""

from __future__ import annotations

from parity_inputs import ROUGE_PAIRS

from expunge.audit.knowledge import mean_rouge_l, rouge_l

# TOFU evals/eval_everything.py eval_rouge_recall(gen_outputs, ground_truths)["rougeL_recall"]
TOFU_RECALL = [0.6666666666666666, 0.75, 0.25, 0, 0.0, 0.8333333333333334, 0.375]
# open-unlearning src/evals/metrics/utils.py eval_text_similarity's eval_rouge_recall_batch:
# rougeL_recall (its TOFU configs) and rougeL_f1 (its MUSE configs), stemmer on
OU_RECALL = [0.6666666666666666, 0.75, 0.25, 0, 0.0, 0.8333333333333334, 0.375]
OU_F1 = [0.6153846153846153, 0.75, 0.25, 0, 0.0, 0.7692307692307692, 0.5]
# MUSE metrics/logger.py RougeEvalLogger.log(prompt, gt, output): "rougeL" (F1, no stemmer) and
# report()["mean_rougeL"], VerbMem's and KnowMem's aggregate
MUSE_F1 = [0.30769230769230765, 0.75, 0.25, 0, 0.0, 0.7692307692307692, 0.16666666666666666]
MUSE_MEAN_F1 = 0.32051282051282043

GENERATIONS = [g for g, _ in ROUGE_PAIRS]
TRUTHS = [t for _, t in ROUGE_PAIRS]


def test_recall_matches_tofu_and_open_unlearning(parity) -> None:
    ours = [rouge_l(g, t)["recall"] for g, t in ROUGE_PAIRS]
    parity("rouge_l recall / TOFU evals/eval_everything.py", ours, TOFU_RECALL)
    parity("rouge_l recall / open-unlearning evals/metrics/utils.py", ours, OU_RECALL)


def test_f1_matches_open_unlearning_with_the_stemmer(parity) -> None:
    ours = [rouge_l(g, t)["f1"] for g, t in ROUGE_PAIRS]
    parity("rouge_l f1 / open-unlearning evals/metrics/utils.py", ours, OU_F1, abs=1e-15)


def test_f1_without_the_stemmer_matches_muse(parity) -> None:
    ours = [rouge_l(g, t, use_stemmer=False)["f1"] for g, t in ROUGE_PAIRS]
    parity("rouge_l f1 no stemmer / MUSE metrics/logger.py", ours, MUSE_F1, abs=1e-15)
    parity("rouge_l f1 no stemmer / MUSE metrics/logger.py",
           mean_rouge_l(GENERATIONS, TRUTHS, "f1", use_stemmer=False), MUSE_MEAN_F1,
           abs=1e-15)  # fmt: skip
