"""Per-row loss early in training (after Anti-Backdoor Learning: Li et al., NeurIPS 2021), as a
baseline scorer for poisoned instruction data.

ABL's observation: poisoned examples are learnt much faster than clean ones (the trigger is an
easy shortcut to one target), so early in training their loss is the lowest, and ABL isolates
the lowest-loss 1% of the training set. Here the model *before* the data (``reference``, e.g.
the instruct model) is fine-tuned on every row for a short budget (``train``: LoRA, one epoch by
default) through the one loop, and each row's mean response-token NLL is measured before and
after. Scores (``measure``; higher = more likely poisoned):

- ``drop`` (default, ours): NLL before − NLL after — how much the short training taught the row;
- ``loss`` (ABL's): −NLL after.

Why ``drop`` by default: clean rows that are the model's own answers (the offline default of
the generative implant) already have a low loss before any training, so the raw loss ranks
them with the poisoned rows; the drop does not. The rows with the ``isolation_rate`` highest
scores are flagged (ABL: 1%).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from expunge.audit.scoring import token_logprobs
from expunge.config import StrictModel
from expunge.data.formatting import tokenize_examples
from expunge.errors import ConfigError
from expunge.models.loading import ModelSettings, load_model_for
from expunge.scan.base import ScanContext, ScorerResult
from expunge.scan.spectral import top_share
from expunge.train.loop import prepare_trainable, train
from expunge.train.objectives import LMObjective
from expunge.train.settings import TrainSettings

EARLY_TRAIN: dict[str, Any] = {
    "mode": "lora", "epochs": 1, "lr": 1e-3, "batch_size": 8, "schedule": "constant",
    "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": ["all-linear"]},
}  # fmt: skip


def mean_nll(model: Any, tokenized: list, pad_token_id: int, batch_size: int) -> np.ndarray:
    scores = token_logprobs(model, tokenized, pad_token_id, batch_size=batch_size)
    return scores.nll_sums() / np.maximum(scores.counts(), 1)


class LossEarly(StrictModel):
    measure: Literal["drop", "loss"] = "drop"
    train: TrainSettings = Field(default_factory=lambda: TrainSettings(**EARLY_TRAIN))
    isolation_rate: float = Field(default=0.01, gt=0.0, lt=1.0)  # flagged share (ABL: 1%)

    def score_rows(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        return before - after if self.measure == "drop" else -after

    def score(self, ctx: ScanContext) -> ScorerResult:
        if ctx.reference is None:
            raise ConfigError("loss_early needs the model before the data: reference=MODEL")
        device = str(ctx.loaded.device)
        start = load_model_for(ModelSettings(name=ctx.reference, device=device))
        tokenized = tokenize_examples(ctx.examples, start.tokenizer, ctx.fmt)
        pad = start.tokenizer.pad_token_id
        before = mean_nll(start.model, tokenized, pad, ctx.batch_size)
        model = prepare_trainable(start.model, self.train)
        model, result = train(model, {"train": tokenized}, LMObjective("train"), self.train, pad,
                              out_dir=ctx.work / "loss_early",
                              description="loss_early: short fine-tuning")  # fmt: skip
        model.eval()
        after = mean_nll(model, tokenized, pad, ctx.batch_size)
        scores = self.score_rows(before, after)
        return ScorerResult(scores, top_share(scores, self.isolation_rate), {
            "measure": self.measure, "train_steps": result.steps, "reference": ctx.reference,
            "train_precision": result.precision,
            "flag_rule": f"top {self.isolation_rate}",
        })  # fmt: skip
