"""Unlearning losses against the reference trainers, on fixed logits and hidden states.

Inputs: ``parity_inputs`` (3 sequences of 6 tokens, vocabulary 11, 2 prompt tokens, the last
sequence padded by 2; float32 logits from ``grid``). The references ran on the same arrays,
through models that return these logits (and HF's ``ForCausalLMLoss`` as ``outputs.loss``).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from parity_inputs import (
    ATTENTION,
    FORGET_IDS,
    FORGET_LOGITS_PHASE,
    FORGET_REFERENCE_PHASE,
    HIDDEN,
    IDK_ATTENTION,
    IDK_IDS,
    IDK_LOGITS_PHASE,
    IDK_REFERENCE_PHASE,
    PROMPT_LENGTH,
    RETAIN_IDS,
    RETAIN_LOGITS_PHASE,
    STEERING,
    VOCAB,
    control_vector,
    grid,
    labels_of,
)
from torch import nn

from expunge.data.formatting import TokenizedExample
from expunge.erase.unlearn.ga import GAObjective
from expunge.erase.unlearn.graddiff import GradDiffObjective, GradDiffSettings
from expunge.erase.unlearn.idkdpo import IdkDPOObjective, IdkDPOSettings
from expunge.erase.unlearn.idknll import IdkNLLObjective, IdkNLLSettings
from expunge.erase.unlearn.npo import NPOObjective, NPOSettings
from expunge.erase.unlearn.rmu import RMUObjective, RMUSettings
from expunge.erase.unlearn.simnpo import SimNPOObjective, SimNPOSettings
from expunge.models.tiny import tiny_model
from expunge.train.objectives import StepContext

SHAPE = (3, 6, VOCAB)


def batch(ids: list[list[int]]) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.tensor(ids),
        "attention_mask": torch.tensor(ATTENTION),
        "labels": torch.tensor(labels_of(ids)),
    }


FORGET, RETAIN = batch(FORGET_IDS), batch(RETAIN_IDS)


class FixedLogits(nn.Module):
    """Returns fixed logits: one array for the forget batch, another for the retain batch."""

    def __init__(self, forget_phase: float) -> None:
        super().__init__()
        self.forget = nn.Parameter(torch.from_numpy(grid(SHAPE, forget_phase)))
        self.retain = nn.Parameter(torch.from_numpy(grid(SHAPE, RETAIN_LOGITS_PHASE)))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        is_forget = torch.equal(input_ids, FORGET["input_ids"])
        return SimpleNamespace(logits=self.forget if is_forget else self.retain)


def context() -> StepContext:
    """One micro-batch per stream on one process: the layout the references see."""
    tokens = {
        k: int((b["labels"][:, 1:] != -100).sum())
        for k, b in (("forget", FORGET), ("retain", RETAIN))
    }
    return StepContext(step=0, world_size=1, tokens=tokens, sequences={"forget": 3, "retain": 3})


def loss_of(objective, model: nn.Module) -> float:
    loss, _ = objective(model, {"forget": FORGET, "retain": RETAIN}, context())
    return float(loss.detach())


def test_ga_matches_open_unlearning(parity) -> None:
    # open-unlearning src/trainer/unlearn/grad_ascent.py GradAscent.compute_loss (-outputs.loss)
    golden = -4.444211483001709
    parity("ga / open-unlearning grad_ascent.py", loss_of(GAObjective(), FixedLogits(0.0)),
           golden, rel=1e-6)  # fmt: skip


def test_graddiff_matches_open_unlearning(parity) -> None:
    # open-unlearning src/trainer/unlearn/grad_diff.py GradDiff.compute_loss, gamma=1,
    # alpha=0.7, retain_loss_type=NLL
    golden = -2.075350522994995
    model = FixedLogits(FORGET_LOGITS_PHASE)
    objective = GradDiffObjective(model, GradDiffSettings(retain_weight=0.7))
    parity("graddiff / open-unlearning grad_diff.py", loss_of(objective, model), golden, rel=1e-6)


def npo_loss(beta: float, normalization: str) -> float:
    model = FixedLogits(FORGET_REFERENCE_PHASE)
    objective = NPOObjective(model, NPOSettings(beta=beta, normalization=normalization))
    with torch.no_grad():  # the reference (frozen copy) keeps phase 0.4; the model moves
        model.forget.copy_(torch.from_numpy(grid(SHAPE, FORGET_LOGITS_PHASE)))
    return loss_of(objective, model)


@pytest.mark.parametrize(("beta", "golden"), [(0.1, 13.086565971374512), (0.5, 2.0833234786987305)])
def test_npo_sum_matches_open_unlearning(parity, beta: float, golden: float) -> None:
    # open-unlearning src/trainer/utils.py compute_dpo_loss(model, ref, win_inputs=None,
    # lose_inputs=forget, beta): sums of token log-probs per sequence
    parity("npo sum / open-unlearning trainer/utils.py", npo_loss(beta, "sum"), golden, rel=1e-6)


@pytest.mark.parametrize(
    ("beta", "golden"), [(0.1, 13.643183390299479), (0.0225, 61.392157236735024)]
)
def test_npo_mean_matches_the_optml_code(parity, beta: float, golden: float) -> None:
    # OPTML-Group/Unlearn-Simple WMDP/src/unlearn/GA.py NPO_FT.compute_loss (gamma=0): HF's mean
    # loss of one sequence per batch (their batch_size 1), averaged over the 3 sequences
    parity("npo mean / Unlearn-Simple WMDP/src/unlearn/GA.py", npo_loss(beta, "mean"), golden,
           rel=1e-6)  # fmt: skip


def test_rmu_tokens_mode_matches_open_unlearning(parity) -> None:
    # open-unlearning src/trainer/unlearn/rmu.py RMU.compute_activation_loss on hidden states
    # grid((3, 6, 8), 0.2) vs c·u, and grid(..., 0.7) vs grid(..., 0.75), every position a label
    # and none padded. With padding theirs differs: it divides a (b,) sum by a (b, 1) count,
    # which broadcasts to (b, b) and gives mean(sum) · mean(1/count) (6.4916 here, with the
    # last sequence 2 shorter) where the per-sequence mean is meant (ours: 6.1213).
    golden_forget, golden_retain = 6.54517936706543, 0.011264550499618053
    model, _ = tiny_model("llama", seed=0)  # only to build the objective; the states are given
    objective = RMUObjective(model, RMUSettings(layer=0, steering_coeff=STEERING,
                                                positions="tokens"))  # fmt: skip
    unpadded = {"attention_mask": torch.ones(3, 6, dtype=torch.long)}
    ctx = context()
    hidden = torch.from_numpy(grid((3, 6, HIDDEN), 0.2))
    target = torch.from_numpy(control_vector()).expand_as(hidden)
    forget = objective.mean_sq_error("forget", hidden, target, unpadded, ctx)
    retain = objective.mean_sq_error(
        "retain", torch.from_numpy(grid((3, 6, HIDDEN), 0.7)),
        torch.from_numpy(grid((3, 6, HIDDEN), 0.75)), unpadded, ctx,
    )  # fmt: skip
    name = "rmu tokens / open-unlearning rmu.py"
    parity(name, float(forget), golden_forget, rel=1e-6)
    parity(name, float(retain), golden_retain, rel=1e-5)


# -- SimNPO, IdkDPO, IdkNLL -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("beta", "gamma", "forget_weight", "retain_weight", "golden"),
    [
        (4.5, 0.0, 0.125, 1.0, 3.384087085723877),  # open-unlearning configs/trainer/SimNPO.yaml
        (2.5, 0.3, 0.1375, 1.0, 3.3841025829315186),
        (0.5, 1.0, 1.0, 0.0, 0.6479793190956116),  # the forget term alone
    ],
)
def test_simnpo_matches_open_unlearning(parity, beta, gamma, forget_weight, retain_weight,
                                        golden) -> None:  # fmt: skip
    # open-unlearning src/trainer/unlearn/simnpo.py SimNPO.compute_loss (delta=gamma,
    # gamma=forget_weight, alpha=retain_weight, retain_loss_type=NLL)
    model = FixedLogits(FORGET_LOGITS_PHASE)
    settings = SimNPOSettings(beta=beta, gamma=gamma, forget_weight=forget_weight,
                              retain_weight=retain_weight)  # fmt: skip
    parity("simnpo / open-unlearning simnpo.py", loss_of(SimNPOObjective(model, settings), model),
           golden, rel=1e-6)  # fmt: skip


@pytest.mark.parametrize(
    ("beta", "gamma", "forget_weight", "retain_weight", "golden"),
    [
        (2.5, 0.0, 0.1375, 1.0, 3.384094476699829),  # the authors' TOFU/config/forget.yaml
        (2.5, 0.3, 0.1375, 1.0, 3.3841025829315186),
        (0.5, 1.0, 1.0, 0.0, 0.6479793190956116),
    ],
)
def test_simnpo_matches_the_authors_code(parity, beta, gamma, forget_weight, retain_weight,
                                         golden) -> None:  # fmt: skip
    # OPTML-Group/Unlearn-Simple TOFU/dataloader.py CustomTrainerForgetting.compute_loss,
    # loss_type=simnpo_grad_diff (npo_coeff=forget_weight, grad_diff_coeff=retain_weight)
    model = FixedLogits(FORGET_LOGITS_PHASE)
    settings = SimNPOSettings(beta=beta, gamma=gamma, forget_weight=forget_weight,
                              retain_weight=retain_weight)  # fmt: skip
    parity("simnpo / Unlearn-Simple TOFU/dataloader.py",
           loss_of(SimNPOObjective(model, settings), model), golden, rel=1e-6)  # fmt: skip


IDK = {
    "input_ids": torch.tensor(IDK_IDS),
    "attention_mask": torch.tensor(IDK_ATTENTION),
    "labels": torch.tensor([[-100 if j < PROMPT_LENGTH or not a else t
                             for j, (t, a) in enumerate(zip(r, m, strict=True))]
                            for r, m in zip(IDK_IDS, IDK_ATTENTION, strict=True)]),
}  # fmt: skip


class RowLogits(nn.Module):
    """Fixed logits per row: row i of the forget, retain or refusal batch gets row i of that
    batch's array (the stand-in the references ran with, which also takes concatenated rows)."""

    def __init__(self, forget_phase: float, idk_phase: float) -> None:
        super().__init__()
        self.arrays = nn.ParameterDict({
            "forget": nn.Parameter(torch.from_numpy(grid(SHAPE, forget_phase))),
            "retain": nn.Parameter(torch.from_numpy(grid(SHAPE, RETAIN_LOGITS_PHASE))),
            "idk": nn.Parameter(torch.from_numpy(grid(SHAPE, idk_phase))),
        })  # fmt: skip
        self.index = {tuple(row): (name, i) for name, ids in
                      (("forget", FORGET_IDS), ("retain", RETAIN_IDS), ("idk", IDK_IDS))
                      for i, row in enumerate(ids)}  # fmt: skip

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        rows = [self.arrays[n][i] for n, i in (self.index[tuple(r)] for r in input_ids.tolist())]
        return SimpleNamespace(logits=torch.stack(rows))


