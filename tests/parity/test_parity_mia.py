"""Membership-inference scores, their AUC, and PrivLeak against the reference code.

Inputs: ``parity_inputs`` — the 5 MEMBERS and 5 NONMEMBERS texts, tokenized by ``char_ids``
(BOS + one id per character), scored by a toy model whose float32 logits are ``logits_for(ids)``
(``logits_for(ids, RETRAINED_SHIFT)`` for the retrained model). Each reference ran on the same
logits through its own code path (``model(input_ids, labels=input_ids)`` for MUSE and both
authors' scripts; open-unlearning's ``mia_auc`` with its attacks, k = 0.4). Their scores are
"higher = non-member" where noted, i.e. the negation of ours.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from parity_inputs import MEMBERS, NONMEMBERS, RETRAINED_SHIFT, VOCAB, char_ids, logits_for
from torch import nn

from expunge.audit.mia import mia_scores, roc_auc
from expunge.audit.privleak import privleak

N = len(MEMBERS)

# --- golden values ------------------------------------------------------------------------------
# zjysteven/mink-plus-plus run.py (the Min-K%++ authors), its `scores` dict (members first);
# "higher = member", as ours
MINKPP = {
    "loss": [-3.644535779953003, -3.9653940200805664, -4.40093469619751, -3.2867162227630615,
             -4.0164265632629395, -3.827364683151245, -4.293298721313477, -4.393254280090332,
             -4.396549701690674, -3.994885206222534],
    "zlib": [-0.10719222882214714, -0.13217980066935223, -0.129439255770515,
             -0.1133350421642435, -0.11475504466465541, -0.12757882277170818,
             -0.14804478349356814, -0.16897131846501276, -0.11882566761326145,
             -0.1248401626944542],
    "mink_0.4": [-5.7479166984558105, -6.171090602874756, -6.606186866760254,
                 -5.576712608337402, -5.556610107421875, -5.738161563873291, -6.267202377319336,
                 -5.9276652336120605, -6.546150207519531, -6.521468162536621],
    "mink++_0.4": [-4.614153861999512, -5.384371280670166, -5.733515739440918,
                   -4.662802696228027, -4.464964866638184, -4.755000114440918,
                   -5.520063877105713, -4.74320650100708, -5.395408630371094,
                   -5.535184860229492],
    "mink_0.2": [-6.64990758895874, -6.791482925415039, -7.017041206359863, -6.34291410446167,
                 -5.942303657531738, -6.637109756469727, -7.001721382141113, -6.590986728668213,
                 -6.984323978424072, -7.23552131652832],
    "mink++_0.2": [-5.803508758544922, -6.296463966369629, -6.335177421569824,
                   -5.651428699493408, -5.14328670501709, -6.069593906402588, -6.484990119934082,
                   -5.741372585296631, -5.9614105224609375, -6.785233974456787],
}  # fmt: skip
# the same script's get_metrics(scores, labels)[0] (roc_curve + auc, members labelled 1)
MINKPP_AUROC = {"loss": 0.6799999999999999, "zlib": 0.76, "mink_0.4": 0.6799999999999999,
                "mink++_0.4": 0.72, "mink_0.2": 0.68, "mink++_0.2": 0.72}  # fmt: skip
# swj0419/detect-pretrain-code src/run.py inference(): pred["Min_40.0% Prob"] (negated Min-K%)
MINK_AUTHORS_MIN40 = [5.747916841506958, 6.171090304851532, 6.6061872959136965,
                      5.576712608337402, 5.556609725952148, 5.738161987728542, 6.267202138900757,
                      5.927665097372873, 6.546149947426536, 6.521468003590901]  # fmt: skip
# swj0419/muse_bench metrics/privleak.py: eval_data() "Min-40%" (negated) and sweep() AUCs of
# forget (label 0) vs holdout (label 1), the loop body of its eval() for forget_holdout_*
MUSE_MIN40 = MINK_AUTHORS_MIN40  # the same numbers, computed by MUSE's inference()
MUSE_AUC = {"Min-40%": 0.31999999999999995, "PPL": 0.31999999999999995, "PPL/zlib": 0.24}
MUSE_AUC_MIN40_RETRAINED = 0.39999999999999997
MUSE_PRIVLEAK_MIN40 = -20.000000000000007  # eval.py: (auc - AUC_RETRAIN) / AUC_RETRAIN * 100
# locuslab/open-unlearning src/evals/metrics/mia/utils.py mia_auc with LOSSAttack, ZLIBAttack,
# MinKProbAttack and MinKPlusPlusAttack (k=0.4): "higher = non-member" scores, forget then holdout
OU_SCORES = {
    "loss": [3.644535541534424, 3.9653940200805664, 4.40093469619751, 3.2867162227630615,
             4.016426086425781, 3.827363967895508, 4.293298244476318, 4.39325475692749,
             4.396549701690674, 3.994885206222534],
    "zlib": [0.107192221809836, 0.13217980066935223, 0.129439255770515, 0.1133350421642435,
             0.1147550310407366, 0.12757879892985027, 0.14804476705090752, 0.16897133680490348,
             0.11882566761326145, 0.1248401626944542],
    "min_k": [5.7479166984558105, 6.171090602874756, 6.606186866760254, 5.576712608337402,
              5.556610107421875, 5.738161563873291, 6.267202377319336, 5.9276652336120605,
              6.546150207519531, 6.521468162536621],
    "min_k_plus_plus": [4.614153861999512, 5.384370803833008, 5.733515739440918,
                        4.662802696228027, 4.464964866638184, 4.755000114440918,
                        5.520063400268555, 4.74320650100708, 5.395409107208252,
                        5.535184383392334],
}  # fmt: skip
OU_AUC = {"loss": 0.6799999999999999, "zlib": 0.76, "min_k": 0.6799999999999999,
          "min_k_plus_plus": 0.72}  # fmt: skip
OU_AUC_RETRAINED_MIN_K = 0.6
# open-unlearning src/evals/metrics/privacy.py privleak(forget auc 0.68, retain-model auc 0.6)
OU_PRIVLEAK_MIN_K = -19.99999999499999


# --- the model side: the same toy model and tokenizer, through expunge's scoring -----------------
class ToyLM(nn.Module):
    """Batched: the logits of each row are ``logits_for`` of its unpadded ids."""

    def __init__(self, shift: float = 0.0) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # scoring asks for the model's device
        self.shift = shift

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        rows = np.zeros((*input_ids.shape, VOCAB), dtype=np.float32)
        for row, (ids, mask) in enumerate(zip(input_ids, attention_mask, strict=True)):
            n = int(mask.sum())
            rows[row, :n] = logits_for(ids[:n].tolist(), self.shift)
        return SimpleNamespace(logits=torch.from_numpy(rows))


class CharTokenizer:
    pad_token_id = 0
    eos_token_id = 10

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": char_ids(text)}


def scores(k: float, shift: float = 0.0) -> dict[str, np.ndarray]:
    # batch_size 4: padded batches, unlike the references' one text at a time
    out = mia_scores(ToyLM(shift), CharTokenizer(), MEMBERS + NONMEMBERS, batch_size=4, k=k)
    return {name: np.asarray(values) for name, values in out.items()}


@pytest.fixture(scope="module")
def at_40() -> dict[str, np.ndarray]:
    return scores(0.4)


@pytest.fixture(scope="module")
def at_20() -> dict[str, np.ndarray]:
    return scores(0.2)


def test_scores_match_the_min_k_plus_plus_authors(parity, at_40, at_20) -> None:
    parity("loss / mink-plus-plus run.py", at_40["loss"], MINKPP["loss"], rel=1e-6)
    parity("zlib / mink-plus-plus run.py", at_40["zlib"], MINKPP["zlib"], rel=1e-6)
    parity("min_k / mink-plus-plus run.py", at_40["min_k"], MINKPP["mink_0.4"], rel=1e-6)
    parity("min_k / mink-plus-plus run.py", at_20["min_k"], MINKPP["mink_0.2"], rel=1e-6)
    parity("min_k_plus_plus / mink-plus-plus run.py", at_40["min_k_plus_plus"],
           MINKPP["mink++_0.4"], rel=1e-5)  # fmt: skip
    parity("min_k_plus_plus / mink-plus-plus run.py", at_20["min_k_plus_plus"],
           MINKPP["mink++_0.2"], rel=1e-5)  # fmt: skip


def test_min_k_matches_the_min_k_authors_and_muse(parity, at_40) -> None:
    parity("min_k / detect-pretrain-code src/run.py", -at_40["min_k"], MINK_AUTHORS_MIN40,
           rel=1e-6)  # fmt: skip
    parity("min_k / MUSE metrics/privleak.py", -at_40["min_k"], MUSE_MIN40, rel=1e-6)


def test_scores_match_open_unlearning(parity, at_40) -> None:
    for ours, theirs in (("loss", "loss"), ("zlib", "zlib"), ("min_k", "min_k"),
                         ("min_k_plus_plus", "min_k_plus_plus")):  # fmt: skip
        parity(f"{ours} / open-unlearning evals/metrics/mia", -at_40[ours], OU_SCORES[theirs],
               rel=1e-5)  # fmt: skip


def test_auc_matches_every_reference(parity, at_40, at_20) -> None:
    def auc(values: np.ndarray) -> float:
        return roc_auc(values[:N], values[N:])

    for ours, theirs in (("loss", "loss"), ("zlib", "zlib"), ("min_k", "mink_0.4"),
                         ("min_k_plus_plus", "mink++_0.4")):  # fmt: skip
        parity("roc_auc / mink-plus-plus run.py get_metrics", auc(at_40[ours]),
               MINKPP_AUROC[theirs], abs=1e-12)  # fmt: skip
        parity("roc_auc / open-unlearning mia/utils.py mia_auc", auc(at_40[ours]), OU_AUC[ours],
               abs=1e-12)  # fmt: skip
    parity("roc_auc / mink-plus-plus run.py get_metrics", auc(at_20["min_k"]),
           MINKPP_AUROC["mink_0.2"], abs=1e-12)  # fmt: skip
    # MUSE labels the forget set 0: its AUC is 1 - ours
    for ours, theirs in (("min_k", "Min-40%"), ("loss", "PPL"), ("zlib", "PPL/zlib")):
        parity("roc_auc / MUSE metrics/privleak.py sweep", 1 - auc(at_40[ours]), MUSE_AUC[theirs],
               abs=1e-12)  # fmt: skip
    # ties count one half: members [3, 2, 1], non-members [2, 0]; mink-plus-plus get_metrics and
    # MUSE sweep (forget = members labelled 0, so 1 - ours) both give 0.75
    parity("roc_auc / mink-plus-plus run.py get_metrics", roc_auc([3, 2, 1], [2, 0]), 0.75)
    parity("roc_auc / MUSE metrics/privleak.py sweep", 1 - roc_auc([2, 0], [3, 2, 1]), 0.75)


def test_privleak_matches_muse_and_open_unlearning(parity, at_40) -> None:
    retrained = scores(0.4, RETRAINED_SHIFT)["min_k"]
    own = roc_auc(at_40["min_k"][:N], at_40["min_k"][N:])
    reference = roc_auc(retrained[:N], retrained[N:])
    parity("roc_auc / open-unlearning mia/utils.py mia_auc", reference, OU_AUC_RETRAINED_MIN_K,
           abs=1e-12)  # fmt: skip
    parity("roc_auc / MUSE metrics/privleak.py sweep", 1 - reference, MUSE_AUC_MIN40_RETRAINED,
           abs=1e-12)  # fmt: skip
    leak = privleak(own, reference)
    parity("privleak / MUSE eval.py", leak, MUSE_PRIVLEAK_MIN40, abs=1e-9)
    # open-unlearning adds 1e-10 to the denominator: a relative difference of ~2.5e-10
    parity("privleak / open-unlearning evals/metrics/privacy.py", leak, OU_PRIVLEAK_MIN_K,
           rel=1e-9)  # fmt: skip
    assert leak < 0  # the audited model's forget set looks more familiar than the retrained's
