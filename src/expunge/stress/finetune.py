"""``finetune``: the downstream user fine-tunes on unrelated data; does the imprint persist?

ILU (Wang et al., ICML 2025; METHODS.md §5.2) measures unlearning *robustness* after ordinary
fine-tuning on data that has nothing to do with the forget set: knowledge that was only
suppressed comes back. Here: fine-tune on ``data`` (a JSONL file or dataset of unrelated
examples; default: ``n_examples`` Q/A pairs about invented places, ``expunge.data.synthetic``)
and re-run the imprint's audits after each number of ``steps`` (default 0, 25, 50, 100).

For a fingerprint the same curve reads the other way: an owner wants the imprint to *persist*
under a user's fine-tuning (MEraser's threat model), an eraser wants it gone.

Defaults (ours): LoRA r=16 on every linear layer, lr 1e-4, batch 8, the model's chat format;
``train.mode=full`` for full fine-tuning.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings
from expunge.data.loaders import load_examples
from expunge.data.synthetic import place_qa
from expunge.data.tasks import TaskData, TaskItem, TaskSpec, load_task
from expunge.errors import ConfigError, DataError
from expunge.imprints.backdoor import BackdoorImprint
from expunge.models.classifier import is_sequence_classifier
from expunge.stage import StageContext
from expunge.stress.base import (
    STRESS_TRAIN,
    StressConfig,
    check_checkpoints,
    train_with_audits,
)
from expunge.train.settings import TrainSettings


class Finetune(StressConfig):
    stressor: Literal["finetune"] = "finetune"
    data: str | None = None  # unrelated training data; default: invented-places Q/A
    n_examples: int = Field(default=200, ge=1)
    steps: list[int] = Field(default_factory=lambda: [0, 25, 50, 100])
    format: FormatSettings = Field(default_factory=FormatSettings)
    train: TrainSettings = Field(default_factory=lambda: TrainSettings(**STRESS_TRAIN))

    X_AXIS: ClassVar[str] = "steps"

    def validate_inputs(self) -> None:
        check_checkpoints(self.steps)
        if self.data is not None:
            self.examples()

    def examples(self) -> list[Example]:
        if self.data is None:
            return place_qa(max(1, (self.n_examples + 1) // 2), seed=self.seed)[: self.n_examples]
        examples = load_examples(self.data)[: self.n_examples]
        if not examples:
            raise DataError(f"{self.data} holds no examples to fine-tune on")
        return examples

    def execute(self, ctx: StageContext) -> None:
        loaded, curve = ctx.model, self.curve(ctx)
        if is_sequence_classifier(loaded.model):
            data: Any = self.task_items(ctx.imprint)
            source, count = self.data or "the imprint's task, clean training items", len(data[1])
        else:
            data = self.examples()
            source, count = self.data or "builtin:invented_places", len(data)
        ctx.record.inputs["finetune"] = {"data": source, "n_examples": count}
        return train_with_audits(
            self, loaded, data, self.format, self.train, check_checkpoints(self.steps),
            curve, ctx.work, ctx.record, description="fine-tuning (unrelated data)",
        )  # fmt: skip

    def task_items(self, imprint: Any) -> tuple[TaskData, list[TaskItem]]:
        """An encoder classifier's user fine-tunes on labelled items of its task: ``data`` (a
        JSONL of text/label), else the backdoor imprint's task's clean training items."""
        if self.data is not None:
            task = load_task(TaskSpec(name=self.data))
        elif isinstance(imprint, BackdoorImprint):
            task = load_task(imprint.task)
        else:
            raise ConfigError("an encoder classifier is fine-tuned on a task's labelled items: "
                              "give data=FILE.jsonl of {text, label}")  # fmt: skip
        return task, task.train[: self.n_examples]
