"""The one training loop, its settings and the objectives it optimizes."""

from expunge.train.loop import TrainResult, prepare_trainable, train
from expunge.train.objectives import LMObjective, StepContext, token_nll
from expunge.train.settings import TrainSettings

__all__ = [
    "LMObjective", "StepContext", "TrainResult", "TrainSettings", "prepare_trainable",
    "token_nll", "train",
]  # fmt: skip
