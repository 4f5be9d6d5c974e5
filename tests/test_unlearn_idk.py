"""IdkNLL and IdkDPO: closed forms on tiny models, the refusal answers, the eraser.

Closed forms: a model whose ``lm_head`` is zero predicts every token with probability 1/V, so
each token's NLL is log V; at step 0 IdkDPO's two log ratios are 0 (its loss is (2/β)·log 2).
"""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from expunge.data import collate, tokenize_examples
from expunge.data.examples import Example
from expunge.data.synthetic import place_qa
from expunge.erase.unlearn.eraser import objective_streams
from expunge.erase.unlearn.idk import idk_answers, with_idk_answers
from expunge.erase.unlearn.idkdpo import IdkDPOObjective, IdkDPOSettings
from expunge.erase.unlearn.idknll import IdkNLLObjective, IdkNLLSettings
from expunge.errors import DataError
from expunge.models.tiny import tiny_model
from expunge.registry import OBJECTIVES
from expunge.train import TrainSettings, prepare_trainable, train
from expunge.train.objectives import token_nll
from objective_helpers import (
    FMT,
    one_batch_context,
    place_batches,
    run_unlearn_eraser,
    tokenizer_of,
    uniform_model,
)


def test_idk_objectives_are_registered() -> None:
    assert OBJECTIVES.get("idknll") is IdkNLLObjective
    assert OBJECTIVES.get("idkdpo") is IdkDPOObjective


# -- the refusal answers --------------------------------------------------------------------


def test_shipped_refusals_and_a_users_own_file(tmp_path) -> None:
    shipped = idk_answers()
    assert len(shipped) == 50 and len(set(shipped)) == 50 and "I don't know." in shipped
    own = tmp_path / "idk.txt"
    own.write_text("No idea.\n\nCannot say.\n")
    assert idk_answers(str(own)) == ["No idea.", "Cannot say."]
    with pytest.raises(DataError, match="not found"):
        idk_answers(str(tmp_path / "missing.txt"))
    with pytest.raises(ValidationError, match="not found"):
        IdkNLLSettings(answers=str(tmp_path / "missing.txt"))


def test_refusals_keep_the_question_and_are_drawn_under_the_seed() -> None:
    forget = place_qa(6, seed=1)
    answers = idk_answers()
    first, again = with_idk_answers(forget, answers, 0), with_idk_answers(forget, answers, 0)
    assert first == again
    assert [e.prompt for e in first] == [e.prompt for e in forget]
    assert all(e.response in answers and e.meta["idk"] for e in first)
    assert [e.response for e in with_idk_answers(forget, answers, 1)] != [e.response for e in first]
    with pytest.raises(DataError, match=r"not prompt/response pairs.*bios=false"):
        with_idk_answers([Example(text="a biography")], answers, 0)


# -- IdkNLL -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pooled", "factor"), [(True, 1.0), (False, 2.0)])
def test_idknll_on_a_uniform_model(pooled: bool, factor: float) -> None:
    model, tok, log_v = uniform_model()
    batches = place_batches(tok)
    objective = IdkNLLObjective(model, IdkNLLSettings(pooled=pooled))
    loss, logs = objective(model, batches, one_batch_context(batches))
    assert float(loss.detach()) == pytest.approx(factor * log_v, rel=1e-5)
    assert float(logs["forget/idk_nll"]) == pytest.approx(log_v, rel=1e-5)


def test_idknll_pooled_is_one_mean_over_both_streams() -> None:
    model, tok = tiny_model("llama", seed=0)
    batches = place_batches(tok)
    loss, _ = IdkNLLObjective(model, IdkNLLSettings(retain_weight=0.5))(
        model, batches, one_batch_context(batches)
    )
    (f, fm), (r, rm) = (token_nll(model, batches[k]) for k in ("forget", "retain"))
    expected = ((f * fm).sum() + 0.5 * (r * rm).sum()) / (fm.sum() + rm.sum())
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_idknll_trains_on_refusals() -> None:
    model, tok = tiny_model("llama", seed=0)
    forget, retain = place_qa(4, seed=1), place_qa(4, seed=2)
    objective = IdkNLLObjective(model)
    streams = objective_streams(objective, forget, retain, tokenizer_of(tok), seed=0)
    idk = with_idk_answers(forget, idk_answers(), 0)
    assert [t.input_ids for t in streams["forget"]] == [
        t.input_ids for t in tokenize_examples(idk, tok, FMT)
    ]
    assert len(streams["retain"]) == len(retain)
    alone = IdkNLLObjective(model, IdkNLLSettings(retain_weight=0.0))
    assert alone.streams == ("forget",)
    assert set(objective_streams(alone, forget, retain, tokenizer_of(tok), 0)) == {"forget"}