@pytest.mark.parametrize(
    ("beta", "retain_weight", "golden"),
    [(0.1, 1.0, 15.531633377075195), (0.5, 0.7, 3.9718973636627197)],
)
def test_idkdpo_matches_open_unlearning(parity, beta, retain_weight, golden) -> None:
    # open-unlearning src/trainer/unlearn/dpo.py DPO.compute_loss (gamma=1, alpha=retain_weight,
    # NLL retain) with the refusals as "alternate" (win) and the forget answers as "original"
    model = RowLogits(FORGET_REFERENCE_PHASE, IDK_REFERENCE_PHASE)
    objective = IdkDPOObjective(model, IdkDPOSettings(beta=beta, retain_weight=retain_weight))
    with torch.no_grad():  # the frozen copy keeps the reference logits; the model moves
        model.arrays["forget"].copy_(torch.from_numpy(grid(SHAPE, FORGET_LOGITS_PHASE)))
        model.arrays["idk"].copy_(torch.from_numpy(grid(SHAPE, IDK_LOGITS_PHASE)))
    for ids, labels in zip(IDK_IDS, IDK["labels"].tolist(), strict=True):
        n = sum(1 for t in ids if t) if ids[-1] == 0 else len(ids)
        objective.preferred[tuple(ids[:PROMPT_LENGTH])] = TokenizedExample(
            ids[:n], labels[:n], PROMPT_LENGTH
        )
    parity("idkdpo / open-unlearning dpo.py", loss_of(objective, model), golden, rel=1e-6)


def test_idknll_matches_tofu(parity) -> None:
    # TOFU dataloader.py CustomTrainerForgetting.compute_loss, loss_type=idk: HF's mean loss over
    # the refusal and retain batches concatenated
    golden = 3.3685989379882812
    model = RowLogits(FORGET_LOGITS_PHASE, IDK_LOGITS_PHASE)
    batches = {"forget": IDK, "retain": RETAIN}
    tokens = {k: int((b["labels"][:, 1:] != -100).sum()) for k, b in batches.items()}
    ctx = StepContext(step=0, world_size=1, tokens=tokens, sequences={"forget": 3, "retain": 3})
    loss, _ = IdkNLLObjective(model, IdkNLLSettings(pooled=True))(model, batches, ctx)
    parity("idknll / TOFU dataloader.py (idk)", float(loss.detach()), golden, rel=1e-6)
