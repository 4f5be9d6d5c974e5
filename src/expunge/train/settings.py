"""Training settings: the knobs of the one loop, with their defaults."""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import Field, field_validator, model_validator

from expunge.config import StrictModel
from expunge.errors import warn
from expunge.models.lora import LoraSettings


class TrainSettings(StrictModel):
    mode: Literal["lora", "full"] = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    trainable: list[str] | None = None  # full mode: parameter name patterns to train (else all)
    epochs: float = 1.0
    max_steps: int | None = Field(default=None, ge=1)  # overrides epochs when set
    batch_size: int = 8  # per process, per micro-step
    grad_accum: int = 1
    lr: float = 1e-4
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    seed: int = 0
    log_every: int = 1
    save_every: int | None = None  # steps between checkpoints; None = no checkpoints
    keep_checkpoints: int = 1
    gradient_checkpointing: bool = False
    progress: bool = True
    # Experiment tracking through accelerate's trackers, into the run directory; off by default.
    report_to: Literal["none", "tensorboard", "wandb", "mlflow"] = "none"

    @model_validator(mode="after")
    def _check(self) -> TrainSettings:
        if self.lr <= 0:
            raise ValueError("lr must be > 0")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be >= 1")
        if self.max_steps is None and self.epochs <= 0:
            raise ValueError("epochs must be > 0 (or set max_steps)")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError("warmup_ratio must be in [0, 1)")
        return self

    @field_validator("report_to")
    @classmethod
    def _tracker_installed(cls, value: str) -> str:
        # Checked with the rest of the config, not after the model has loaded.
        if value != "none" and importlib.util.find_spec(value) is None:
            raise ValueError(f"{value} is not installed: pip install 'expunge[{value}]'")
        return value


FEW_STEPS = 10  # fewer optimizer steps than this rarely teach a model anything new


def warn_if_few_steps(settings: TrainSettings, n_examples: int, what: str) -> int:
    """The optimizer steps a run of ``n_examples`` will take; a warning when they are so few
    that the result means little (the paper preset's batch 8 × accumulation 8 on 2 fingerprint
    keys makes one step, and reached FSR 0 without a word)."""
    from expunge.train.loop import steps_for

    steps = steps_for(settings, n_examples, world_size=1)
    if steps < FEW_STEPS and settings.max_steps is None:  # max_steps: the user chose the number
        per_step = settings.batch_size * settings.grad_accum
        how = f"{n_examples} examples × {settings.epochs:g} epochs / {per_step} per step"
        warn(f"this {what} takes {steps} optimizer step{'s' if steps != 1 else ''} ({how}): too "
             "few to expect it to take; raise train.epochs or lower train.batch_size / "
             "train.grad_accum (preset=demo is sized for small runs)")  # fmt: skip
    return steps
