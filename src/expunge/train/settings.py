"""Training settings: the knobs of the one loop, with their defaults."""

from __future__ import annotations

import importlib.util
import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from expunge.config import StrictModel
from expunge.errors import warn
from expunge.models.lora import LoraSettings, check_patterns


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
    # Compute precision: auto = bf16 autocast where the hardware has bf16 arithmetic (a CPU
    # with AVX512-BF16/AMX, a bf16 GPU), fp32 elsewhere; the record says which was used
    # (record.inputs.precision). Weights and optimizer state stay in their own dtype. fp32 until
    # bf16 is measured faster on the embedded model (docs/results/2026-12-03-speed.md).
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    # A frozen reference's outputs (KL targets, NPO's log π_ref) computed once per example
    # instead of a second forward every step: full (whole distributions), topk (the
    # reference_top_k likeliest tokens + the rest as one bucket), auto (full when every
    # label position of the run fits in reference_cache_mib, else topk), off (exact: a
    # forward every step). See expunge.train.reference.
    reference_cache: Literal["auto", "off", "full", "topk"] = "auto"
    reference_top_k: int = Field(default=64, ge=1)
    reference_cache_mib: int = Field(default=512, ge=0)
    # Batches of similar lengths (less padding): each epoch's seeded order is cut into
    # windows of length_window batches, sorted by length inside a window, and the batches
    # shuffled again (as HF's group_by_length). Resume-exact like the plain order.
    group_by_length: bool = False
    length_window: int = Field(default=16, ge=1)
    # Rows of a micro-batch that begin with the same tokens before any label (a chat
    # template's system prompt, a fixed instruction) run those tokens once and continue from
    # their KV cache. One process without gradient checkpointing only (the checkpointed
    # recompute would append to the cache twice; DDP/FSDP expect one forward per backward).
    share_prefix: bool = False
    # torch.compile the model for training (inductor, dynamic shapes). Off until measured: no
    # run has timed it yet (docs/results/2026-12-03-speed.md).
    compile: bool = False

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

    # re: patterns compile with the config, not after the model has loaded
    _check_trainable = field_validator("trainable")(check_patterns)

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
    steps = steps_for(settings, n_examples, world_size=1)
    if steps < FEW_STEPS and settings.max_steps is None:  # max_steps: the user chose the number
        per_step = settings.batch_size * settings.grad_accum
        how = f"{n_examples} examples × {settings.epochs:g} epochs / {per_step} per step"
        warn(f"this {what} takes {steps} optimizer step{'s' if steps != 1 else ''} ({how}): too "
             "few to expect it to take; raise train.epochs or lower train.batch_size / "
             "train.grad_accum (preset=demo is sized for small runs)")  # fmt: skip
    return steps


def steps_for(settings: TrainSettings, primary_size: int, world_size: int) -> int:
    """Optimizer steps of a run: ``max_steps``, else ``epochs`` over the primary stream."""
    if settings.max_steps is not None:
        return settings.max_steps
    per_step = settings.batch_size * world_size * settings.grad_accum
    return max(1, math.ceil(settings.epochs * primary_size / per_step))
