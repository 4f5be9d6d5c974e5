"""What a metric receives and returns. Metrics are registered in ``expunge.registry.METRICS``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings


@dataclass
class AuditContext:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    format: FormatSettings
    data: list[Example] | None = None  # user-given evaluation data (--data)
    imprint: Any = None  # the imprint being audited, when there is one
    options: dict[str, Any] = field(default_factory=dict)  # per-metric settings
    batch_size: int = 8
    seed: int = 0
    progress: bool = True


@dataclass
class MetricResult:
    name: str
    value: float
    higher_is_better: bool
    details: dict[str, Any] = field(default_factory=dict)
