"""Baselines from MEraser's table, so users can see why MEraser is needed.

- ``incremental``: plain fine-tuning on clean Q/A pairs (the recover phase alone, no erase).
- ``prune``: unstructured pruning of the linear layers (embeddings and output head excluded)
  at a given sparsity — ``l1``: per layer, zero the weights of smallest magnitude; ``random``:
  zero a uniformly random share per layer (seeded).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from expunge.erase.base import EraserConfig
from expunge.erase.fingerprint.meraser import RECOVER_TRAIN, MEraser
from expunge.errors import ConfigError
from expunge.lazy import lazy, no_grad
from expunge.models.lora import match_modules, merge_lora
from expunge.stage import StageContext

if TYPE_CHECKING:
    import torch
    from torch import nn
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    nn = lazy("torch.nn")
    torch = lazy("torch")


class Incremental(MEraser):
    """Clean incremental fine-tuning: MEraser's recovery data and settings, without the erase."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"n_recover": 600, "recover": RECOVER_TRAIN},
        "demo": {"n_recover": 48, "answer_tokens": 32, "recover": {**RECOVER_TRAIN, "lr": 1e-3, "batch_size": 8}},
    }  # fmt: skip
    method: Literal["incremental"] = "incremental"  # type: ignore[assignment]

    def execute(self, ctx: StageContext) -> None:
        loaded = ctx.model
        _, recover_pool = self.pool(loaded)
        model, result = self._phase(
            loaded, recover_pool, self._format("\n"), self.recover, ctx.work, "finetune"
        )
        ctx.record.metrics.update(
            {"finetune/train_final_loss": result.final_loss, "finetune/train_steps": result.steps}
        )
        loaded.model = merge_lora(model)
        self.audit(ctx, "finetuned", output=True)


@no_grad
def prune_linear(
    model: nn.Module, sparsity: float, method: str, seed: int = 0, targets: list[str] | None = None
) -> dict[str, float]:
    """Zero ``sparsity`` of each targeted linear weight in place; returns the share zeroed per layer."""
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}")
    if method not in {"l1", "random"}:
        raise ConfigError(f"prune method must be 'l1' or 'random', got {method!r}")
    generator = torch.Generator().manual_seed(seed)
    zeroed = {}
    for name in match_modules(model, targets or ["all-linear"], kind="prune target"):
        weight = model.get_submodule(name).weight
        k = round(sparsity * weight.numel())
        if k == 0:
            zeroed[name] = 0.0
            continue
        if method == "l1":
            flat = weight.detach().abs().flatten().float().cpu()
            drop = torch.topk(flat, k, largest=False).indices
        else:
            drop = torch.randperm(weight.numel(), generator=generator)[:k]
        mask = torch.ones(weight.numel(), dtype=torch.bool)
        mask[drop] = False
        weight.mul_(mask.view_as(weight).to(weight.device, weight.dtype))
        zeroed[name] = k / weight.numel()
    return zeroed


class Prune(EraserConfig):
    method: Literal["prune"] = "prune"
    criterion: Literal["l1", "random"] = "l1"
    sparsity: float = Field(default=0.1, ge=0.0, lt=1.0)
    targets: list[str] = Field(default_factory=lambda: ["all-linear"])

    def execute(self, ctx: StageContext) -> None:
        zeroed = prune_linear(ctx.model.model, self.sparsity, self.criterion, self.seed,
                              self.targets)  # fmt: skip
        ctx.record.metrics["pruned_layers"] = len(zeroed)
        ctx.record.metrics["pruned_share"] = sum(zeroed.values()) / max(len(zeroed), 1)
        self.audit(ctx, "pruned", output=True)
