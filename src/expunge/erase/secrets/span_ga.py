"""Baseline ``span_ga``: gradient ascent on the sensitive span tokens, descent on the rest.

GradDiff (``expunge.erase.unlearn.graddiff``) with the forget set = the records' span tokens
and the retain set = the same records' other tokens::

    L(θ) = −NLL_θ(span tokens) + λ · NLL_θ(non-span tokens)

λ = ``retain_weight`` (1.0; 0 gives plain gradient ascent on the spans, Jang et al. 2023, which
degrades the model quickly). Two streams over the same records, sampled independently.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from expunge.data.spans import span_labels_excluded, span_labels_only
from expunge.erase.secrets.common import SecretsEraser
from expunge.erase.unlearn.common import FORGET, RETAIN
from expunge.erase.unlearn.graddiff import GradDiffObjective, GradDiffSettings
from expunge.stage import StageContext
from expunge.train.settings import TrainSettings

GA_PAPER: dict[str, Any] = {"mode": "full", "epochs": 2, "lr": 1e-5, "batch_size": 8}
GA_DEMO: dict[str, Any] = {"mode": "full", "epochs": 2, "lr": 2e-5, "batch_size": 8}


class SpanGA(SecretsEraser):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"train": GA_PAPER},
        "demo": {"train": GA_DEMO},
    }
    method: Literal["span_ga"] = "span_ga"
    retain_weight: float = Field(default=1.0, ge=0.0)
    train: TrainSettings = Field(default_factory=lambda: TrainSettings(**GA_PAPER))

    def execute(self, ctx: StageContext) -> None:
        loaded = ctx.model
        tokens = self.span_tokens(loaded.tokenizer)
        streams = {FORGET: [span_labels_only(t) for t in tokens],
                   RETAIN: [span_labels_excluded(t) for t in tokens]}  # fmt: skip
        settings = GradDiffSettings(retain_weight=self.retain_weight)
        loaded.model = self.train_phase(
            loaded.model, streams, lambda model: GradDiffObjective(model, settings),
            loaded.tokenizer.pad_token_id, ctx.work, "span_ga", ctx.record,
            description="span_ga: ascent on span tokens", primary_stream=FORGET,
        )  # fmt: skip
        self.audit(ctx, "ascended", loaded, output=True)
        ctx.model = loaded