# -- IdkDPO -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_idkdpo_loss_at_step_zero_is_two_over_beta_log_two(mode: str) -> None:
    model, tok = tiny_model("llama", seed=0)
    settings = TrainSettings(mode=mode, max_steps=2, batch_size=3, lr=3e-3, progress=False,
                             lora={"r": 4, "alpha": 8, "dropout": 0.0, "targets": ["q_proj"]})  # fmt: skip
    model = prepare_trainable(model, settings)
    objective = IdkDPOObjective(model, IdkDPOSettings(beta=0.1, retain_weight=0.0))
    streams = objective_streams(objective, place_qa(6, seed=1), [], tokenizer_of(tok), seed=0)
    _, result = train(model, streams, objective, settings, tok.pad_token_id)
    assert result.history[0]["loss"] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-6)
    assert result.history[0]["forget/idk_log_ratio"] == pytest.approx(0.0, abs=1e-6)
    # after one update the refusal has become more likely than before, the truth less
    assert result.history[1]["forget/idk_log_ratio"] > result.history[1]["forget/true_log_ratio"]


def test_idkdpo_pairs_each_question_with_its_refusal() -> None:
    model, tok = tiny_model("llama", seed=0)
    forget = place_qa(4, seed=1)
    objective = IdkDPOObjective(model, IdkDPOSettings(retain_weight=0.0))
    streams = objective_streams(objective, forget, [], tokenizer_of(tok), seed=0)
    rows = [streams["forget"][i] for i in (2, 0, 3)]  # a shuffled batch
    preferred = objective.preferred_batch(collate(rows, tok.pad_token_id), tok.pad_token_id)
    idk = tokenize_examples(with_idk_answers(forget, idk_answers(), 0), tok, FMT)
    assert torch.equal(preferred["input_ids"], collate([idk[2], idk[0], idk[3]],
                                                       tok.pad_token_id)["input_ids"])  # fmt: skip
    stranger = tokenize_examples(place_qa(1, seed=9), tok, FMT)
    with pytest.raises(DataError, match="without its refusal"):
        objective.preferred_batch(collate(stranger, tok.pad_token_id))


def test_idkdpo_is_the_dpo_closed_form_after_a_change() -> None:
    model, tok = tiny_model("llama", seed=0)
    forget = place_qa(3, seed=1)
    objective = IdkDPOObjective(model, IdkDPOSettings(beta=0.5, retain_weight=0.0))
    streams = objective_streams(objective, forget, [], tokenizer_of(tok), seed=0)
    lose = collate(streams["forget"], tok.pad_token_id)
    win = objective.preferred_batch(lose, tok.pad_token_id)

    def log_p(batch):
        nll, mask = token_nll(model, batch)
        return -(nll * mask).sum(1)

    with torch.no_grad():
        ref_win, ref_lose = log_p(win), log_p(lose)
        model.lm_head.weight.mul_(1.3)
        cur_win, cur_lose = log_p(win), log_p(lose)
    margin = (cur_win - ref_win) - (cur_lose - ref_lose)
    expected = -(2 / 0.5) * torch.nn.functional.logsigmoid(0.5 * margin).mean()
    loss, _ = objective(model, {"forget": lose}, one_batch_context({"forget": lose}))
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


# -- through the unlearn eraser ---------------------------------------------------------------


@pytest.mark.parametrize("objective", ["idknll", "idkdpo"])
def test_the_eraser_runs_each_new_objective(tmp_path, objective: str) -> None:
    record, first = run_unlearn_eraser(tmp_path, objective)
    assert record.status == "ok" and record.metrics["train_steps"] == 2
    assert record.inputs["objective"] == objective
    if objective == "idkdpo":
        assert first["forget/idkdpo"] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-6)
    assert "train/retain/nll" in record.metrics  # both keep a retain NLL by default
