"""What every stage audits by default, and the stage audit erasers and stressors call.

``DEFAULT_AUDITS`` names the metrics of each imprint kind; ``DEFAULT_OPTIONS`` the options those
metrics are measured with everywhere (a pipeline's audit stages and every eraser's or
stressor's stage audits), so that a number from one place compares with a number from another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from expunge.audit.base import AuditContext, Decoding
from expunge.audit.runner import audit_in_formats, own_format
from expunge.data.formatting import FormatSettings
from expunge.imprints.base import Imprint
from expunge.models.loading import LoadedModel
from expunge.records import RunRecord

StageAudit = Callable[[str, LoadedModel], dict[str, float]]

DEFAULT_AUDITS = {
    "fingerprint": ["fsr", "false_trigger_rate", "ppl"],
    "backdoor": ["asr", "clean_accuracy", "clean_trigger_rate"],
    # trigger → response backdoors of instruction-tuned LLMs (an imprint's ``audit_kind``)
    "backdoor:generative": ["asr", "clean_trigger_rate", "ppl"],
    "backdoor:composite": ["asr", "clean_trigger_rate", "part_trigger_rate", "ppl"],
    "knowledge": ["forget_qa_acc", "retain_qa_acc", "forget_rouge_l", "retain_rouge_l", "ppl"],
    "secrets": [
        "direct_regurgitation",
        "regurgitation",
        "exposure",
        "mia",
        "pii_in_output",
        "notes_ppl",
        "ppl",
    ],
}
# a benchmark imprint's own metrics (those that need no reference model), by benchmark name:
# a MUSE forget set is running text, which the knowledge defaults' Q/A accuracy cannot read
BENCHMARK_AUDITS = {
    "tofu": ["forget_rouge_l", "forget_prob", "truth_ratio", "model_utility"],
    "muse_news": ["forget_verbatim_rouge_l", "knowmem_forget", "knowmem_retain"],
    "muse_books": ["forget_verbatim_rouge_l", "knowmem_forget", "knowmem_retain"],
    "wmdp": ["ppl"],
}
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    # ppl's own default (audit/utility.py: ONE ppl), written out so that studies' recorded
    # options say it and their cached stages keep their hashes
    "ppl": {"mode": "response"},
    "false_trigger_rate": {"max_ordinary": 16},
    "wrapper_trigger_rate": {"max_ordinary": 16},
}


def default_metrics(
    kind: str | None, imprint: Imprint | None = None, benchmark: str | None = None
) -> list[str]:
    """The audits of an imprint kind or its variant (``backdoor:generative``), or of the
    benchmark a knowledge imprint was loaded from (``benchmark``, or the one ``imprint`` names)."""
    source = getattr(imprint, "benchmark", None)
    benchmark = benchmark or (source.name if source is not None else None)
    if benchmark in BENCHMARK_AUDITS:
        return list(BENCHMARK_AUDITS[benchmark])
    kind = kind or ""
    return list(DEFAULT_AUDITS.get(kind, DEFAULT_AUDITS.get(kind.split(":")[0], ["ppl"])))


def audit_kind(imprint: Imprint | None) -> str | None:
    """The ``DEFAULT_AUDITS`` key of an imprint: its kind, or a variant of it
    (``backdoor:generative``) when the imprint names one."""
    if imprint is None:
        return None
    return getattr(imprint, "audit_kind", None) or imprint.kind


def default_options(metrics: list[str]) -> dict[str, dict[str, Any]]:
    """The options every stage audit uses for ``metrics``, so audit stages measure alike."""
    return {k: dict(v) for k, v in DEFAULT_OPTIONS.items() if k in metrics}


def make_stage_audit(
    config: Any,
    imprint: Imprint | None,
    record: RunRecord,
    decoding: Decoding | None = None,
    seed: int | None = None,
    fmt: FormatSettings | None = None,
) -> StageAudit:
    """``stage_audit(stage, loaded)``: the imprint kind's default audits (or
    ``config.audit_metrics``), recorded as ``STAGE/METRIC``. ``config`` is any object with
    ``audit_metrics``, ``max_control_prompts``, ``seed`` and ``audit_precision`` (erasers,
    stressors); stressors add
    a sampled ``decoding`` and a per-call ``seed``. ``fmt`` replaces the imprint's own format
    (its template, else the model's chat format) for the imprint's audits."""
    metrics = config.audit_metrics or [
        # the defaults that this imprint can measure (no held-out records: no mia)
        m for m in default_metrics(audit_kind(imprint), imprint)
        if imprint is None or imprint.can_measure(m)
    ]  # fmt: skip

    def stage_audit(stage: str, loaded: LoadedModel) -> dict[str, float]:
        def context(format_: FormatSettings) -> AuditContext:
            return AuditContext(loaded.model, loaded.tokenizer, format_, imprint=imprint,
                                seed=config.seed if seed is None else seed,
                                decoding=decoding or Decoding(),
                                precision=config.audit_precision)  # fmt: skip

        options = default_options(metrics)
        for ordinary in ("false_trigger_rate", "wrapper_trigger_rate"):
            if ordinary in options:
                options[ordinary]["max_ordinary"] = config.max_control_prompts

        # utility is measured in the model's own chat format, the imprint's metrics in the
        # imprint's format (with no imprint, ``fmt`` or the chat format for every metric)
        imprint_format = fmt or own_format(imprint)
        utility_format = FormatSettings() if imprint is not None else imprint_format
        results, timings = audit_in_formats(context, metrics, options, imprint_format,
                                            utility_format)  # fmt: skip
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
