"""ILU's IRMv1 penalty: zero where the auxiliary gradient w.r.t. w vanishes, the closed form of
that gradient, finite differences in w and in θ (double backprop), and the wrapper in the loop."""

from __future__ import annotations

import math

import pytest
import torch

from expunge.data import FormatSettings, collate, tokenize_examples
from expunge.data.synthetic import place_qa
from expunge.erase.unlearn.ga import GAObjective
from expunge.erase.unlearn.ilu import ILUObjective, irm_gradient
from expunge.erase.unlearn.npo import NPOObjective
from expunge.errors import ConfigError
from expunge.models.tiny import tiny_model
from expunge.train import StepContext, TrainSettings, prepare_trainable, train
from expunge.train.objectives import logits_nll


def batch_of(tok, n: int = 4, seed: int = 5):
    examples = tokenize_examples(place_qa(n, seed=seed, per_place=1), tok, FormatSettings())
    return collate(examples, tok.pad_token_id)


def aux_loss_at(model, batch, w: float) -> float:
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, mask = logits_nll(w * logits, batch["labels"])
        return float((nll * mask).sum() / mask.sum())


def test_penalty_is_zero_when_the_aux_gradient_in_w_vanishes() -> None:
    # An output head of zeros makes every logit 0: CE(w·0, y) = log V for all w, so ∂ℓ/∂w = 0.
    model, tok = tiny_model("llama", seed=0)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    grad, loss = irm_gradient(model, batch_of(tok))
    assert float(grad.detach()) == 0.0
    assert float(loss.detach()) == pytest.approx(math.log(model.config.vocab_size), rel=1e-6)


def test_gradient_in_w_matches_closed_form_and_finite_differences() -> None:
    model, tok = tiny_model("llama", seed=0)
    model = model.double()
    batch = batch_of(tok)
    grad, _ = irm_gradient(model, batch)
    assert abs(float(grad.detach())) > 1e-3  # a random model is not stationary in w

    eps = 1e-5
    finite = (aux_loss_at(model, batch, 1 + eps) - aux_loss_at(model, batch, 1 - eps)) / (2 * eps)
    assert float(grad.detach()) == pytest.approx(finite, rel=1e-6)

    # closed form: mean over label tokens of E_{v~p}[z_v] − z_y
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        z, labels = logits[:, :-1], batch["labels"][:, 1:]
        mask = labels != -100
        expected_logit = (z.softmax(-1) * z).sum(-1)
        target_logit = z.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        closed = float(((expected_logit - target_logit) * mask).sum() / mask.sum())
    assert float(grad.detach()) == pytest.approx(closed, rel=1e-9)


def test_penalty_gradient_in_theta_matches_finite_differences() -> None:
    """Double backprop: d(∂ℓ/∂w)²/dθ along a random direction equals the finite difference.

    GPT-2, because it computes in float64 throughout once converted (Llama's RMSNorm and rotary
    embedding run in float32 inside, which limits finite differences to ~1e-4).
    """
    model, tok = tiny_model("gpt2", seed=0)
    model = model.double()
    batch = batch_of(tok, n=2)
    params = [p for p in model.parameters()]
    generator = torch.Generator().manual_seed(0)
    direction = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]

    grad, _ = irm_gradient(model, batch)
    penalty_grads = torch.autograd.grad(grad.pow(2), params, allow_unused=True)
    analytic = sum(
        float((g * d).sum()) for g, d in zip(penalty_grads, direction, strict=True) if g is not None
    )

    def penalty_at(step: float) -> float:
        with torch.no_grad():
            for p, d in zip(params, direction, strict=True):
                p.add_(step * d)
        value = float(irm_gradient(model, batch)[0].detach() ** 2)
        with torch.no_grad():
            for p, d in zip(params, direction, strict=True):
                p.sub_(step * d)
        return value

    eps = 1e-5
    finite = (penalty_at(eps) - penalty_at(-eps)) / (2 * eps)
    assert abs(analytic) > 1e-6
    assert analytic == pytest.approx(finite, rel=1e-6)


def one_batch_context(batches) -> StepContext:
    tokens = {k: int((b["labels"][:, 1:] != -100).sum()) for k, b in batches.items()}
    return StepContext(0, 1, tokens, {k: b["input_ids"].shape[0] for k, b in batches.items()})


def test_wrapper_adds_weighted_squared_gradient_to_the_inner_loss() -> None:
    model, tok = tiny_model("llama", seed=0)
    batches = {"forget": batch_of(tok, seed=1), "aux0": batch_of(tok, seed=2)}
    ctx = one_batch_context(batches)
    inner_loss, _ = GAObjective(model)(model, batches, ctx)
    wrapped = ILUObjective(GAObjective(model), weight=0.3, aux_streams=("aux0",))
    assert wrapped.streams == ("forget", "aux0")
    loss, logs = wrapped(model, batches, ctx)
    grad, _ = irm_gradient(model, batches["aux0"])
    assert float(loss.detach()) == pytest.approx(
        float((inner_loss + 0.3 * grad**2).detach()), rel=1e-5
    )
    assert float(logs["aux0/irm_penalty"]) == pytest.approx(float(grad.detach() ** 2), rel=1e-5)


def test_wrapper_rejects_no_aux_streams_and_name_clashes() -> None:
    model, _ = tiny_model("llama", seed=0)
    with pytest.raises(ConfigError, match="at least one auxiliary"):
        ILUObjective(GAObjective(model), 0.1, ())
    with pytest.raises(ConfigError, match="clash"):
        ILUObjective(GAObjective(model), 0.1, ("forget",))


def test_npo_with_ilu_trains_in_the_loop() -> None:
    model, tok = tiny_model("llama", seed=0)
    fmt = FormatSettings()
    places = place_qa(10, seed=3)
    streams = {
        "forget": tokenize_examples(places[:4], tok, fmt),
        "aux0": tokenize_examples(place_qa(6, seed=9), tok, fmt),
    }
    settings = TrainSettings(mode="lora", max_steps=3, batch_size=4, lr=1e-2, progress=False)
    model = prepare_trainable(model, settings)
    objective = ILUObjective(NPOObjective(model), weight=0.1, aux_streams=("aux0",))
    _, result = train(model, streams, objective, settings, tok.pad_token_id)
    first = result.history[0]
    assert first["forget/npo"] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-6)
    assert first["aux0/irm_penalty"] > 0
    assert first["loss"] == pytest.approx(first["forget/npo"] + 0.1 * first["aux0/irm_penalty"])
    assert all(math.isfinite(r["loss"]) for r in result.history)
