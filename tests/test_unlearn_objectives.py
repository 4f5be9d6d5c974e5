"""Unlearning objectives on tiny models: closed forms at step 0, which tensors train, seeds.

Each run is a few steps of a 2-layer model on CPU. Forget and retain sets are Q/A about two
disjoint sets of invented places.
"""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from expunge.data import FormatSettings, collate, tokenize_examples
from expunge.data.synthetic import place_qa
from expunge.erase.unlearn.ga import GAObjective
from expunge.erase.unlearn.graddiff import GradDiffObjective, GradDiffSettings
from expunge.erase.unlearn.npo import NPOObjective, NPOSettings
from expunge.erase.unlearn.rmu import RMUObjective, RMUSettings, select_parameters
from expunge.errors import ConfigError
from expunge.models.lora import LoraSettings
from expunge.models.tiny import tiny_model
from expunge.registry import OBJECTIVES
from expunge.train import StepContext, TrainSettings, prepare_trainable, train
from expunge.train.objectives import token_nll


def settings(**overrides) -> TrainSettings:
    base = {
        "mode": "full", "max_steps": 3, "batch_size": 4, "lr": 3e-3, "progress": False,
        "lora": LoraSettings(r=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj"]),
    }  # fmt: skip
    return TrainSettings(**{**base, **overrides})


def data(tok):
    places = place_qa(8, seed=3)
    fmt = FormatSettings()
    return tokenize_examples(places[:6], tok, fmt), tokenize_examples(places[6:], tok, fmt)


def run(objective_factory, train_settings: TrainSettings, arch: str = "llama"):
    """Fresh tiny model (seed 0), prepared, trained; returns (model, result, streams, tok)."""
    model, tok = tiny_model(arch, seed=0)
    forget, retain = data(tok)
    model = prepare_trainable(model, train_settings)
    objective = objective_factory(model)
    streams = {"forget": forget, "retain": retain}
    model, result = train(
        model, streams, objective, train_settings, tok.pad_token_id, primary_stream="forget"
    )
    return model, result, streams, tok


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def one_batch_context(batches) -> StepContext:
    """The context the loop builds for a single micro-batch on one process."""
    tokens = {k: int((b["labels"][:, 1:] != -100).sum()) for k, b in batches.items()}
    sequences = {k: b["input_ids"].shape[0] for k, b in batches.items()}
    return StepContext(step=0, world_size=1, tokens=tokens, sequences=sequences)


@torch.no_grad()
def forget_nll(model, examples, pad_id: int) -> float:
    nll, mask = token_nll(model, collate(examples, pad_id))
    return float((nll * mask).sum() / mask.sum())


# -- registry -------------------------------------------------------------------------------------


def test_objectives_are_registered() -> None:
    assert OBJECTIVES.get("ga") is GAObjective
    assert OBJECTIVES.get("graddiff") is GradDiffObjective
    assert OBJECTIVES.get("npo") is NPOObjective
    assert OBJECTIVES.get("rmu") is RMUObjective


# -- NPO ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalization", ["sum", "mean"])
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_npo_loss_at_step_zero_is_two_over_beta_log_two(normalization: str, mode: str) -> None:
    beta = 0.1 if normalization == "sum" else 0.0225
    npo = NPOSettings(beta=beta, normalization=normalization)
    _, result, _, _ = run(lambda m: NPOObjective(m, npo), settings(mode=mode, max_steps=2))
    expected = 2 / beta * math.log(2)
    assert result.history[0]["loss"] == pytest.approx(expected, rel=1e-6)
    assert result.history[0]["forget/log_ratio"] == pytest.approx(0.0, abs=1e-6)
    # after one update the model has moved away from the reference
    assert result.history[1]["forget/log_ratio"] != pytest.approx(0.0, abs=1e-6)


def test_npo_matches_closed_form_after_a_change() -> None:
    """Loss = (2/β)·mean softplus(β·(log π_θ − log π_ref)) from independent sums of log-probs."""
    model, tok = tiny_model("llama", seed=0)
    forget, _ = data(tok)
    batch = collate(forget[:4], tok.pad_token_id)
    objective = NPOObjective(model, NPOSettings(beta=0.5, normalization="sum"))
    with torch.no_grad():
        ref_nll, ref_mask = token_nll(model, batch)
        model.lm_head.weight.mul_(1.3)  # the model now differs from the frozen reference
        nll, mask = token_nll(model, batch)
    ref_logp = -(ref_nll * ref_mask).sum(1)
    logp = -(nll * mask).sum(1)
    expected = float((2 / 0.5) * torch.nn.functional.softplus(0.5 * (logp - ref_logp)).mean())
    loss, _ = objective(model, {"forget": batch}, one_batch_context({"forget": batch}))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("beta", [0.0, -0.1])
def test_npo_beta_must_be_positive(beta: float) -> None:
    with pytest.raises(ValidationError, match="beta must be > 0"):
        NPOSettings(beta=beta)


def test_npo_retain_term_adds_a_retain_stream() -> None:
    model, _ = tiny_model("llama", seed=0)
    assert NPOObjective(model).streams == ("forget",)
    assert NPOObjective(model, NPOSettings(retain_weight=1.0)).streams == ("forget", "retain")


# -- GA / GradDiff --------------------------------------------------------------------------------


def test_ga_increases_the_forget_loss() -> None:
    model, tok = tiny_model("llama", seed=0)
    forget, _ = data(tok)
    before = forget_nll(model, forget, tok.pad_token_id)
    model, result, _, _ = run(lambda m: GAObjective(m), settings(max_steps=5))
    after = forget_nll(model, forget, tok.pad_token_id)
    assert after > before + 0.5, (before, after)
    assert result.history[0]["loss"] == pytest.approx(-result.history[0]["forget/nll"])


def test_graddiff_is_minus_forget_nll_plus_weighted_retain_nll() -> None:
    model, tok = tiny_model("llama", seed=0)
    forget, retain = data(tok)
    batches = {"forget": collate(forget[:3], tok.pad_token_id),
               "retain": collate(retain[:3], tok.pad_token_id)}  # fmt: skip
    objective = GradDiffObjective(model, GradDiffSettings(retain_weight=0.7))
    loss, logs = objective(model, batches, one_batch_context(batches))
    f_nll, f_mask = token_nll(model, batches["forget"])
    r_nll, r_mask = token_nll(model, batches["retain"])
    expected = -(f_nll * f_mask).sum() / f_mask.sum() + 0.7 * (r_nll * r_mask).sum() / r_mask.sum()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    assert set(logs) == {"forget/nll", "retain/nll"}


def test_graddiff_kl_retain_is_zero_before_training() -> None:
    model, tok = tiny_model("llama", seed=0)
    forget, retain = data(tok)
    batches = {"forget": collate(forget[:3], tok.pad_token_id),
               "retain": collate(retain[:3], tok.pad_token_id)}  # fmt: skip
    objective = GradDiffObjective(model, GradDiffSettings(retain_loss="kl"))
    _, logs = objective(model, batches, one_batch_context(batches))
    assert float(logs["retain/kl"]) == pytest.approx(0.0, abs=1e-6)


# -- RMU ------------------------------------------------------------------------------------------


def test_rmu_changes_exactly_the_selected_tensors() -> None:
    model, _ = tiny_model("llama", seed=0)  # run() builds the same model (seed 0) to train
    rmu = RMUSettings(layer=1, steering_coeff=6.5, alpha=10.0)
    chosen = select_parameters(model, rmu.param_patterns())
    assert chosen == ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    before = snapshot(model)
    trainable = settings(trainable=[f"re:{name}" for name in chosen], max_steps=3)
    model, result, _, _ = run(lambda m: RMUObjective(m, rmu), trainable)
    after = snapshot(model)
    changed = sorted(n for n in before if not torch.equal(before[n], after[n]))
    assert changed == chosen
    assert result.history[-1]["forget/rmu_mse"] < result.history[0]["forget/rmu_mse"]


def test_rmu_step_zero_matches_hidden_states_and_control_vector() -> None:
    """Forget term = mean ‖h − c·u‖² over scored positions; retain term = 0 (model == frozen)."""
    model, tok = tiny_model("llama", seed=0)
    forget, retain = data(tok)
    batches = {"forget": collate(forget[:3], tok.pad_token_id),
               "retain": collate(retain[:3], tok.pad_token_id)}  # fmt: skip
    objective = RMUObjective(
        model, RMUSettings(layer=0, steering_coeff=4.0, alpha=5.0, positions="labels")
    )
    u = objective.control / 4.0
    assert float(u.norm()) == pytest.approx(1.0, abs=1e-6)
    generator = torch.Generator().manual_seed(0)
    raw = torch.rand(u.numel(), generator=generator)  # uniform [0, 1), then normalized
    assert torch.allclose(u, raw / raw.norm())

    loss, logs = objective(model, batches, one_batch_context(batches))
    with torch.no_grad():
        batch = batches["forget"]
        hidden = model(**{k: batch[k] for k in ("input_ids", "attention_mask")},
                       output_hidden_states=True).hidden_states[1]  # output of block 0  # fmt: skip
        scored = batch["labels"][:, 1:] != -100
        expected = ((hidden[:, :-1] - 4.0 * u) ** 2).mean(-1)[scored].mean()
    assert float(logs["forget/rmu_mse"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(logs["retain/rmu_mse"]) == pytest.approx(0.0, abs=1e-10)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_rmu_token_positions_average_every_non_pad_position_per_sequence() -> None:
    """positions=tokens: prompts count too, padding never; each sequence weighs the same."""
    model, tok = tiny_model("llama", seed=0)
    forget, retain = data(tok)
    batches = {"forget": collate(forget[:3], tok.pad_token_id),
               "retain": collate(retain[:3], tok.pad_token_id)}  # fmt: skip
    assert (batches["forget"]["attention_mask"] == 0).any()  # the case needs padding
    settings_ = RMUSettings(layer=0, steering_coeff=4.0, positions="tokens")
    objective = RMUObjective(model, settings_)
    _, logs = objective(model, batches, one_batch_context(batches))
    with torch.no_grad():
        batch = batches["forget"]
        hidden = model(**{k: batch[k] for k in ("input_ids", "attention_mask")},
                       output_hidden_states=True).hidden_states[1]  # fmt: skip
        per_position = ((hidden - objective.control) ** 2).mean(-1)
        real = batch["attention_mask"].bool()
        expected = torch.stack([per_position[i][real[i]].mean() for i in range(len(real))]).mean()
        labels_only = RMUObjective(model, RMUSettings(layer=0, steering_coeff=4.0))  # default
        _, label_logs = labels_only(model, batches, one_batch_context(batches))
    assert float(logs["forget/rmu_mse"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(label_logs["forget/rmu_mse"]) != pytest.approx(float(expected), rel=1e-3)


def test_adaptive_rmu_targets_scale_with_the_frozen_norm() -> None:
    """Adaptive RMU: target at each position = β·‖h_ref‖·u; at step 0 h == h_ref."""
    model, tok = tiny_model("llama", seed=0)
    forget, retain = data(tok)
    batches = {"forget": collate(forget[:3], tok.pad_token_id),
               "retain": collate(retain[:3], tok.pad_token_id)}  # fmt: skip
    settings_ = RMUSettings(layer=0, steering_coeff=2.0, adaptive=True, positions="labels")
    objective = RMUObjective(model, settings_)
    _, logs = objective(model, batches, one_batch_context(batches))
    with torch.no_grad():
        batch = batches["forget"]
        hidden = model(**{k: batch[k] for k in ("input_ids", "attention_mask")},
                       output_hidden_states=True).hidden_states[1]  # output of block 0  # fmt: skip
        target = 2.0 * hidden.norm(dim=-1, keepdim=True) * objective.direction
        scored = batch["labels"][:, 1:] != -100
        expected = ((hidden[:, :-1] - target[:, :-1]) ** 2).mean(-1)[scored].mean()
        fixed = ((hidden[:, :-1] - 2.0 * objective.direction) ** 2).mean(-1)[scored].mean()
    assert float(logs["forget/rmu_mse"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(expected) != pytest.approx(float(fixed), rel=1e-2)  # not the fixed-c target


def test_rmu_pattern_matching_nothing_lists_real_names() -> None:
    model, _ = tiny_model("gpt2", seed=0)
    # the default params name Llama's down_proj; GPT-2 calls it mlp.c_proj
    with pytest.raises(ConfigError, match=r"matches no parameter.*transformer\.h\.0\.mlp\.c_proj"):
        RMUObjective(model, RMUSettings(layer=1))
    objective = RMUObjective(model, RMUSettings(layer=1, params=["h.1.mlp.c_proj.weight"]))
    assert objective.param_names == ["transformer.h.1.mlp.c_proj.weight"]
    assert objective.layer_name == "transformer.h.1"


def test_rmu_layer_out_of_range_or_unknown_is_an_error() -> None:
    model, _ = tiny_model("llama", seed=0)
    with pytest.raises(ConfigError, match="2 decoder blocks"):
        RMUObjective(model, RMUSettings(layer=7))
    with pytest.raises(ConfigError, match="matches no module"):
        RMUObjective(model, RMUSettings(layer="layers.9", params=["layers.0.mlp.down_proj"]))
    with pytest.raises(ValidationError, match=r"set rmu\.params"):
        RMUSettings(layer="model.layers.1")


# -- determinism ----------------------------------------------------------------------------------

FACTORIES = {
    "ga": lambda m: GAObjective(m),
    "graddiff": lambda m: GradDiffObjective(m),
    "npo": lambda m: NPOObjective(m, NPOSettings(retain_weight=1.0)),
    "rmu": lambda m: RMUObjective(m, RMUSettings(layer=1, alpha=10.0)),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_objectives_are_deterministic_under_a_seed(name: str) -> None:
    lora = LoraSettings(r=4, alpha=8, dropout=0.1, targets=["q_proj", "v_proj"])
    if name == "rmu":
        make = lambda seed: settings(seed=seed, trainable=["re:.*mlp.down_proj.weight"])  # noqa: E731
    else:
        make = lambda seed: settings(mode="lora", lora=lora, seed=seed, lr=1e-2)  # noqa: E731
    model_a, result_a, _, _ = run(FACTORIES[name], make(0))
    model_b, result_b, _, _ = run(FACTORIES[name], make(0))
    model_c, _, _, _ = run(FACTORIES[name], make(1))
    a, b, c = snapshot(model_a), snapshot(model_b), snapshot(model_c)
    assert [r["loss"] for r in result_a.history] == [r["loss"] for r in result_b.history]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert all(math.isfinite(r["loss"]) for r in result_a.history)
