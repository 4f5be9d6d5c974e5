"""``expunge erase NAME``: the shared runner for every eraser.

An eraser is a config class (registered in ``ERASERS``) with
``apply(loaded, work, record, stage_audit) -> LoadedModel``: it may train (through the one loop),
edit weights, write artefacts (adapters) into ``work``, and call ``stage_audit(name, loaded)``
to measure the imprint at intermediate stages. Erasers never see the imprint's secrets unless
the method is defined to (MEraser's threat model is "triple-unknown"): the imprint, when given,
is used only by the audits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from expunge.audit.base import AuditContext, Decoding
from expunge.audit.runner import audit_model
from expunge.data.formatting import FormatSettings
from expunge.imprints.base import Imprint, load_imprint
from expunge.imprints.fingerprint.implant import PresetConfig
from expunge.models.device import dtype_name
from expunge.models.loading import LoadedModel, save_model
from expunge.records import RunRecord, check_output_dir
from expunge.runs import ModelSettings, recorded_run

StageAudit = Callable[[str, LoadedModel], dict[str, float]]


class EraserConfig(PresetConfig):
    command: Literal["erase"] = "erase"
    method: str = ""
    model: ModelSettings = Field(default_factory=ModelSettings)
    imprint: str | None = None  # audited before, between and after stages; never used to erase
    audit_metrics: list[str] = Field(default_factory=list)  # default: by imprint kind
    max_control_prompts: int = 16
    audit_input: bool = True  # audit the input model first (a pipeline audits it once instead)
    seed: int = 0

    def apply(
        self, loaded: LoadedModel, work: Path, record: RunRecord, stage_audit: StageAudit
    ) -> LoadedModel:  # pragma: no cover
        raise TypeError(f"{type(self).__name__} does not define apply()")

    def validate_inputs(self) -> None:
        """Check every input (files, adapters) before anything is loaded or written."""


DEFAULT_AUDITS = {
    "fingerprint": ["fsr", "false_trigger_rate", "ppl"],
    "backdoor": ["asr", "clean_accuracy", "clean_trigger_rate"],
    "knowledge": ["forget_qa_acc", "retain_qa_acc", "forget_rouge_l", "retain_rouge_l", "ppl"],
    "secrets": ["regurgitation", "exposure", "mia", "pii_in_output", "notes_ppl", "ppl"],
}


def own_format(imprint: Imprint | None) -> FormatSettings:
    """How an imprint's own examples are formatted: its template, else the chat format."""
    return imprint.format_settings() if hasattr(imprint, "format_settings") else FormatSettings()


def make_stage_audit(
    config: EraserConfig,
    imprint: Imprint | None,
    record: RunRecord,
    decoding: Decoding | None = None,
    seed: int | None = None,
    fmt: FormatSettings | None = None,
) -> StageAudit:
    """``stage_audit(stage, loaded)``: the imprint kind's default audits (or
    ``config.audit_metrics``), recorded as ``STAGE/METRIC``. Stressors reuse it with their own
    config (any object with ``audit_metrics``, ``max_control_prompts`` and ``seed``), a sampled
    ``decoding`` and a per-call ``seed``. ``fmt`` replaces the imprint's own format (its
    template, else the model's chat format) for the imprint's audits."""
    metrics = config.audit_metrics or (
        DEFAULT_AUDITS.get(imprint.kind, ["ppl"]) if imprint else ["ppl"]
    )

    def stage_audit(stage: str, loaded: LoadedModel) -> dict[str, float]:
        def context(format_: FormatSettings) -> AuditContext:
            return AuditContext(loaded.model, loaded.tokenizer, format_, imprint=imprint,
                                seed=config.seed if seed is None else seed,
                                decoding=decoding or Decoding())  # fmt: skip

        options: dict[str, dict[str, Any]] = {
            "ppl": {"mode": "response"},
            "false_trigger_rate": {"max_ordinary": config.max_control_prompts},
        }

        def run(names: list[str], format_: FormatSettings) -> tuple[dict, dict]:
            chosen = {k: v for k, v in options.items() if k in names}
            return audit_model(context(format_), names, chosen)

        # utility is measured in the model's own chat format, the imprint's metrics in the
        # imprint's format
        own = [m for m in metrics if m != "ppl" or imprint is None]
        results, timings = run(own, fmt or own_format(imprint))
        if len(own) < len(metrics):
            ppl_results, ppl_timings = run(["ppl"], FormatSettings())
            results = {name: {**results, **ppl_results}[name] for name in metrics}  # asked order
            timings = {**timings, **ppl_timings}
        values = {}
        for name, result in results.items():
            values[name] = result.value
            record.metrics[f"{stage}/{name}"] = result.value
            record.metric_details[f"{stage}/{name}"] = {
                "higher_is_better": result.higher_is_better,
                **result.details,
            }
        record.timings.update({f"audit/{stage}/{k}": v for k, v in timings.items()})
        return values

    return stage_audit


def run_erase(
    config: EraserConfig,
    out: str | Path,
    overwrite: bool = False,
    loaded: LoadedModel | None = None,
) -> RunRecord:
    from expunge.finetune import load_model_for

    check_output_dir(out, overwrite)
    config.validate_inputs()
    imprint = load_imprint(config.imprint) if config.imprint else None
    loaded = loaded or load_model_for(config.model)
    with recorded_run(f"erase {config.method}", out, config, overwrite, seed=config.seed) as (
        run_dir,
        record,
    ):
        work = run_dir.path
        record.device, record.dtype = str(loaded.device), dtype_name(loaded.dtype)
        record.inputs = {"model": loaded.path, "imprint": config.imprint}
        if imprint is not None:
            record.inputs["imprint_summary"] = imprint.summary()
        stage_audit = make_stage_audit(config, imprint, record)
        if imprint is not None and config.audit_input:
            stage_audit("input", loaded)
        loaded = config.apply(loaded, work, record, stage_audit)
        save_model(loaded.model, loaded.tokenizer, work / "model")
        record.artifacts["model"] = "model"
    return record
