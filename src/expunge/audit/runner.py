"""The audit stage (``expunge audit``): run registered metrics on a model, into ``record.json``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from expunge.audit.base import AuditContext, MetricResult
from expunge.config import suggest
from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings
from expunge.data.settings import DataSettings
from expunge.errors import ConfigError
from expunge.models.device import autocast, resolve_precision
from expunge.models.loading import ModelSettings
from expunge.registry import METRICS
from expunge.stage import StageConfig, StageContext

if TYPE_CHECKING:
    from expunge.imprints.base import Imprint


class AuditConfig(StageConfig):
    KIND: ClassVar[str] = "audit"
    command: Literal["audit"] = "audit"
    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    imprint: str | None = None
    metrics: list[str] = Field(default_factory=lambda: ["ppl"])
    format: FormatSettings = Field(default_factory=FormatSettings)
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per metric, e.g. ppl.mode
    batch_size: int = Field(default=8, ge=1)
    seed: int = 0
    progress: bool = True
    precision: Literal["auto", "fp32", "bf16"] = "fp32"  # of the model calls; see AuditContext

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, names: list[str]) -> list[str]:
        # at config time, so a study's plan (and --dry-run) finds a misspelt metric before any
        # stage trains; the registry is read by name, nothing is imported
        for name in names:
            if name not in METRICS:
                raise ValueError(f"unknown metric {name!r}{suggest(name, METRICS.names())}; "
                                 f"known: {', '.join(METRICS.names())}")  # fmt: skip
        return names

    @model_validator(mode="after")
    def _options_for_requested_metrics(self) -> AuditConfig:
        unknown = sorted(set(self.options) - set(self.metrics))
        if unknown:
            raise ValueError(f"options given for metrics not requested: {unknown}")
        return self

    def validate_inputs(self) -> None:
        if not self.metrics:
            raise ConfigError("no metrics requested")
        self.examples()

    def examples(self) -> list[Example] | None:
        """The evaluation data (``--data``), or None for each metric's default data."""
        return None if self.data.path is None else self.data.load()

    def execute(self, ctx: StageContext) -> None:
        ctx.record.inputs["data"] = self.data.path
        data = self.examples()

        def context(fmt: FormatSettings) -> AuditContext:
            return AuditContext(
                ctx.model.model, ctx.model.tokenizer, fmt, data=data, imprint=ctx.imprint,
                batch_size=self.batch_size, seed=self.seed, progress=self.progress,
                precision=self.precision,
            )  # fmt: skip

        if ctx.imprint is not None and "format" not in self.model_fields_set:
            # as the stage audits read it: the imprint's metrics in the format it was taught in
            taught = own_format(ctx.imprint)
            ctx.record.inputs["imprint_format"] = taught.template
            results, timings = audit_in_formats(
                context, self.metrics, self.options, taught, self.format
            )
        else:  # a format the user chose holds for every metric
            results, timings = audit_model(context(self.format), self.metrics, self.options)
        ctx.record.timings.update(timings)
        for name, result in results.items():
            ctx.record.metrics[name] = result.value
            ctx.record.metric_details[name] = {"higher_is_better": result.higher_is_better,
                                               **result.details}  # fmt: skip
        write_open_unlearning_files(ctx, results)


def write_open_unlearning_files(ctx: StageContext, results: dict[str, MetricResult]) -> None:
    """A TOFU or MUSE imprint's audit also leaves open-unlearning's ``<BENCH>_EVAL.json`` and
    ``<BENCH>_SUMMARY.json`` (``expunge.audit.interop``), so its numbers sit beside theirs."""
    from expunge.audit.interop import EVAL_FILE_NAMES, open_unlearning_logs, write_eval_files

    benchmark = getattr(ctx.imprint, "benchmark", None)
    if benchmark is None or benchmark.name not in EVAL_FILE_NAMES:
        return
    pairs = {name: (r.value, r.details) for name, r in results.items()}
    logs, top, left_out = open_unlearning_logs(benchmark.name, pairs)
    info: dict[str, Any] = {"left_out": left_out}
    if logs:
        bench = EVAL_FILE_NAMES[benchmark.name]
        eval_path, summary_path = write_eval_files(ctx.work, bench, logs, top)
        for path in (eval_path, summary_path):
            ctx.record.artifacts[path.stem] = path.name
        info["files"] = [eval_path.name, summary_path.name]
    ctx.record.inputs["open_unlearning"] = info


def own_format(imprint: Imprint | None) -> FormatSettings:
    """How an imprint's own examples are formatted: its template, else the chat format."""
    return imprint.format_settings() if hasattr(imprint, "format_settings") else FormatSettings()


def audit_in_formats(
    context: Callable[[FormatSettings], AuditContext],
    metrics: list[str],
    options: dict[str, dict[str, Any]],
    imprint_format: FormatSettings,
    utility_format: FormatSettings,
) -> tuple[dict[str, MetricResult], dict[str, float]]:
    """``metrics`` on ``context(format)``: the imprint's in the format it was taught in, ``ppl``
    (general text) in ``utility_format``. Every stage audit and ``expunge audit --imprint`` read
    one model alike through this, so implant, erase and audit give the same numbers."""
    imprints, utility = [m for m in metrics if m != "ppl"], [m for m in metrics if m == "ppl"]
    results, timings = {}, {}
    for names, fmt in ((imprints, imprint_format), (utility, utility_format)):
        if names:
            chosen = {k: v for k, v in options.items() if k in names}
            found, seconds = audit_model(context(fmt), names, chosen)
            results.update(found)
            timings.update(seconds)
    return {name: results[name] for name in metrics}, timings  # in the order asked


def audit_model(
    ctx: AuditContext, metrics: list[str], options: dict[str, dict[str, Any]]
) -> tuple[dict[str, MetricResult], dict[str, float]]:
    """Run ``metrics`` on an already loaded model; returns results and per-metric seconds."""
    functions = {name: METRICS.get(name) for name in metrics}  # unknown names fail first
    unknown_options = set(options) - set(metrics)
    if unknown_options:
        raise ConfigError(f"options given for metrics not requested: {sorted(unknown_options)}")
    results, timings = {}, {}
    device = next(ctx.model.parameters()).device
    precision = resolve_precision(ctx.precision, device)
    for name, function in functions.items():
        started = time.perf_counter()
        ctx.options, ctx.metric = options.get(name, {}), name
        import torch  # loaded with the model, not with the config (expunge.lazy)

        torch.manual_seed(ctx.seed)
        with autocast(precision, device):
            results[name] = function(ctx)
        results[name].details.setdefault("precision", precision)
        timings[name] = round(time.perf_counter() - started, 3)
    return results, timings
