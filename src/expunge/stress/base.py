"""``expunge stress NAME``: attack a model, re-audit the imprint, record the curve.

A stressor is a stage config registered in ``STRESSORS`` whose ``execute(ctx)`` changes the
model (relearning, fine-tuning, quantization) or how it is queried (sampling, system prompts,
paraphrased keys), and calls ``self.curve(ctx).audit(stage, x, loaded, ...)`` at each point of
its curve. Each point runs the imprint
kind's default audits (``DEFAULT_AUDITS``, through the same ``make_stage_audit`` as erasers), so
the record holds flat metrics ``STAGE/METRIC`` (``step_10/fsr``) and one ``curve`` entry in
``metric_details``: ``{"stressor", "x", "points": [{"x", "stage", "metrics"}], "skipped"}``.

Stressed models are not saved unless ``save_model=true`` (a 135M model is 0.5 GB per run).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from expunge.audit.base import Decoding
from expunge.audit.defaults import make_stage_audit, own_format
from expunge.data.examples import Example
from expunge.data.formatting import (
    FormatSettings,
    TokenizedExample,
    resolve_template,
    tokenize_examples,
    truncated_count,
)
from expunge.data.tasks import TaskData, TaskItem
from expunge.errors import ConfigError
from expunge.imprints.base import Imprint
from expunge.lazy import lazy
from expunge.models.classifier import is_sequence_classifier, task_objective, tokenize_task
from expunge.models.loading import LoadedModel, ModelSettings
from expunge.models.lora import merge_lora
from expunge.records import RunRecord
from expunge.stage import StageConfig, StageContext
from expunge.train.loop import prepare_trainable, train
from expunge.train.objectives import LMObjective, Objective
from expunge.train.settings import TrainSettings

if TYPE_CHECKING:
    import torch
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    torch = lazy("torch")

# The downstream user's fine-tuning that relearn and finetune stressors both simulate.
STRESS_TRAIN: dict[str, Any] = {
    "mode": "lora", "lr": 1e-4, "batch_size": 8, "schedule": "constant", "max_grad_norm": 1.0,
    "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": ["all-linear"]},
}  # fmt: skip


class StressConfig(StageConfig):
    KIND: ClassVar[str] = "stress"
    command: Literal["stress"] = "stress"
    stressor: str = ""
    model: ModelSettings = Field(default_factory=ModelSettings)
    imprint: str | None = None  # imprint.json (or its run directory): what is re-audited
    # how the imprint's examples are formatted for its audits (and relearn's training); default:
    # the imprint's own template, else the model's chat format. A knowledge imprint records no
    # template: give the one its model was fine-tuned in (audit_format.template=raw for the
    # unlearning demo's models)
    audit_format: FormatSettings | None = None
    audit_metrics: list[str] = Field(default_factory=list)  # default: by imprint kind
    max_control_prompts: int = Field(default=16, ge=0)
    # compute precision of the audits at each point (auto | fp32 | bf16); a pipeline's sets it
    audit_precision: Literal["auto", "fp32", "bf16"] = "fp32"
    save_model: bool = False  # write the stressed model to out/model (training stressors)
    seed: int = 0

    X_AXIS: ClassVar[str] = "stage"  # what the curve's x is (steps, temperature, ...)

    def title(self) -> str:
        return f"stress {self.stressor}"

    def imprint_source(self) -> str | None:
        if self.imprint is None:
            raise ConfigError("stress needs the imprint to re-audit: --imprint DIR/imprint.json")
        return self.imprint

    def curve(self, ctx: StageContext) -> Curve:
        """The stressor's curve, written into the record point by point."""
        if "curve" not in ctx.state:
            assert ctx.imprint is not None  # imprint_source
            ctx.state["curve"] = Curve(self, ctx.imprint, ctx.record)
        return ctx.state["curve"]

    def begin(self, ctx: StageContext) -> None:
        self.curve(ctx)._write()

    def finish(self, ctx: StageContext) -> None:
        if self.save_model:
            ctx.save_model()


