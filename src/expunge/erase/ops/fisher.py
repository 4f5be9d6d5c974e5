"""The diagonal empirical Fisher of a model on a small labelled set (Fine-mixing's
``selection=fisher``).

    F_i = (1/N) Σ_n (∂ L_n / ∂θ_i)²,    L_n the summed loss of example n alone

with L_n the negative log-likelihood of the example's label tokens (a causal LM) or the
classification head's cross-entropy (a sequence classifier). The diagonal Fisher is the
curvature that Fisher-weighted merging (Matena & Raffel, "Merging Models with Fisher-Weighted
Averaging", NeurIPS 2022) and EWC (Kirkpatrick et al., PNAS 2017) read: to second order,
moving coordinate i by δ_i from a trained point raises the loss by ½ F_i δ_i². Per example,
not per batch: the square of a batch's gradient is not the mean of its examples' squares.
It holds a float32 copy of every parameter beside one example's gradients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from expunge.data.collator import collate
from expunge.data.formatting import TokenizedExample
from expunge.errors import DataError
from expunge.lazy import lazy
from expunge.models.classifier import is_sequence_classifier, summed_cross_entropy
from expunge.train.objectives import token_nll

if TYPE_CHECKING:
    import torch
    from torch import nn
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    torch, nn = lazy("torch"), lazy("torch.nn")


def example_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The summed loss of a one-example batch: label-token NLL, or the classifier's CE."""
    if is_sequence_classifier(model):
        return summed_cross_entropy(model, batch)
    nll, _ = token_nll(model, batch)
    return nll.sum()


def fisher_diagonal(
    model: nn.Module, examples: list[TokenizedExample], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """``{name: F}`` for every parameter (float32, on the parameter's device); the model's
    ``requires_grad`` flags, gradients and train/eval mode are as they were after the call."""
    if not examples:
        raise DataError("the Fisher needs at least one labelled example")
    params = dict(model.named_parameters())  # tied tensors appear once
    flags = {name: p.requires_grad for name, p in params.items()}
    was_training = model.training
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    device = next(model.parameters()).device
    model.eval()  # no dropout: the Fisher of the model as it predicts
    try:
        for p in params.values():
            p.requires_grad_(True)
        for example in examples:
            batch = {k: v.to(device) for k, v in collate([example], pad_token_id).items()}
            grads = torch.autograd.grad(example_loss(model, batch), list(params.values()),
                                        allow_unused=True)  # fmt: skip
            for (name, _), grad in zip(params.items(), grads, strict=True):
                if grad is not None:
                    fisher[name].add_(grad.float().square())
    finally:
        for name, p in params.items():
            p.requires_grad_(flags[name])
        model.train(was_training)
    return {name: f.div_(len(examples)) for name, f in fisher.items()}
