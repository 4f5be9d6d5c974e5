"""SANI's repair, measured in steps and stopped on held-out text.

The paper repairs "for 1–2 epochs" on the fine-tuning corpus with the sensitive tokens out of
the loss. An epoch of a user's 16 records is 2 optimizer steps, which repairs nothing; so the
repair here is a number of steps (``train.max_steps``), evaluated every ``eval_every`` steps on
held-out text and stopped when that stops improving (``stop_patience`` evaluations without a
gain of ``min_gain``):

- held-out notes: the imprint's held-out records, span tokens excluded (the writing the model
  should keep);
- held-out general answers: the input model's own answers to ordinary questions it is not
  repaired on (the ability the reset cost).

``utility_weight`` > 0 adds a term to the repair: KL(input model ‖ θ) on the input model's own
answers to ordinary questions (``utility_pairs`` of the offline Q/A pool), so the repair
restores what the reset broke in general, not only the notes. The teacher is the model as it
was given, frozen before the reset; the ordinary questions never contain a record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from expunge.audit.scoring import token_logprobs
from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings, TokenizedExample, tokenize_examples
from expunge.data.qa_pool import self_answered_pool
from expunge.models.loading import LoadedModel
from expunge.train.kl import KLRetainObjective
from expunge.train.reference import Reference

HELD_OUT_SHARE = 4  # one pool answer in this many is held out for the stop rule


@dataclass
class GeneralSet:
    """Ordinary Q/A answered by the input model: a share to repair on, a share held out."""

    train: list[TokenizedExample]
    heldout: list[TokenizedExample]

    @classmethod
    def build(cls, loaded: LoadedModel, n: int, seed: int) -> GeneralSet:
        pool = self_answered_pool(loaded, n, seed=seed + 7919, progress=False)
        examples = [Example(prompt=e.prompt, response=e.response) for e in pool]
        tokenized = tokenize_examples(examples, loaded.tokenizer, FormatSettings())
        heldout = tokenized[::HELD_OUT_SHARE]
        trained = [t for i, t in enumerate(tokenized) if i % HELD_OUT_SHARE]
        return cls(trained, heldout)


def mean_nll(model: nn.Module, examples: list[TokenizedExample], pad_token_id: int) -> float:
    """Mean NLL per label token of ``examples`` under ``model`` (in eval mode)."""
    was_training = model.training
    model.eval()
    try:
        scores = token_logprobs(model, examples, pad_token_id, region="labels")
    finally:
        model.train(was_training)
    return float(scores.nll_sums().sum() / max(scores.counts().sum(), 1))


@dataclass
class StopRule:
    """Stop when the held-out loss has not improved by ``min_gain`` (relative) for ``patience``
    evaluations; the evaluations are kept for the record."""

    sets: dict[str, list[TokenizedExample]]
    pad_token_id: int
    every: int
    patience: int | None
    min_gain: float = 0.005
    history: list[dict[str, float]] = field(default_factory=list)
    best: float = float("inf")
    since_best: int = 0

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        values = {
            name: mean_nll(model, data, self.pad_token_id) for name, data in self.sets.items()
        }
        values["total"] = float(np.sum(list(values.values())))
        self.history.append({"step": step, **values})
        return values

    def __call__(self, model: nn.Module, step: int) -> bool:
        if not self.sets or self.patience is None or step % self.every:
            return False
        total = self.evaluate(model, step)["total"]
        if total < self.best * (1 - self.min_gain):
            self.best, self.since_best = total, 0
        else:
            self.since_best += 1
        return self.since_best >= self.patience


def utility_objective(model: nn.Module, teacher: Reference, weight: float) -> tuple[float, Any]:
    """The KL-to-the-input-model term over the ``general`` stream."""
    return weight, KLRetainObjective(model, "general", teacher)


def frozen_teacher(model: nn.Module) -> Reference:
    """A frozen copy of the model as given (before the reset)."""
    with torch.no_grad():
        return Reference(model)
