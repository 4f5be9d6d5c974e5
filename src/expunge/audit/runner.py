"""``expunge audit``: run registered metrics on a model and write them into ``record.json``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from expunge.audit.base import AuditContext, MetricResult
from expunge.config import StrictModel
from expunge.data.formatting import FormatSettings
from expunge.data.loaders import load_examples
from expunge.errors import ConfigError
from expunge.imprints.base import load_imprint
from expunge.models.device import dtype_name
from expunge.records import RunRecord, check_output_dir
from expunge.registry import METRICS
from expunge.runs import DataSettings, ModelSettings, recorded_run


class AuditConfig(StrictModel):
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


def audit_model(
    ctx: AuditContext, metrics: list[str], options: dict[str, dict[str, Any]]
) -> tuple[dict[str, MetricResult], dict[str, float]]:
    """Run ``metrics`` on an already loaded model; returns results and per-metric seconds."""
    functions = {name: METRICS.get(name) for name in metrics}  # unknown names fail first
    unknown_options = set(options) - set(metrics)
    if unknown_options:
        raise ConfigError(f"options given for metrics not requested: {sorted(unknown_options)}")
    results, timings = {}, {}
    for name, function in functions.items():
        started = time.perf_counter()
        ctx.options = options.get(name, {})
        torch.manual_seed(ctx.seed)
        results[name] = function(ctx)
        timings[name] = round(time.perf_counter() - started, 3)
    return results, timings


def run_audit(config: AuditConfig, out: str | Path, overwrite: bool = False) -> RunRecord:
    from expunge.finetune import load_model_for

    check_output_dir(out, overwrite)
    if not config.metrics:
        raise ConfigError("no metrics requested")
    for name in config.metrics:
        METRICS.get(name)
    data = None
    if config.data.path is not None:
        data = load_examples(config.data.path, split=config.data.split)
        if config.data.max_examples:
            data = data[: config.data.max_examples]
    imprint = load_imprint(config.imprint) if config.imprint else None
    loaded = load_model_for(config.model)
    with recorded_run("audit", out, config, overwrite, seed=config.seed) as (_, record):
        record.device = str(loaded.device)
        record.dtype = dtype_name(loaded.dtype)
        record.inputs = {"model": loaded.path, "data": config.data.path, "imprint": config.imprint}
        if imprint is not None:
            record.inputs["imprint_summary"] = imprint.summary()
        ctx = AuditContext(
            loaded.model, loaded.tokenizer, config.format, data=data,
            imprint=imprint, batch_size=config.batch_size, seed=config.seed, progress=config.progress,
        )  # fmt: skip
        results, timings = audit_model(ctx, config.metrics, config.options)
        record.timings.update(timings)
        for name, result in results.items():
            record.metrics[name] = result.value
            record.metric_details[name] = {
                "higher_is_better": result.higher_is_better,
                **result.details,
            }
    return record
