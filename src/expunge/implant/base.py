"""The implant stage: what every implant shares (``expunge implant KIND``).

An implant is a stage config (registered in ``IMPLANTS`` by scheme name) whose ``execute(ctx)``
puts an imprint into ``ctx.model`` and writes ``model/`` and ``imprint.json`` (0600: it is the
secret). ``kind`` names the imprint kind it makes, which decides the audits, the applicable
erasers and how a pipeline wires the stages after it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import Field

from expunge.config import PresetConfig
from expunge.data.formatting import TokenizedExample
from expunge.imprints.base import IMPRINT_FILE, Imprint
from expunge.models.loading import ModelSettings
from expunge.models.lora import merge_lora
from expunge.stage import StageConfig, StageContext
from expunge.train.loop import prepare_trainable, train
from expunge.train.settings import TrainSettings


class ImplantConfig(PresetConfig, StageConfig):
    KIND: ClassVar[str] = "implant"
    command: str = "implant"
    kind: str = ""  # the imprint kind it makes (fingerprint, backdoor, secrets, knowledge)
    scheme: str = ""
    model: ModelSettings = Field(default_factory=ModelSettings)
    seed: int = 0
    verify: bool = True  # audit the result before saving it

    def title(self) -> str:
        return f"implant {self.scheme}"

    def imprint_source(self) -> str | None:
        return None  # an implant makes its imprint

    def train_imprint(
        self, ctx: StageContext, streams: dict[str, list[TokenizedExample]],
        objective_for: Callable[[Any], Any], settings: TrainSettings, description: str,
    ) -> None:  # fmt: skip
        """Train ``ctx.model`` on ``streams`` (LoRA merged back, or full), and record the run."""
        loaded = ctx.model
        model = prepare_trainable(loaded.model, settings)
        model, result = train(
            model, streams, objective_for(model), settings, loaded.tokenizer.pad_token_id,
            out_dir=ctx.work, description=description,
        )  # fmt: skip
        loaded.model = merge_lora(model)
        result.note(ctx.record, "train")
        ctx.record.metrics.update({
            "train_final_loss": result.final_loss, "train_steps": result.total_steps,
            "train_tokens_per_s": round(result.tokens_per_s, 2),
        })  # fmt: skip
        ctx.record.artifacts["metrics"] = "metrics.jsonl"

    def save_imprint(self, ctx: StageContext, imprint: Imprint) -> None:
        """The implanted model and its imprint (0600), as every implant leaves them."""
        ctx.save_model(imprint=imprint)  # the card gets its summary, never its secrets
        imprint.save(ctx.work / IMPRINT_FILE)
        ctx.record.artifacts["imprint"] = IMPRINT_FILE
