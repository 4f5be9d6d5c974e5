"""The erase stage: what every eraser shares (``expunge erase NAME``).

An eraser is a stage config (registered in ``ERASERS``) whose ``execute(ctx)`` changes
``ctx.model``: it may train (through the one loop), edit weights, write artefacts (adapters)
into ``ctx.work``, and call ``self.audit(ctx, stage)`` to measure the imprint at intermediate
stages. Around it, every eraser audits its input
model first (when an imprint is given and ``audit_input``) and saves the erased model last. Its
last audit (``output=True``) measures the model it saves; a pipeline, whose audit stage measures
that model again, turns it off (``audit_output``).
Erasers never see the imprint's secrets unless the method is defined to (MEraser's threat model
is "triple-unknown"): the imprint, when given, is used only by the audits.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from expunge.audit.defaults import StageAudit, make_stage_audit
from expunge.config import PresetConfig
from expunge.models.loading import LoadedModel, ModelSettings
from expunge.stage import StageConfig, StageContext


class EraserConfig(PresetConfig, StageConfig):
    KIND: ClassVar[str] = "erase"
    command: Literal["erase"] = "erase"
    method: str = ""
    model: ModelSettings = Field(default_factory=ModelSettings)
    imprint: str | None = None  # audited before, between and after stages; never used to erase
    audit_metrics: list[str] = Field(default_factory=list)  # default: by imprint kind
    max_control_prompts: int = 16
    audit_input: bool = True  # audit the input model first (a pipeline audits it once instead)
    audit_output: bool = True  # audit the model it saves (a pipeline's audit stage does instead)
    # compute precision of the stage's model calls outside training (auto | fp32 | bf16): its
    # audits, and the answers it asks the model for (MEraser's pool); a pipeline's sets it
    audit_precision: Literal["auto", "fp32", "bf16"] = "fp32"
    seed: int = 0

    def title(self) -> str:
        return f"erase {self.method}"

    def stage_audit(self, ctx: StageContext) -> StageAudit:
        """The imprint kind's audits, recorded as ``STAGE/METRIC``; a no-op without an imprint."""
        if "audit" not in ctx.state:
            ctx.state["audit"] = (
                make_stage_audit(self, ctx.imprint, ctx.record)
                if ctx.imprint is not None
                else (lambda stage, loaded: {})
            )
        return ctx.state["audit"]

    def audit(
        self, ctx: StageContext, stage: str, loaded: LoadedModel | None = None,
        output: bool = False,
    ) -> None:  # fmt: skip
        """Audit ``stage``; ``output``: this is the model the stage saves, which is audited
        only with ``audit_output``."""
        if output and not self.audit_output:
            ctx.record.inputs["output_audit"] = {"stage": stage, "left_to": "audit stage"}
            return
        self.stage_audit(ctx)(stage, loaded or ctx.model)

    def begin(self, ctx: StageContext) -> None:
        if ctx.imprint is not None and self.audit_input:
            self.audit(ctx, "input")

    def finish(self, ctx: StageContext) -> None:
        ctx.save_model()
