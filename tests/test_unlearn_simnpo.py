"""SimNPO: closed forms on tiny models, and the unlearn eraser running it.

Closed form: a model whose ``lm_head`` is zero predicts every token with probability 1/V, so
each token's NLL is log V.
"""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from expunge.erase.unlearn.simnpo import SimNPOObjective, SimNPOSettings
from expunge.models.tiny import tiny_model
from expunge.registry import OBJECTIVES
from expunge.train.objectives import token_nll
from objective_helpers import (
    one_batch_context,
    place_batches,
    run_unlearn_eraser,
    uniform_model,
)


def test_new_objectives_are_registered() -> None:
    assert OBJECTIVES.get("simnpo") is SimNPOObjective


# -- SimNPO -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("beta", "gamma", "weight"), [(2.5, 0.0, 0.1375), (4.5, 0.3, 1.0)])
def test_simnpo_on_a_uniform_model_is_its_closed_form(beta, gamma, weight) -> None:
    model, tok, log_v = uniform_model()
    batches = place_batches(tok)
    settings = SimNPOSettings(beta=beta, gamma=gamma, forget_weight=weight, retain_weight=0.5)
    loss, logs = SimNPOObjective(model, settings)(model, batches, one_batch_context(batches))
    forget = (2 / beta) * math.log1p(math.exp(-beta * (log_v - gamma)))
    assert float(logs["forget/simnpo"]) == pytest.approx(forget, rel=1e-5)
    assert float(logs["forget/mean_nll"]) == pytest.approx(log_v, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(weight * forget + 0.5 * log_v, rel=1e-5)


def test_simnpo_normalises_each_sequence_by_its_own_length() -> None:
    """−(2/β)·log σ(−β·(log π/|y|) + β·γ) per sequence, averaged: from independent token sums."""
    model, tok = tiny_model("llama", seed=0)
    batch = place_batches(tok, 4)["forget"]
    settings = SimNPOSettings(beta=2.0, gamma=0.5, forget_weight=1.0, retain_weight=0.0)
    objective = SimNPOObjective(model, settings)
    loss, _ = objective(model, {"forget": batch}, one_batch_context({"forget": batch}))
    nll, mask = token_nll(model, batch)
    log_p_per_token = -(nll * mask).sum(1) / mask.sum(1)
    expected = -(2 / 2.0) * torch.nn.functional.logsigmoid(-2.0 * log_p_per_token - 2.0 * 0.5)
    assert float(loss.detach()) == pytest.approx(float(expected.mean()), rel=1e-5)
    assert objective.streams == ("forget",)


def test_simnpo_keeps_no_reference_and_beta_must_be_positive() -> None:
    model, _ = tiny_model("llama", seed=0)
    assert SimNPOObjective(model).retain.reference is None  # NLL retain: no frozen copy
    with pytest.raises(ValidationError, match="beta must be > 0"):
        SimNPOSettings(beta=0.0)


# -- through the unlearn eraser ---------------------------------------------------------------


@pytest.mark.parametrize("objective", ["simnpo"])
def test_the_eraser_runs_each_new_objective(tmp_path, objective: str) -> None:
    record, first = run_unlearn_eraser(tmp_path, objective)
    assert record.status == "ok" and record.metrics["train_steps"] == 2
    assert record.inputs["objective"] == objective
    if objective == "idkdpo":
        assert first["forget/idkdpo"] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-6)
    assert "train/retain/nll" in record.metrics  # all three keep a retain NLL by default
