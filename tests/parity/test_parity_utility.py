"""TOFU's model utility and MUSE's KnowMem against the reference code, on fixed inputs.

Model utility: the per-question losses and ROUGE recalls of ``parity_inputs.utility_arrays``
went through TOFU's ``aggregate_eval_stat.py`` (``get_model_utility``, as eval logs) and
open-unlearning's ``probability_w_options``, ``truth_ratio`` (``true_better``) and
``hm_aggregate`` (``src/evals/metrics/memorization.py``, ``utility.py``). KnowMem: MUSE's
``metrics/knowmem.py`` (``eval``) ran with a character-level tokenizer and a model that answers
``parity_inputs.KNOWMEM_QA``'s fixed generations; its prompts, cut answers and ``mean_rougeL``
are the golden values.
"""

from __future__ import annotations

import numpy as np
from parity_inputs import KNOWMEM_ICL, KNOWMEM_QA, utility_arrays

from expunge.audit.forget_quality import truth_ratio_summary, truth_ratios
from expunge.audit.knowledge import cut_at_stop_words, mean_rouge_l
from expunge.audit.muse import STOP_WORDS, knowmem_examples
from expunge.audit.tofu import (
    COMPONENTS,
    answer_probabilities,
    model_utility,
    normalised_probabilities,
)
from expunge.data.examples import Example


def components() -> dict[str, float]:
    """The nine numbers from expunge's pure functions."""
    out = {}
    for prefix in ("retain", "ra", "wf"):
        a = utility_arrays(prefix)
        if prefix == "retain":
            out["retain_Q_A_Prob"] = float(np.mean(answer_probabilities(a["gt"])))
        else:
            prob = normalised_probabilities(a["gt"], a["pert"])
            out[f"{prefix}_Q_A_Prob_normalised"] = float(np.mean(prob))
        out[f"{prefix}_Q_A_ROUGE"] = float(np.mean(a["rouge"]))
        ratios = truth_ratios(a["para"], a["pert"].tolist(), mean="geometric")
        out[f"{prefix}_Truth_Ratio"] = truth_ratio_summary(ratios, "true_better")
    assert set(out) == set(COMPONENTS)
    return out


OPEN_UNLEARNING = {
    "retain_Q_A_Prob": 0.4619186100548125, "retain_Q_A_ROUGE": 0.5913817478888777,
    "retain_Truth_Ratio": 0.3386980922579217, "ra_Q_A_Prob_normalised": 0.38238057777769746,
    "ra_Q_A_ROUGE": 0.5539266658322131, "ra_Truth_Ratio": 0.4470130076480351,
    "wf_Q_A_Prob_normalised": 0.40552714013327035, "wf_Q_A_ROUGE": 0.5347652330727486,
    "wf_Truth_Ratio": 0.4898282229388352,
}  # fmt: skip
TOFU = {  # get_model_utility's names -> ours
    "retain_Q_A_Prob": 0.4619186100548125, "retain_Q_A_ROUGE": 0.5913817478888777,
    "retain_Truth_Ratio": 0.3386980920361115, "ra_Q_A_Prob_normalised": 0.38238057781310264,
    "ra_Q_A_ROUGE": 0.5539266658322131, "ra_Truth_Ratio": 0.44701300749334205,
    "wf_Q_A_Prob_normalised": 0.40552714016905556, "wf_Q_A_ROUGE": 0.5347652330727486,
    "wf_Truth_Ratio": 0.4898282228061028,
}  # fmt: skip


def test_model_utility_components_match_open_unlearning(parity) -> None:
    ours = components()
    # their 1e-10 guards (normalised probability and truth ratio denominators) are kept
    parity("model utility components / open-unlearning memorization.py",
           [ours[k] for k in COMPONENTS], [OPEN_UNLEARNING[k] for k in COMPONENTS], abs=1e-12)  # fmt: skip


def test_model_utility_matches_open_unlearning(parity) -> None:
    # open-unlearning src/evals/metrics/utility.py hm_aggregate (scipy.stats.hmean)
    parity("model utility / open-unlearning utility.py (hm_aggregate)",
           model_utility(list(components().values())), 0.45355317254495237, abs=1e-12)  # fmt: skip


def test_model_utility_matches_tofu(parity) -> None:
    # TOFU aggregate_eval_stat.py get_model_utility (no 1e-10 guards: differences of ~1e-10)
    ours = components()
    parity("model utility components / TOFU aggregate_eval_stat.py",
           [ours[k] for k in COMPONENTS], [TOFU[k] for k in COMPONENTS], abs=1e-9)  # fmt: skip
    parity("model utility / TOFU aggregate_eval_stat.py (get_model_utility)",
           model_utility(list(ours.values())), 0.4535531724809267, abs=1e-9)  # fmt: skip


MUSE_PROMPT_0 = (
    "Question: Who wrote the harbour report?\nAnswer: Ann Lee\n\n"
    "Question: Where is the clinic?\nAnswer: Oslo\n\n"
    "Question: Where was Ann Lee born?\nAnswer: "
)
MUSE_RESPONSES = ["Bergen, in 1950.", "Bo bakes bread", "Paris ", "running mills is hard"]


def test_knowmem_matches_muse(parity) -> None:
    # MUSE metrics/knowmem.py eval: few-shot prompt, answers cut at its stop words, mean_rougeL
    # (ROUGE-L F1 of RougeEvalLogger, no stemmer)
    qa = [Example(prompt=q, response=a) for q, a, _ in KNOWMEM_QA]
    icl = [Example(prompt=q, response=a) for q, a in KNOWMEM_ICL]
    prompts = [e.prompt for e in knowmem_examples(qa, icl, "raw")]
    assert prompts[0] == MUSE_PROMPT_0
    cut = [cut_at_stop_words(g, STOP_WORDS) for _, _, g in KNOWMEM_QA]
    assert cut == MUSE_RESPONSES
    score = mean_rouge_l(cut, [a for _, a, _ in KNOWMEM_QA], "f1", use_stemmer=False)
    parity("knowmem / MUSE metrics/knowmem.py (mean_rougeL)", score, 0.375, abs=1e-15)
