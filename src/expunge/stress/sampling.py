"""``sampling``: the imprint under temperature / top-p decoding instead of greedy.

Audits decide by greedy decoding, but deployed models sample. An imprint erased under greedy
decoding may still come out one time in five when sampled (a fingerprint verifier can simply
ask again), and a fingerprint that holds under greedy decoding may not survive sampling. Each
point decodes with ``temperature`` t and ``top_p``, repeated with ``samples`` seeds; the point's
value is the mean over the seeds (each seed's value is kept in the curve). The first point,
``greedy``, is the ordinary audit.

Every metric that decodes follows ``AuditContext.decoding`` and says so in its details; a
metric that does not decode (``ppl``) is measured once, at the greedy point. A metric that
decodes but ignores the setting would make the curve a lie, so it is an error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator

from expunge.audit.base import Decoding
from expunge.audit.defaults import audit_kind, default_metrics, make_stage_audit
from expunge.errors import ConfigError
from expunge.imprints.base import Imprint
from expunge.lazy import lazy
from expunge.models.loading import LoadedModel
from expunge.stage import StageContext
from expunge.stress.base import Curve, StressConfig

if TYPE_CHECKING:
    import numpy as np
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    np = lazy("numpy")

DECODING_FREE = frozenset({"ppl"})  # scored by likelihood: no decoding to sample


class Sampling(StressConfig):
    stressor: Literal["sampling"] = "sampling"
    temperatures: list[float] = Field(default_factory=lambda: [0.7, 1.0, 1.3])
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    samples: int = Field(default=3, ge=1)  # seeds per temperature
    greedy: bool = True  # the greedy audit first (x = 0)

    X_AXIS: ClassVar[str] = "temperature"

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, value: list[float]) -> list[float]:
        if not value or any(t <= 0 for t in value):
            raise ValueError("temperatures must be > 0 (greedy decoding is the x=0 point)")
        return value

    def execute(self, ctx: StageContext) -> None:
        loaded, imprint, curve = ctx.model, ctx.imprint, self.curve(ctx)
        if self.greedy:
            curve.audit("greedy", 0, loaded, extra={"decoding": "greedy"})
        sampled_metrics = self.metrics_for(imprint)
        for temperature in self.temperatures:
            decoding = Decoding(do_sample=True, temperature=temperature, top_p=self.top_p)
            per_seed = []
            for index in range(self.samples):
                stage = f"t{temperature:g}_s{index}"
                values = self.audit_seed(curve, stage, loaded, decoding, self.seed + index,
                                         sampled_metrics)  # fmt: skip
                per_seed.append(values)
            mean = {name: float(np.mean([v[name] for v in per_seed])) for name in sampled_metrics}
            stage = f"t{temperature:g}"
            ctx.record.metrics.update({f"{stage}/{name}": value for name, value in mean.items()})
            curve.add(stage, temperature, mean, {"decoding": decoding.describe(),
                                                 "per_seed": per_seed, "top_p": self.top_p})  # fmt: skip
        ctx.model = loaded

    def metrics_for(self, imprint: Imprint) -> list[str]:
        metrics = self.audit_metrics or default_metrics(audit_kind(imprint), imprint)
        sampled = [m for m in metrics if m not in DECODING_FREE]
        if not sampled:
            raise ConfigError(f"none of the audited metrics {metrics} decodes; nothing to sample")
        return sampled

    def audit_seed(self, curve: Curve, stage: str, loaded: LoadedModel, decoding: Decoding,
                   seed: int, metrics: list[str]) -> dict[str, float]:  # fmt: skip
        config = self.model_copy(update={"audit_metrics": metrics})
        audit = make_stage_audit(
            config, curve.imprint, curve.record, decoding=decoding, seed=seed,
            fmt=self.audit_format,
        )  # fmt: skip
        values = audit(stage, loaded)
        for name in metrics:
            used = str(curve.record.metric_details[f"{stage}/{name}"].get("decoding", ""))
            if "sampled" not in used:
                raise ConfigError(
                    f"metric {name!r} does not follow sampled decoding (its details say "
                    f"decoding={used or 'nothing'}); leave it out with audit_metrics=[...]"
                )
        return values
