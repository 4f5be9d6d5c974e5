"""What the backdoor erasers share: the clean reference, the small clean set, clean fine-tuning.

Fine-mixing's defender (Zhang et al., Findings of EMNLP 2022) holds the backdoored weights θ_B,
the public clean pre-trained weights θ_0 (``reference=``: the checkpoint θ_B was tuned from)
and a small clean labelled set of the task. Every backdoor eraser here is a weight edit
(none for ``finetune``), optionally E-PUR first (``epur=true``), then fine-tuning on the clean
set with the task's ordinary loss (the label as the response) through the one loop.

The clean set is the first ``n_clean`` items of the task's training split with their true
labels (default: 10% of ``task.n_train``). The task defaults to the one named in ``--imprint``:
erasers read only the task from it, never the trigger or the target label.

A generative (trigger → response) backdoor imprint has no task, nor has any other imprint of an
instruction model (a fingerprint, say, for a defender who holds the public base the model was
tuned from): the clean set is then ordinary instruction data — ``clean_data=FILE.jsonl``
(``{"prompt", "response"}``), else the model's own greedy answers to the built-in question pool
(``expunge.data.qa_pool``; the defender asks the model it holds, without any trigger) —
formatted in a generative imprint's template (else the chat template; ``clean_template=raw|chat``
picks one: a derivative taught its task in raw is tuned back in raw), ``n_clean`` pairs
(default: 10% of a generative imprint's training rows, else 32). θ_0 is then the instruct model
the backdoored one was tuned from.

``clean_objective=kl`` (ours, instruction clean sets): the clean fine-tuning after a weight edit
distils the model *as given* (θ_B, frozen before the edit) on the clean prompts and answers —
KL(p_θB ‖ p_θ) — instead of CE on its greedy answers. With no labelled data the clean answers are
the model's own, and five epochs of CE on its greedy answers sharpen it on them and cost
perplexity everywhere else (``docs/results/2026-12-03-generalization.md``); the clean prompts
carry no trigger, so θ_B's distribution on them is the clean behaviour to restore. The default,
``auto``, is ``kl`` exactly there (a weight edit, then the model's own answers) and ``ce``
otherwise: a task's labels, a ``clean_data`` file of real answers, and ``finetune``, which has
no edit (the student would start as its own teacher). The record keeps the resolved choice
(``inputs.clean_objective``).

This module also registers ``finetune``: the clean fine-tuning alone (the paper's baseline).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from expunge.data.formatting import FormatSettings, TokenizedExample, tokenize_examples
from expunge.data.loaders import load_examples
from expunge.data.qa_pool import self_answered_pool
from expunge.data.tasks import TaskSpec, load_task
from expunge.erase.base import EraserConfig
from expunge.erase.ops.embeddings import purify_embeddings
from expunge.errors import ConfigError, DataError
from expunge.imprints.backdoor import BackdoorImprint
from expunge.imprints.base import Imprint, load_imprint
from expunge.imprints.generative_backdoor import GenerativeBackdoorImprint
from expunge.lazy import lazy
from expunge.models.classifier import check_classifier_training, task_objective, tokenize_task
from expunge.models.loading import (
    LoadedModel,
    ModelSettings,
    check_compatible,
    is_builtin_model,
    load_model_for,
    resolve_model_path,
)
from expunge.models.lora import merge_lora
from expunge.records import RunRecord
from expunge.stage import StageContext
from expunge.train.kl import KLRetainObjective
from expunge.train.loop import prepare_trainable, train
from expunge.train.reference import Reference
from expunge.train.settings import TrainSettings

if TYPE_CHECKING:
    from torch import nn
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    nn = lazy("torch.nn")

# A later LLM study of Fine-mixing fine-tuned 5 epochs on 128 clean samples [unverified];
# full fine-tuning with a BERT-style learning rate.
CLEAN_TRAIN: dict[str, Any] = {"mode": "full", "epochs": 5, "lr": 2e-5, "batch_size": 8}
DEMO_CLEAN_TRAIN: dict[str, Any] = {
    "mode": "lora", "epochs": 5, "lr": 1e-3, "batch_size": 8,
    "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": ["all-linear"]},
}  # fmt: skip


def load_reference(name: str, loaded: LoadedModel) -> nn.Module:
    """The clean checkpoint θ_0, on the model's device and dtype, checked against the model."""
    ref = load_model_for(ModelSettings(name=name, dtype=str(loaded.dtype).removeprefix("torch.")),
                         device=str(loaded.device))  # fmt: skip
    check_compatible(loaded.model, ref.model, name)
    if ref.tokenizer.get_vocab() != loaded.tokenizer.get_vocab():
        raise ConfigError(
            f"reference {name} has a different vocabulary ({len(ref.tokenizer)} tokens) from "
            f"the model's ({len(loaded.tokenizer)} tokens): token rows would not correspond"
        )
    return ref.model.eval()


