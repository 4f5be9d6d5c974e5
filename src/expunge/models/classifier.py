"""Encoder classifiers (``AutoModelForSequenceClassification``): Fine-mixing's own setting.

The paper backdoors and cleans fine-tuned BERT-style classifiers; expunge runs the same
implant, metrics and erasers on them as on causal LMs that classify by prompt. Only three things
differ, and they live here:

- **inputs**: the task item's text (and ``text_b`` for pairs) through the tokenizer's own
  single/pair encoding — no prompt template, no chat format;
- **loss**: cross-entropy of the classification head's logits against the label index (the
  position of the label in the task's sorted labels). The loop's collator carries per-token
  ``labels``; a classification example stores its class index at position 0 of that row and
  ``IGNORE_INDEX`` elsewhere, so batching, gradient accumulation and multi-process
  normalization are the loop's own (the loss is averaged over sequences);
- **prediction**: the argmax of the logits (label likelihood for causal LMs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from expunge.data.collator import collate
from expunge.data.formatting import (
    IGNORE_INDEX,
    FormatSettings,
    TokenizedExample,
    tokenize_examples,
)
from expunge.data.tasks import TaskData, TaskItem, task_examples
from expunge.errors import ConfigError
from expunge.lazy import lazy, no_grad
from expunge.models.loading import LoadedModel
from expunge.train.objectives import Batch, LMObjective, StepContext
from expunge.train.settings import TrainSettings

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
    from torch import nn
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    F = lazy("torch.nn.functional")
    nn = lazy("torch.nn")
    torch = lazy("torch")


def is_sequence_classifier(model: nn.Module) -> bool:
    """True for ``*ForSequenceClassification`` models (also behind a PEFT wrapper)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return type(base).__name__.endswith("ForSequenceClassification")


def check_classifier_labels(model: nn.Module, task: TaskData) -> None:
    """The head must have one output per task label, and name them as the task does."""
    n_out = int(model.config.num_labels)
    if n_out != len(task.labels):
        raise ConfigError(
            f"the classifier has {n_out} outputs but the task has {len(task.labels)} labels "
            f"{task.labels}; load it with model.num_labels={len(task.labels)}"
        )
    model.config.id2label = dict(enumerate(task.labels))
    model.config.label2id = {label: i for i, label in enumerate(task.labels)}


def classification_examples(
    task: TaskData, items: Sequence[TaskItem], tokenizer: Any, max_length: int = 512
) -> list[TokenizedExample]:
    """Items as encoder inputs with the class index at label position 0 (see module doc)."""
    index = {label: i for i, label in enumerate(task.labels)}
    # A tokenizer without pair special tokens (no [SEP]) would run the two texts together.
    marks_pairs = tokenizer.num_special_tokens_to_add(pair=True) > 0
    out = []
    for item in items:
        if item.label not in index:
            raise ConfigError(f"label {item.label!r} is not one of the task's {task.labels}")
        text, text_b = item.text, item.text_b
        if text_b is not None and not marks_pairs:
            text, text_b = f"{text}\n{text_b}", None
        encoded = tokenizer(
            text, text_b, truncation=True, max_length=max_length, add_special_tokens=True
        )
        ids = list(encoded["input_ids"])
        labels = [index[item.label]] + [IGNORE_INDEX] * (len(ids) - 1)
        out.append(TokenizedExample(ids, labels, prompt_length=len(ids)))
    return out


def summed_cross_entropy(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The classification head's cross-entropy, summed over the batch's sequences (the class
    index sits at label position 0)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits.float(), batch["labels"][:, 0], reduction="sum")


class ClassificationObjective:
    """Mean cross-entropy of the classification head over the step's sequences."""

    def __init__(self, stream: str = "train") -> None:
        self.streams = (stream,)
        self.stream = stream

    def __call__(
        self, model: nn.Module, batches: dict[str, Batch], ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        summed = summed_cross_entropy(model, batches[self.stream])
        loss = ctx.mean_over_sequences(self.stream, summed)
        return loss, {f"{self.stream}/ce": loss.detach()}


@no_grad
def classifier_logits(
    model: nn.Module, examples: list[TokenizedExample], pad_token_id: int, batch_size: int = 32
) -> torch.Tensor:
    """(n, n_labels) logits, in the order of ``examples``."""
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad_token_id)
        out = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
        )
        rows.append(out.logits.float().cpu())
    return torch.cat(rows) if rows else torch.empty(0, 0)


def predict_labels(
    model: nn.Module, tokenizer: Any, task: TaskData, items: Sequence[TaskItem],
    batch_size: int = 32,
) -> list[str]:  # fmt: skip
    """The arg-max label of each item."""
    if not items:
        return []
    examples = classification_examples(task, items, tokenizer)
    logits = classifier_logits(model, examples, tokenizer.pad_token_id, batch_size)
    return [task.labels[i] for i in logits.argmax(dim=1).tolist()]


def tokenize_task(
    loaded: LoadedModel, task: TaskData, items: list[TaskItem], fmt: FormatSettings
) -> list[TokenizedExample]:
    """Training examples for the model's kind: label as response (causal LM) or class index."""
    if is_sequence_classifier(loaded.model):
        check_classifier_labels(loaded.model, task)
        return classification_examples(task, items, loaded.tokenizer, fmt.max_length)
    return tokenize_examples(task_examples(task, items), loaded.tokenizer, fmt)


def task_objective(model: Any) -> Any:
    return (
        ClassificationObjective("train") if is_sequence_classifier(model) else LMObjective("train")
    )


def check_classifier_training(model: Any, train_settings: TrainSettings) -> None:
    if is_sequence_classifier(model) and train_settings.mode == "lora":
        raise ConfigError(
            "LoRA would leave an encoder classifier's head untrained; use train.mode=full for "
            "encoder classifiers"
        )
