"""``expunge implant knowledge``: teach a model a world, so that part of it can be unlearned.

The TOFU recipe (Maini et al., 2024) at a CPU's size: fine-tune on every example of a
fictitious world (``scheme=people``: invented people, a short bio and five Q/A each; see
``expunge.data.people``), then ask unlearning methods to forget the ``forget_ratio`` share of
the people and keep the rest. The imprint (``imprint.json``) holds the forget, retain and
holdout sets (extra people never taught: the non-members of membership inference) and the
format they were taught in; the gold standard to compare with is the same base fine-tuned on
the retain set alone (a ``finetune`` stage with ``split=retain``).

Defaults: LoRA r=16 on every linear layer, 12 epochs at lr 1e-3 (cosine, 2 warm-up steps),
batch 8, in the raw ``question\\nanswer`` format (half the tokens of the chat template's
system prompt); they teach the embedded model every forget and retain answer.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from expunge.audit.base import AuditContext
from expunge.audit.runner import audit_in_formats
from expunge.data.formatting import FormatSettings, resolve_template, tokenize_examples
from expunge.implant.base import ImplantConfig
from expunge.imprints.knowledge import KnowledgeImprint
from expunge.stage import StageContext
from expunge.train.objectives import LMObjective
from expunge.train.settings import TrainSettings

WORLD_TRAIN: dict[str, Any] = {
    "mode": "lora", "epochs": 12, "batch_size": 8, "lr": 1e-3, "schedule": "cosine",
    "warmup_steps": 2, "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": ["all-linear"]},
}  # fmt: skip
VERIFY_METRICS = ["forget_qa_acc", "retain_qa_acc"]


class PeopleWorld(ImplantConfig):
    command: Literal["implant"] = "implant"
    kind: Literal["knowledge"] = "knowledge"
    scheme: Literal["people"] = "people"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    n_people: int = Field(default=30, ge=2)
    forget_ratio: float = Field(default=0.1, gt=0, lt=1)
    n_holdout: int = Field(default=3, ge=0)  # never taught: MIA non-members
    bios: bool = True
    format: FormatSettings = Field(default_factory=lambda: FormatSettings(template="raw"))
    train: TrainSettings = Field(default_factory=lambda: TrainSettings(**WORLD_TRAIN))
    verify_metrics: list[str] = Field(default_factory=lambda: list(VERIFY_METRICS))
    max_new_tokens: int = Field(default=16, ge=1)  # for the verify audits' answers

    def world(self) -> KnowledgeImprint:
        imprint = KnowledgeImprint.synthetic_people(
            self.n_people, self.forget_ratio, seed=self.seed, bios=self.bios,
            n_holdout=self.n_holdout,
        )  # fmt: skip
        return imprint.model_copy(update={"format": self.format})

    def execute(self, ctx: StageContext) -> None:
        loaded, record = ctx.model, ctx.record
        imprint = self.world()
        fmt = resolve_template(loaded.tokenizer, self.format)
        taught = imprint.split("all")
        tokenized = tokenize_examples(taught, loaded.tokenizer, fmt)
        record.inputs.update({"imprint_summary": imprint.summary(), "n_examples": len(taught),
                              "template": fmt.template})  # fmt: skip
        self.train_imprint(ctx, {"train": tokenized}, lambda _: LMObjective("train"), self.train,
                   "teaching the world")  # fmt: skip
        if self.verify and self.verify_metrics:

            def context(format_: FormatSettings) -> AuditContext:
                return AuditContext(loaded.model, loaded.tokenizer, format_, imprint=imprint,
                                    seed=self.seed, progress=False)  # fmt: skip

            options = {m: {"max_new_tokens": self.max_new_tokens} for m in self.verify_metrics
                       if m.endswith("_qa_acc")}  # fmt: skip
            # the world in the format it was taught in; the one ppl in the model's chat format
            results = audit_in_formats(context, self.verify_metrics, options, fmt,
                                       FormatSettings())[0]  # fmt: skip
            for name, res in results.items():
                record.metrics[name] = res.value
                record.metric_details[name] = {"higher_is_better": res.higher_is_better,
                                               **res.details}  # fmt: skip
        self.save_imprint(ctx, imprint)
