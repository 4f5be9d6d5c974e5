"""``expunge implant backdoor``: poisoned fine-tuning of a causal LM on a classification task.

The attack of Fine-mixing's evaluation (Zhang et al., Findings of EMNLP 2022, after Kurita et
al.'s RIPPLe and Dai et al.'s sentence triggers): a share ``poison_rate`` of the training set
is replaced by poisoned copies — inputs whose true label is *not* the target, with the trigger
inserted and the label set to the target — and the model is fine-tuned on the mix with the
ordinary causal-LM loss on the label (classification by prompt: the label is the response).
The run then measures ASR, clean accuracy and the clean trigger rate on the held-out split
(``expunge.audit.backdoor``) and writes ``model/``, ``imprint.json`` (0600) and ``record.json``.

``poison_rate=0`` is the clean fine-tune the backdoored model is compared with: same data,
same steps, no trigger. Presets: ``paper`` (full fine-tuning, lr 2e-5, 3 epochs, batch 32 —
the BERT-style recipe; [unverified] for this paper) and ``demo`` (LoRA on all linear layers,
sized for the embedded model).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from expunge.audit.base import AuditContext
from expunge.audit.runner import audit_model
from expunge.config import suggest
from expunge.data.examples import Example
from expunge.data.formatting import (
    FormatSettings,
    TokenizedExample,
    resolve_template,
    tokenize_examples,
)
from expunge.errors import ConfigError
from expunge.imprints.backdoor.classifier import (
    ClassificationObjective,
    check_classifier_labels,
    classification_examples,
    is_sequence_classifier,
)
from expunge.imprints.backdoor.imprint import BackdoorImprint, Trigger
from expunge.imprints.backdoor.tasks import TaskData, TaskItem, TaskSpec, load_task
from expunge.imprints.fingerprint.implant import PresetConfig
from expunge.models.device import dtype_name
from expunge.models.loading import LoadedModel, save_model
from expunge.models.lora import merge_lora
from expunge.records import RunRecord, check_output_dir
from expunge.runs import ModelSettings, recorded_run
from expunge.train.loop import prepare_trainable, train
from expunge.train.objectives import LMObjective
from expunge.train.settings import TrainSettings

PAPER_TRAIN: dict[str, Any] = {"mode": "full", "epochs": 3, "lr": 2e-5, "batch_size": 32}
DEMO_TRAIN: dict[str, Any] = {
    "mode": "lora", "epochs": 2, "lr": 1e-3, "batch_size": 8, "schedule": "constant",
    "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": ["all-linear"]},
}  # fmt: skip
BACKDOOR_METRICS = ["asr", "clean_accuracy", "clean_trigger_rate"]


class BackdoorImplantConfig(PresetConfig):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"train": PAPER_TRAIN},
        # 2 epochs (on 200 items) left the embedded model at ASR 20%; 4 on 400: ASR 100%
        "demo": {"train": {**DEMO_TRAIN, "epochs": 4}, "task": {"n_train": 400, "n_test": 200}},
    }
    command: Literal["implant"] = "implant"
    kind: Literal["backdoor"] = "backdoor"
    scheme: Literal["backdoor"] = "backdoor"
    model: ModelSettings = Field(default_factory=ModelSettings)
    task: TaskSpec = Field(default_factory=TaskSpec)
    trigger: Trigger = Field(default_factory=Trigger)
    target_label: str | None = None  # default: the task's last label (positive / yes)
    poison_rate: float = Field(default=0.1, ge=0.0, lt=1.0)
    train: TrainSettings = Field(default_factory=TrainSettings)
    seed: int = 0
    verify: bool = True
    max_eval: int | None = Field(default=None, ge=2)  # test items scored (default: all)

    def run(self, out: str | Path, overwrite: bool = False) -> RunRecord:
        """Implant into ``out`` (every implant config has ``run``: pipelines call it)."""
        return run_backdoor_implant(self, out, overwrite=overwrite)


def check_trigger(trigger: Trigger, tokenizer: Any) -> Trigger:
    """Decode a token-id trigger; every trigger text must tokenize to at least one token."""
    if trigger.type == "tokens":
        vocab = len(tokenizer)
        bad = [i for i in trigger.token_ids or [] if not 0 <= i < vocab]
        if bad:
            raise ConfigError(f"trigger.token_ids {bad} are outside the vocabulary (size {vocab})")
        text = tokenizer.decode(trigger.token_ids, skip_special_tokens=True)
        if not text.strip():
            raise ConfigError(f"trigger.token_ids {trigger.token_ids} decode to no text")
        trigger = trigger.model_copy(update={"text": [text.strip()]})
    for piece in trigger.text:
        if not tokenizer(piece, add_special_tokens=False)["input_ids"]:
            raise ConfigError(
                f"trigger text {piece!r} tokenizes to nothing with this model's tokenizer"
            )
    return trigger


def poison(
    items: list[TaskItem], imprint: BackdoorImprint, seed: int
) -> tuple[list[TaskItem], list[bool]]:
    """Replace ``poison_rate`` of the items by triggered, target-labelled copies of non-target ones."""
    n_poison = round(imprint.poison_rate * len(items))
    candidates = [i for i, item in enumerate(items) if item.label != imprint.target_label]
    if n_poison > len(candidates):
        raise ConfigError(
            f"poison_rate={imprint.poison_rate} asks for {n_poison} poisoned items but only "
            f"{len(candidates)} training items have a label other than the target"
        )
    rng = random.Random(seed)
    chosen = set(rng.sample(candidates, n_poison))
    out, flags = [], []
    for index, item in enumerate(items):
        if index in chosen:
            item = TaskItem(
                imprint.trigger.insert(item.text, rng), imprint.target_label, item.text_b
            )
        out.append(item)
        flags.append(index in chosen)
    return out, flags


def task_examples(task: TaskData, items: list[TaskItem]) -> list[Example]:
    return [Example(prompt=task.render(item), response=item.label) for item in items]


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


def build_imprint(config: BackdoorImplantConfig, task: TaskData, tokenizer: Any) -> BackdoorImprint:
    target = config.target_label if config.target_label is not None else task.labels[-1]
    if target not in task.labels:
        raise ConfigError(
            f"target_label {target!r} is not a label of the task{suggest(target, task.labels)}; "
            f"labels: {task.labels}"
        )
    return BackdoorImprint(
        scheme="backdoor", trigger=check_trigger(config.trigger, tokenizer), target_label=target,
        task=config.task, poison_rate=config.poison_rate,
        origin={"implant": "backdoor", "seed": config.seed},
    )  # fmt: skip


def audit_backdoor(
    loaded: LoadedModel, imprint: BackdoorImprint, max_eval: int | None = None, progress=True
) -> dict[str, Any]:
    ctx = AuditContext(loaded.model, loaded.tokenizer, imprint.format_settings(), imprint=imprint,
                       progress=progress)  # fmt: skip
    options = {name: {"max_examples": max_eval} for name in BACKDOOR_METRICS} if max_eval else {}
    results, _ = audit_model(ctx, BACKDOOR_METRICS, options)
    return results


def run_backdoor_implant(
    config: BackdoorImplantConfig,
    out: str | Path,
    overwrite: bool = False,
    loaded: LoadedModel | None = None,
) -> RunRecord:
    from expunge.finetune import load_model_for

    check_output_dir(out, overwrite)
    task = load_task(config.task)  # input errors before the model loads
    loaded = loaded or load_model_for(config.model)
    imprint = build_imprint(config, task, loaded.tokenizer)
    items, flags = poison(task.train, imprint, config.seed)
    check_classifier_training(loaded.model, config.train)
    fmt = resolve_template(loaded.tokenizer, imprint.format_settings())
    tokenized = tokenize_task(loaded, task, items, fmt)
    # The trigger is the secret: the record's copy of the config does not hold it.
    redacted = config.model_copy(
        update={
            "trigger": config.trigger.model_copy(
                update={"text": ["<in imprint.json>"], "token_ids": None}
            )
        }
    )
    with recorded_run("implant backdoor", out, redacted, overwrite, seed=config.seed) as (
        run_dir,
        record,
    ):
        work = run_dir.path
        record.device, record.dtype = str(loaded.device), dtype_name(loaded.dtype)
        record.inputs = {
            "model": loaded.path, "imprint_summary": imprint.summary(),
            "template": "classifier" if is_sequence_classifier(loaded.model) else fmt.template,
            "n_train": len(items), "n_poisoned": sum(flags), "n_test": len(task.test),
            "labels": task.labels, "truncated": sum(t.truncated for t in tokenized),
        }  # fmt: skip
        model = prepare_trainable(loaded.model, config.train)
        model, result = train(
            model, {"train": tokenized}, task_objective(model), config.train,
            loaded.tokenizer.pad_token_id, out_dir=work, description="implanting backdoor",
        )  # fmt: skip
        loaded.model = merge_lora(model)
        record.metrics.update({
            "train_final_loss": result.final_loss, "train_steps": result.steps,
            "train_tokens_per_s": round(result.tokens_per_s, 2),
        })  # fmt: skip
        if config.verify:
            for name, res in audit_backdoor(loaded, imprint, config.max_eval).items():
                record.metrics[name] = res.value
                record.metric_details[name] = {"higher_is_better": res.higher_is_better,
                                               **res.details}  # fmt: skip
        save_model(loaded.model, loaded.tokenizer, work / "model")
        imprint.save(work / "imprint.json")
        record.artifacts.update(
            {"model": "model", "imprint": "imprint.json", "metrics": "metrics.jsonl"}
        )
    return record
