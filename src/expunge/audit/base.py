"""What a metric receives and returns. Metrics are registered in ``expunge.registry.METRICS``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from expunge.data.examples import Example
from expunge.data.formatting import FormatSettings
from expunge.errors import ConfigError

if TYPE_CHECKING:  # annotations only: transformers loads when a model does (expunge.lazy)
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Decoding:
    """How metrics that generate text decode: greedy (the default) or sampled.

    Metrics pass ``generate_kwargs()`` to ``scoring.generate`` and write ``describe()`` into
    their details, so a number measured under sampling is never mistaken for a greedy one.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.do_sample and self.temperature <= 0:
            raise ValueError("sampling needs temperature > 0 (temperature 0 is greedy decoding)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def generate_kwargs(self) -> dict[str, Any]:
        return {"do_sample": self.do_sample, "temperature": self.temperature, "top_p": self.top_p}

    def describe(self) -> str:
        if not self.do_sample:
            return "greedy"
        return f"sampled(temperature={self.temperature:g}, top_p={self.top_p:g})"


# Generation holds a KV cache, not a scoring batch's logits, so a larger batch costs little
# memory, and its decode steps run one after another: fewer, fuller batches are faster (the
# false-trigger rate 1.6x in bf16 and 1.3x in fp32 on a 2-core CPU, docs/results speed). Greedy
# fp32 outputs do not depend on the batch (left padding; tests/test_scoring.py); bf16 ones can
# turn at a near tie, and sampled ones are drawn per batch.
GENERATION_BATCH = 32


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
    decoding: Decoding = field(default_factory=Decoding)  # metrics that generate follow it
    metric: str = "this metric"  # the metric being run (audit_model sets it), for messages
    # compute precision of the model calls (auto | fp32 | bf16, as train.precision); every
    # metric's details record what it resolved to
    precision: str = "fp32"

    @property
    def generation_batch_size(self) -> int:
        """The batch of metrics that generate: the audit's, or ``GENERATION_BATCH`` if larger."""
        return max(self.batch_size, GENERATION_BATCH)


def wrong_imprint(ctx: AuditContext, kind: str) -> ConfigError:
    """The error of a metric that needs a ``kind`` imprint: none was given, or another kind."""
    if ctx.imprint is None:
        return ConfigError(f"{ctx.metric} needs a {kind} imprint: give --imprint DIR/imprint.json")
    given = getattr(ctx.imprint, "kind", type(ctx.imprint).__name__)
    return ConfigError(f"{ctx.metric} needs a {kind} imprint, and the imprint given is a {given} "
                       f"one; audit it with its own kind's metrics (expunge ls metrics)")  # fmt: skip


@dataclass
class MetricResult:
    name: str
    value: float
    higher_is_better: bool
    details: dict[str, Any] = field(default_factory=dict)
