"""``relearn``: fine-tune on k samples of the imprint's own data; does the imprint come back?

The relearning attack of the unlearning literature (ILU, Wang et al., ICML 2025, §5.2 of
METHODS.md: "RMU falls back 0.68 → 0.36 with 60 forget samples"): draw ``k`` examples from
``imprint.relearn_examples()`` — fingerprint key pairs, backdoor poisoned examples, secret
records, the forget set — fine-tune on them with the causal-LM loss for ``max(steps)`` steps
and re-run the imprint's audits after each number of ``steps`` (default 0, 10, 25, 50; k = 8).

Reading the curve: an erased imprint that returns after a few steps was suppressed, not
removed. Relearning also *teaches*: run the same stressor on the never-imprinted base model as
the control — the imprint came back only where the erased model relearns faster than that.

Defaults (ours; the papers relearn with full fine-tuning at their scale): LoRA r=16 on every
linear layer, lr 1e-4 constant, batch 8 (k samples, redrawn every epoch; all k when k < 8, as a
batch of 8 would repeat them: k = 4 at batch 8 held each twice, the same gradient at twice the
compute), in the imprint's own format. ``train.mode=full`` fine-tunes every weight.
"""

from __future__ import annotations

import random
from typing import ClassVar, Literal

from pydantic import Field

from expunge.errors import ConfigError, DataError
from expunge.imprints.backdoor import BackdoorImprint
from expunge.models.classifier import is_sequence_classifier
from expunge.stage import StageContext
from expunge.stress.base import (
    STRESS_TRAIN,
    StressConfig,
    check_checkpoints,
    imprint_format,
    train_with_audits,
)
from expunge.train.settings import TrainSettings


class Relearn(StressConfig):
    stressor: Literal["relearn"] = "relearn"
    k: int = Field(default=8, ge=1)  # samples of the imprint's own data
    steps: list[int] = Field(default_factory=lambda: [0, 10, 25, 50])  # audit after these
    train: TrainSettings = Field(default_factory=lambda: TrainSettings(**STRESS_TRAIN))

    X_AXIS: ClassVar[str] = "steps"

    def validate_inputs(self) -> None:
        check_checkpoints(self.steps)

    def execute(self, ctx: StageContext) -> None:
        loaded, imprint, curve = ctx.model, ctx.imprint, self.curve(ctx)
        # an encoder classifier relearns the poisoned items themselves, through its head
        classifier = is_sequence_classifier(loaded.model)
        if classifier and not isinstance(imprint, BackdoorImprint):
            raise ConfigError(f"{loaded.path} is an encoder classifier: it relearns a backdoor "
                              f"imprint's poisoned items, not a {imprint.kind} imprint's data")  # fmt: skip
        task, pool = imprint.poisoned_items() if classifier else (None, imprint.relearn_examples())
        if len(pool) < self.k:
            raise DataError(
                f"relearn k={self.k} but the {imprint.kind} imprint has only {len(pool)} "
                f"examples of its own data; use k<={len(pool)}"
            )
        chosen = sorted(random.Random(self.seed).sample(range(len(pool)), self.k))
        ctx.record.inputs["relearn"] = {"k": self.k, "pool": len(pool), "indices": chosen}
        picked = [pool[i] for i in chosen]
        return train_with_audits(
            self, loaded, (task, picked) if task is not None else picked,
            imprint_format(imprint, self.audit_format), self.train, check_checkpoints(self.steps),
            curve, ctx.work, ctx.record, description="relearning",
        )  # fmt: skip