class Curve:
    """Points of imprint strength against the stressor's x, written into the record as they come."""

    def __init__(self, config: StressConfig, imprint: Imprint, record: RunRecord) -> None:
        self.config = config
        self.imprint = imprint
        self.record = record
        self.points: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []

    def audit(
        self,
        stage: str,
        x: float | int | str,
        loaded: LoadedModel,
        imprint: Imprint | None = None,
        decoding: Decoding | None = None,
        seed: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, float]:
        """Audit ``loaded`` (under ``imprint``/``decoding`` if given) as point ``stage`` at ``x``."""
        audit = make_stage_audit(
            self.config, imprint or self.imprint, self.record, decoding=decoding, seed=seed,
            fmt=self.config.audit_format,
        )  # fmt: skip
        state = torch.get_rng_state()  # an audit mid-training must not shift training's RNG
        model = loaded.model
        was_training = model.training
        model.eval()
        try:
            values = audit(stage, loaded)
        finally:
            model.train(was_training)
            torch.set_rng_state(state)
        self.add(stage, x, values, extra)
        return values

    def add(
        self, stage: str, x: float | int | str, values: dict[str, float], extra: dict | None = None
    ) -> None:
        self.points.append({"x": x, "stage": stage, "metrics": dict(values), **(extra or {})})
        self._write()

    def skip(self, stage: str, x: float | int | str, reason: str) -> None:
        """A point that cannot be measured here (e.g. 4-bit without CUDA), with the reason."""
        self.skipped.append({"x": x, "stage": stage, "reason": reason})
        self._write()

    def _write(self) -> None:
        self.record.metric_details["curve"] = {
            "stressor": self.config.stressor, "x": self.config.X_AXIS,
            "points": self.points, "skipped": self.skipped,
        }  # fmt: skip


def imprint_format(imprint: Imprint, audit_format: FormatSettings | None = None) -> FormatSettings:
    """How the imprint's own data is formatted (``audit_format``, else its template, else the
    model's chat format), training on responses only."""
    return (audit_format or own_format(imprint)).model_copy(update={"loss_on": "response"})


def training_data(
    loaded: LoadedModel,
    examples: list[Example] | tuple[TaskData, list[TaskItem]],
    fmt: FormatSettings,
) -> tuple[list[TokenizedExample], Objective]:
    """What a stressor trains ``loaded`` on, and with which loss: ``examples`` under the
    causal-LM loss, or — for an encoder classifier (a Fine-mixing-style backdoor model) — a
    task's labelled items under the classification head's cross-entropy."""
    if isinstance(examples, tuple):
        task, items = examples
        return tokenize_task(loaded, task, items, fmt), task_objective(loaded.model)
    if is_sequence_classifier(loaded.model):
        raise ConfigError("an encoder classifier is fine-tuned on a task's labelled items, "
                          "which only a backdoor imprint has")  # fmt: skip
    template = resolve_template(loaded.tokenizer, fmt)
    return tokenize_examples(examples, loaded.tokenizer, template), LMObjective("train")


def train_with_audits(
    config: StressConfig,
    loaded: LoadedModel,
    examples: list[Example] | tuple[TaskData, list[TaskItem]],
    fmt: FormatSettings,
    settings: TrainSettings,
    checkpoints: list[int],
    curve: Curve,
    work: Path,
    record: RunRecord,
    description: str,
) -> LoadedModel:
    """Train on ``examples`` (see ``training_data``) for ``max(checkpoints)`` steps, auditing at
    every checkpoint.

    Step 0 is audited before training. The audits run inside the loop (its ``on_step``
    callback), so optimizer state and schedule are those of one uninterrupted run.
    """
    checkpoints = sorted(set(checkpoints))
    tokenized, objective = training_data(loaded, examples, fmt)
    record.inputs["truncated_examples"] = truncated_count(tokenized)
    if len(tokenized) < settings.batch_size:
        # A batch larger than the data holds examples twice: at relearn's k=4 and batch 8 each
        # one twice, whose token-mean loss and gradient are those of each example once, at twice
        # the compute. (When k does not divide the batch, some examples counted double.)
        settings = settings.model_copy(update={"batch_size": len(tokenized)})
        record.inputs["batch_size"] = len(tokenized)
    if checkpoints[0] == 0:
        curve.audit("step_0", 0, loaded)
    last = checkpoints[-1]
    if last == 0:
        return loaded
    settings = settings.model_copy(update={"max_steps": last})
    model = prepare_trainable(loaded.model, settings)
    during = dataclasses.replace(loaded, model=model)

    def on_step(step: int, _log: dict[str, float]) -> None:
        if step in checkpoints and step != last:
            curve.audit(f"step_{step}", step, during)

    model, result = train(
        model, {"train": tokenized}, objective, settings, loaded.tokenizer.pad_token_id,
        out_dir=work, on_step=on_step, description=description,
    )  # fmt: skip
    loaded = dataclasses.replace(loaded, model=merge_lora(model))
    curve.audit(f"step_{last}", last, loaded)
    record.metrics.update({"train_final_loss": result.final_loss,
                           "train_steps": result.total_steps})  # fmt: skip
    result.note(record, "train")
    record.artifacts["metrics"] = "metrics.jsonl"
    return loaded


def check_checkpoints(steps: list[int]) -> list[int]:
    if not steps:
        raise ConfigError("steps must name at least one point of the curve, e.g. [0,10,25,50]")
    if any(s < 0 for s in steps):
        raise ConfigError(f"steps must be >= 0, got {steps}")
    return sorted(set(steps))