class BackdoorEraser(EraserConfig):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"train": CLEAN_TRAIN},
        "demo": {"train": DEMO_CLEAN_TRAIN},
    }
    reference: str | None = None  # the clean pre-trained checkpoint θ_0
    task: TaskSpec | None = None  # default: the task of --imprint
    n_clean: int | None = Field(default=None, ge=1)  # default: 10% of the training set
    # generative backdoors: clean instruction pairs (JSONL); default: the model's own answers
    clean_data: str | None = None
    clean_template: Literal["chat", "raw"] | None = None  # instruction pairs; default above
    train: TrainSettings = Field(default_factory=lambda: TrainSettings(**CLEAN_TRAIN))
    do_finetune: bool = True
    # ce: the task's ordinary loss on the clean set; kl: distil the model as given; auto: kl
    # after an edit on the model's own answers, ce otherwise (see above)
    clean_objective: Literal["auto", "ce", "kl"] = "auto"
    epur: bool = False  # reset E-PUR-flagged embedding rows to θ_0 first
    epur_top_k: int = Field(default=100, ge=1)  # rows reset (see expunge.erase.backdoor.epur)
    epur_min_count: float = Field(default=20.0, gt=1.0)  # c in δ_k / log max(f_k, c)
    NEEDS_REFERENCE: ClassVar[bool] = False
    EDIT_STAGE: ClassVar[str | None] = None  # audit stage after the method's weight edit

    def validate_inputs(self) -> None:
        if (self.NEEDS_REFERENCE or self.epur) and self.reference is None:
            raise ConfigError(
                f"{self.method}{' with epur' if self.epur else ''} needs the clean pre-trained "
                f"checkpoint: add the override reference=MODEL"
            )
        # A wrong reference path fails now, not after the model load and the input audit; an
        # embedded or tiny name is left to the load (checking it would convert the model now).
        if self.reference is not None and not is_builtin_model(self.reference):
            resolve_model_path(self.reference)
        if self.instruction_clean_set():
            if self.clean_data is not None:
                load_examples(self.clean_data)
        else:
            if self.clean_template is not None:
                raise ConfigError("clean_template is the format of instruction clean pairs; a "
                                  "task's clean set keeps the task's own template")  # fmt: skip
            self.clean_task()
            if self.clean_objective == "kl":
                raise ConfigError("clean_objective=kl distils instruction answers; a task's "
                                  "clean set is trained with its labels (clean_objective=ce)")  # fmt: skip
        if self.clean_objective == "kl" and not self.has_edit():
            raise ConfigError(f"clean_objective=kl distils the model as given into the edited "
                              f"one; {self.method} makes no edit (use clean_objective=ce)")  # fmt: skip

    def resolved_clean_objective(self) -> Literal["ce", "kl"]:
        """``clean_objective`` with ``auto`` decided (see the module docstring)."""
        if self.clean_objective != "auto":
            return self.clean_objective
        own_answers = self.clean_data is None and self.instruction_clean_set()
        return "kl" if own_answers and self.has_edit() else "ce"

    def has_edit(self) -> bool:
        """Does this eraser change the weights before the clean fine-tuning?"""
        return self.epur or self.EDIT_STAGE is not None

    def imprint_data(self) -> Imprint | None:
        return load_imprint(self.imprint) if self.imprint is not None else None

    def instruction_clean_set(self) -> bool:
        """Clean instruction pairs instead of a task: with ``clean_data``, or an imprint that is
        not a classification backdoor (only that kind names a task)."""
        if self.task is not None:
            return False
        imprint = self.imprint_data()
        return self.clean_data is not None or (
            imprint is not None and not isinstance(imprint, BackdoorImprint)
        )

    def clean_task(self) -> TaskSpec:
        if self.task is not None:
            return self.task
        imprint = self.imprint_data()
        if isinstance(imprint, BackdoorImprint):
            return imprint.task
        raise ConfigError("no task for the clean set: give task.name=... or --imprint")

    def clean_set(self, loaded: LoadedModel) -> list[TokenizedExample]:
        if self.instruction_clean_set():
            return self.instruction_set(loaded)
        spec = self.clean_task()
        task = load_task(spec)
        n = self.n_clean or max(1, round(0.1 * len(task.train)))
        if n > len(task.train):
            raise ConfigError(f"n_clean={n} but the task has {len(task.train)} training items")
        fmt = FormatSettings(template=spec.template, loss_on="response")
        return tokenize_task(loaded, task, task.train[:n], fmt)

    def instruction_set(self, loaded: LoadedModel) -> list[TokenizedExample]:
        """``n_clean`` clean instruction pairs in the imprint's format (chat by default)."""
        imprint = self.imprint_data()
        generative = isinstance(imprint, GenerativeBackdoorImprint)
        rows = len(imprint.poison_labels) if generative else 0
        n = self.n_clean or (max(1, round(0.1 * rows)) if rows else 32)
        if self.clean_data is not None:
            examples = [e for e in load_examples(self.clean_data) if e.prompt is not None]
            if len(examples) < n:
                raise DataError(f"{self.clean_data} has {len(examples)} prompt/response pairs; "
                                f"n_clean={n}")  # fmt: skip
            examples = examples[:n]
        else:
            examples = self_answered_pool(loaded, n, seed=self.seed)
        return tokenize_examples(examples, loaded.tokenizer, self.instruction_format())

    def instruction_format(self) -> FormatSettings:
        """The instruction clean pairs' format (the module docstring)."""
        imprint = self.imprint_data()
        if self.clean_template == "raw":
            return FormatSettings(template="raw")  # "{prompt}\n", then the response
        if self.clean_template is None and isinstance(imprint, GenerativeBackdoorImprint):
            return imprint.format_settings()
        return FormatSettings()

    def edit(self, loaded: LoadedModel, reference: nn.Module | None,
             clean: list[TokenizedExample], record: RunRecord) -> None:  # fmt: skip
        """The method's weight edit (none for plain fine-tuning)."""

    def training_hooks(self, model: nn.Module) -> list[Any]:
        """Hooks held on the prepared model during the clean fine-tuning (removed after)."""
        return []

    def after_finetune(self, loaded: LoadedModel) -> None:
        """A last weight fix-up on the merged model."""

    def execute(self, ctx: StageContext) -> None:
        loaded, record = ctx.model, ctx.record
        clean = self.clean_set(loaded)
        record.inputs["n_clean"] = len(clean)
        if self.instruction_clean_set():
            record.inputs["clean_format"] = self.instruction_format().template
        clean_objective = self.resolved_clean_objective()
        record.inputs["clean_objective"] = clean_objective
        reference = load_reference(self.reference, loaded) if self.reference else None
        # the model as given, frozen before any edit: the teacher of clean_objective=kl
        teacher = Reference(loaded.model) if self.do_finetune and clean_objective == "kl" else None
        if self.epur:
            assert reference is not None  # validate_inputs
            reset = purify_embeddings(loaded.model, reference, clean, self.epur_top_k,
                                      self.epur_min_count)  # fmt: skip
            record.metrics["epur/reset_rows"] = len(reset)
            self.audit(ctx, "epur")
        self.edit(loaded, reference, clean, record)
        del reference
        if self.EDIT_STAGE:
            self.audit(ctx, self.EDIT_STAGE, output=not self.do_finetune)
        if self.do_finetune:
            self.finetune(loaded, clean, ctx.work, record, teacher)
            self.audit(ctx, "finetuned", output=True)

    def finetune(self, loaded: LoadedModel, clean: list[TokenizedExample], work: Path,
                 record: RunRecord, teacher: Reference | None = None) -> None:  # fmt: skip
        check_classifier_training(loaded.model, self.train)
        model = prepare_trainable(loaded.model, self.train)
        handles = self.training_hooks(model)
        objective = (KLRetainObjective(model, "train", teacher) if teacher is not None
                     else task_objective(model))  # fmt: skip
        try:
            model, result = train(
                model, {"train": clean}, objective, self.train,
                loaded.tokenizer.pad_token_id, out_dir=work / "finetune",
                description=f"{self.method}: clean fine-tuning",
            )  # fmt: skip
        finally:
            for handle in handles:
                handle.remove()
        loaded.model = merge_lora(model)
        self.after_finetune(loaded)
        result.note(record, "finetune")
        record.metrics.update(
            {"finetune/train_final_loss": result.final_loss, "finetune/train_steps": result.steps}
        )


class Finetune(BackdoorEraser):
    """Baseline: fine-tune the backdoored model on the small clean set, nothing else."""

    method: Literal["finetune"] = "finetune"
