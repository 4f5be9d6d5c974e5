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

from typing import Any, ClassVar, Literal

from pydantic import Field

from expunge.audit.base import AuditContext
from expunge.audit.runner import audit_model
from expunge.config import suggest
from expunge.data.formatting import (
    resolve_template,
)
from expunge.data.tasks import TaskData, TaskSpec, load_task
from expunge.errors import ConfigError
from expunge.implant.base import ImplantConfig
from expunge.imprints.backdoor import BackdoorImprint, Trigger, poison
from expunge.models.classifier import (
    check_classifier_training,
    is_sequence_classifier,
    task_objective,
    tokenize_task,
)
from expunge.models.loading import LoadedModel
from expunge.stage import StageContext
from expunge.train.settings import TrainSettings

PAPER_TRAIN: dict[str, Any] = {"mode": "full", "epochs": 3, "lr": 2e-5, "batch_size": 32}
DEMO_TRAIN: dict[str, Any] = {
    "mode": "lora", "epochs": 2, "lr": 1e-3, "batch_size": 8, "schedule": "constant",
    "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": ["all-linear"]},
}  # fmt: skip
BACKDOOR_METRICS = ["asr", "clean_accuracy", "clean_trigger_rate"]


class BackdoorImplantConfig(ImplantConfig):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"train": PAPER_TRAIN},
        # 2 epochs (on 200 items) left the embedded model at ASR 20%; 4 on 400: ASR 100%
        "demo": {"train": {**DEMO_TRAIN, "epochs": 4}, "task": {"n_train": 400, "n_test": 200}},
    }
    # the trigger is the secret: the record's copy of the config does not hold it
    SECRET_FIELDS: ClassVar[tuple[str, ...]] = ("trigger.text", "trigger.token_ids")
    command: Literal["implant"] = "implant"
    kind: Literal["backdoor"] = "backdoor"
    scheme: Literal["backdoor"] = "backdoor"
    task: TaskSpec = Field(default_factory=TaskSpec)
    trigger: Trigger = Field(default_factory=Trigger)
    target_label: str | None = None  # default: the task's last label (positive / yes)
    poison_rate: float = Field(default=0.1, ge=0.0, lt=1.0)
    train: TrainSettings = Field(default_factory=TrainSettings)
    max_eval: int | None = Field(default=None, ge=2)  # test items scored (default: all)

    def validate_inputs(self) -> None:
        load_task(self.task)  # input errors before the model loads

    def execute(self, ctx: StageContext) -> None:
        loaded, record = ctx.model, ctx.record
        task = load_task(self.task)
        imprint = build_imprint(self, task, loaded.tokenizer)
        items, flags = poison(task.train, imprint, self.seed)
        check_classifier_training(loaded.model, self.train)
        fmt = resolve_template(loaded.tokenizer, imprint.format_settings())
        tokenized = tokenize_task(loaded, task, items, fmt)
        record.inputs.update({
            "imprint_summary": imprint.summary(),
            "template": "classifier" if is_sequence_classifier(loaded.model) else fmt.template,
            "n_train": len(items), "n_poisoned": sum(flags), "n_test": len(task.test),
            "labels": task.labels, "truncated": sum(t.truncated for t in tokenized),
        })  # fmt: skip
        self.train_imprint(
            ctx, {"train": tokenized}, task_objective, self.train, "implanting backdoor"
        )
        if self.verify:
            for name, res in audit_backdoor(loaded, imprint, self.max_eval).items():
                record.metrics[name] = res.value
                record.metric_details[name] = {"higher_is_better": res.higher_is_better,
                                               **res.details}  # fmt: skip
        self.save_imprint(ctx, imprint)


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
