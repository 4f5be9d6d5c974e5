"""Baseline ``scrub_retrain``: retrain the original model on the notes with the spans scrubbed.

The gold standard that SANI is compared with (its "retraining from scratch without the
secrets"): start again from the model the secrets were implanted into (``base``, default the
imprint's ``origin.model``) and fine-tune it on the same records with every sensitive span
replaced by its type placeholder (``[NAME]``, ``[SSN]``...), with the implant's recipe: by
default (``match_implant``) the optimizer settings and total epochs the imprint's
``origin.train`` records, so the retrained model trains as long as the implanted one did. The
input model is not used except to be audited. Costs a whole fine-tune; needs the original
weights.
"""

from __future__ import annotations

from typing import Literal

from expunge.data.spans import SpanRecord, tokenize_record
from expunge.erase.secrets.common import SecretsEraser
from expunge.errors import ConfigError
from expunge.models.loading import ModelSettings, check_compatible, load_model_for
from expunge.stage import StageContext
from expunge.train.objectives import LMObjective
from expunge.train.settings import TrainSettings


class ScrubRetrain(SecretsEraser):
    method: Literal["scrub_retrain"] = "scrub_retrain"
    base: str | None = None  # the model before the implant; default: the imprint's origin.model
    placeholder: str = "[{type}]"
    match_implant: bool = True  # train like the implant (its origin.train), not with train.*

    def retrain_settings(self) -> TrainSettings:
        """``train``, or the implant's recipe when the imprint records it and ``match_implant``."""
        recipe = self.secrets().origin.get("train")
        if not (self.match_implant and isinstance(recipe, dict)):
            return self.train
        return self.train.model_copy(update=recipe)

    def base_model(self) -> str:
        base = self.base or self.secrets().origin.get("model")
        if not base:
            raise ConfigError(
                "scrub_retrain needs the original model: base=MODEL (the imprint does not name it)"
            )
        return str(base)

    def validate_inputs(self) -> None:
        super().validate_inputs()
        self.base_model()
        try:
            self.placeholder.format(type="X")
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(f"placeholder {self.placeholder!r}: {err}") from None

    def execute(self, ctx: StageContext) -> None:
        loaded = ctx.model
        imprint = self.secrets()
        base = load_model_for(
            ModelSettings(name=self.base_model(), dtype=str(loaded.dtype).removeprefix("torch.")),
            device=str(loaded.device),
        )
        check_compatible(loaded.model, base.model, self.base_model())
        scrubbed = [SpanRecord(text=r.scrubbed(self.placeholder)) for r in imprint.records]
        data = [tokenize_record(base.tokenizer, r, add_eos=imprint.add_eos).example
                for r in scrubbed]  # fmt: skip
        settings = self.retrain_settings()
        ctx.record.inputs.update({"base": base.path, "retrain": settings.model_dump(mode="json")})
        base.model = self.train_phase(
            base.model, {"train": data}, lambda _: LMObjective("train"),
            base.tokenizer.pad_token_id, ctx.work, "retrain", ctx.record,
            description="scrub_retrain: retraining on scrubbed notes", settings=settings,
        )  # fmt: skip
        self.audit(ctx, "retrained", base, output=True)
        ctx.model = base
