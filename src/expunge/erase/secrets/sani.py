"""SANI — sanitizing LLMs by unlearning (Boutet & Magnana, 2025): reset, then repair.

1. **Reset** a ``fraction`` of the MLP neurons of the last ``layers`` transformer blocks:
   neuron j of a block is row j of its input projections (``gate_proj``/``up_proj`` in Llama and
   Qwen2, column j of ``c_fc`` and its bias in GPT-2) and column j of its output projection
   (``down_proj``; row j of GPT-2's ``c_proj``). Each is re-drawn from the model's init
   distribution, N(0, ``config.initializer_range``²) with biases zeroed (``init=normal``, the
   paper's "reset"), or set to zero (``init=zero``). The paper resets a random 50% of the final
   block's neurons [paper, reviews]: ``preset=paper`` (``layers=1 fraction=0.5
   selection=random``). Ours: ``selection=activation`` resets the neurons with the largest mean
   |activation| (the input of the output projection) on the records' sensitive span tokens;
   ``selection=contrast`` those whose activation there most exceeds their activation on the rest
   of the notes.
2. **Repair** on the same corpus with the sensitive tokens excluded from the loss
   (``expunge.erase.secrets.common``), so they are never re-learned while the rest is: the
   paper's 1–2 epochs, or (ours, ``expunge.erase.secrets.repair``) steps with a stop rule on
   held-out text and a KL term to the input model on ordinary questions.

The default preset ``robust`` is the last 4 blocks, a quarter of their neurons by ``contrast``,
and the stepped repair (at most 80 steps, KL to the input model on its answers to 256 ordinary
questions, a quarter of them held out for the stop rule); ``paper`` keeps the paper's setting.

There is no public code; the selection of neurons within the MLP (not attention) is our reading
of "neurons", recorded with the run. ``repair_only`` (registered here too) is the paper's
baseline: the same repair without the reset.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn
from transformers.pytorch_utils import Conv1D

from expunge.data.collator import collate
from expunge.data.spans import SpanTokens
from expunge.erase.secrets.common import REPAIR_PAPER, SecretsEraser
from expunge.erase.secrets.repair import frozen_teacher
from expunge.errors import ConfigError
from expunge.models.loading import LoadedModel
from expunge.records import RunRecord
from expunge.stage import StageContext

# The paper's setting [paper, reviews]: a random half of the last block's MLP neurons, repaired
# for 2 epochs of the corpus.
PAPER: dict[str, Any] = {"layers": 1, "fraction": 0.5, "selection": "random", "train": REPAIR_PAPER}
# The default: set before the generalization protocol's record worlds existed, except
# utility_pairs (64 → 256), chosen on one of them and checked on the other two
# (docs/results/2026-12-03-generalization.md).
ROBUST: dict[str, Any] = {
    "layers": 4, "fraction": 0.25, "selection": "contrast", "utility_weight": 1.0,
    "utility_pairs": 256, "stop_patience": 2, "eval_every": 10,
    "train": {"mode": "full", "max_steps": 80, "lr": 5e-5, "batch_size": 8},
}  # fmt: skip


def mlp_blocks(model: nn.Module) -> list[nn.Module]:
    """The MLP of every transformer block, in layer order (Llama/Qwen2 or GPT-2 naming)."""
    blocks = [
        module for name, module in model.named_modules()
        if name.endswith(".mlp") and (hasattr(module, "down_proj") or hasattr(module, "c_proj"))
    ]  # fmt: skip
    if not blocks:
        raise ConfigError(f"found no MLP blocks (down_proj or c_proj) in {type(model).__name__}")
    return blocks


def _parts(mlp: nn.Module) -> tuple[list[tuple[nn.Module, int]], tuple[nn.Module, int]]:
    """(input projections with the weight axis indexing neurons, output projection and axis)."""
    if hasattr(mlp, "down_proj"):
        inputs = [getattr(mlp, n) for n in ("gate_proj", "up_proj") if hasattr(mlp, n)]
        return [(m, 0) for m in inputs], (mlp.down_proj, 1)
    # GPT-2: Conv1D stores weights as (in, out)
    c_fc, c_proj = mlp.c_fc, mlp.c_proj
    return [(c_fc, 1 if isinstance(c_fc, Conv1D) else 0)], (
        c_proj, 0 if isinstance(c_proj, Conv1D) else 1,
    )  # fmt: skip


def neuron_count(mlp: nn.Module) -> int:
    inputs, _ = _parts(mlp)
    module, axis = inputs[0]
    return int(module.weight.shape[axis])


def reset_count(n: int, fraction: float) -> int:
    if not 0 < fraction <= 1:
        raise ConfigError(f"the reset fraction must be in (0, 1], got {fraction}")
    return max(1, round(fraction * n))


def select_random(n: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=generator)[: reset_count(n, fraction)].sort().values


def select_top(activity: torch.Tensor, fraction: float) -> torch.Tensor:
    count = reset_count(activity.numel(), fraction)
    return torch.topk(activity, count).indices.sort().values


@torch.no_grad()
def reset_neurons(
    mlp: nn.Module, neurons: torch.Tensor, init: str, std: float | None,
    generator: torch.Generator,
) -> None:  # fmt: skip
    """Re-draw (``normal``) or zero the weights of ``neurons`` in this MLP, biases zeroed."""
    inputs, (output, out_axis) = _parts(mlp)
    for module, axis in [*inputs, (output, out_axis)]:
        weight = module.weight
        index = neurons.to(weight.device)
        shape = list(weight.shape)
        shape[axis] = len(neurons)
        if init == "normal":
            assert std is not None
            values = torch.randn(shape, generator=generator, dtype=torch.float32) * std
        else:
            values = torch.zeros(shape)
        weight.index_copy_(axis, index, values.to(weight.device, weight.dtype))
        bias = getattr(module, "bias", None)
        if bias is not None and (module, axis) in inputs:
            bias.index_fill_(0, index.to(bias.device), 0.0)


@torch.no_grad()
def span_activity(
    model: nn.Module, mlps: list[nn.Module], records: list[SpanTokens], pad_token_id: int,
    batch_size: int = 8,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:  # fmt: skip
    """Mean |activation| of each MLP neuron over the records' sensitive span tokens, and over
    their other (non-pad) tokens: ``(on_spans, elsewhere)``, one tensor per MLP."""
    outputs = [_parts(m)[1][0] for m in mlps]
    sums: list[list[torch.Tensor]] = [[torch.zeros(()), torch.zeros(())] for _ in mlps]
    holder: dict[str, torch.Tensor] = {}

    def hook_for(index: int):
        def hook(_module, args):
            active = args[0].abs().double()
            for k, mask in enumerate((holder["span"], holder["other"])):
                sums[index][k] = (
                    sums[index][k] + (active * mask.unsqueeze(-1)).sum(dim=(0, 1)).cpu()
                )

        return hook

    handles = [m.register_forward_pre_hook(hook_for(i)) for i, m in enumerate(outputs)]
    device = next(model.parameters()).device
    counts = [0, 0]
    try:
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            batch = collate([r.example for r in chunk], pad_token_id)
            span = torch.zeros_like(batch["attention_mask"], dtype=torch.float64)
            for row, r in enumerate(chunk):
                span[row, : len(r.span_mask)] = torch.tensor(r.span_mask, dtype=torch.float64)
            other = batch["attention_mask"].to(torch.float64) - span
            holder["span"], holder["other"] = span.to(device), other.to(device)
            model(input_ids=batch["input_ids"].to(device),
                  attention_mask=batch["attention_mask"].to(device))  # fmt: skip
            counts[0] += int(span.sum())
            counts[1] += int(other.sum())
    finally:
        for handle in handles:
            handle.remove()
    if counts[0] == 0:
        raise ConfigError("the records have no sensitive span tokens to measure activations on")
    return ([s[0] / counts[0] for s in sums],
            [s[1] / max(counts[1], 1) for s in sums])  # fmt: skip


def selection_scores(
    selection: str, on_spans: list[torch.Tensor], elsewhere: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Per-neuron scores, highest reset first: ``activation`` = mean |activation| on the span
    tokens; ``contrast`` = that minus the mean on the notes' other tokens (neurons that fire for
    the identifiers more than for the writing around them)."""
    if selection == "activation":
        return on_spans
    return [a - b for a, b in zip(on_spans, elsewhere, strict=True)]


class Sani(SecretsEraser):
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": PAPER,
        "robust": ROBUST,
        "demo": ROBUST,
    }
    DEFAULT_PRESET: ClassVar[str] = "robust"
    method: Literal["sani"] = "sani"
    layers: int = Field(default=1, ge=1)  # reset in the last N transformer blocks
    fraction: float = Field(default=0.5, gt=0.0, le=1.0)  # share of each block's MLP neurons
    selection: Literal["random", "activation", "contrast"] = "random"
    init: Literal["normal", "zero"] = "normal"
    do_repair: bool = True

    def execute(self, ctx: StageContext) -> None:
        loaded = ctx.model
        # what the repair measures and distils is taken from the model as given
        general = self.general_set(loaded) if self.do_repair else None
        teacher = frozen_teacher(loaded.model) if self.utility_weight > 0 else None
        if self.method == "sani":
            chosen = self.reset(loaded, ctx.record)
            ctx.record.metric_details["reset"] = {"neurons_per_layer": chosen}
            self.audit(ctx, "reset", loaded, output=not self.do_repair)
        if self.do_repair:
            self.repair(loaded, ctx.work, ctx.record, "repair", general, teacher)
            self.audit(ctx, "repaired", loaded, output=True)
        ctx.model = loaded

    def reset(self, loaded: LoadedModel, record: RunRecord) -> list[int]:
        model = loaded.model
        blocks = mlp_blocks(model)
        if self.layers > len(blocks):
            raise ConfigError(f"layers={self.layers} but the model has {len(blocks)} blocks")
        chosen_blocks = blocks[-self.layers :]
        std = None
        if self.init == "normal":
            std = getattr(model.config, "initializer_range", None)
            if std is None:
                raise ConfigError(
                    f"{type(model).__name__}'s config has no initializer_range; use init=zero"
                )
        generator = torch.Generator().manual_seed(self.seed)
        if self.selection != "random":
            activity = span_activity(model, chosen_blocks, self.span_tokens(loaded.tokenizer),
                                     loaded.tokenizer.pad_token_id)  # fmt: skip
            scores = selection_scores(self.selection, *activity)
            selected = [select_top(a, self.fraction) for a in scores]
        else:
            selected = [select_random(neuron_count(b), self.fraction, generator)
                        for b in chosen_blocks]  # fmt: skip
        for block, neurons in zip(chosen_blocks, selected, strict=True):
            reset_neurons(block, neurons, self.init, std, generator)
        record.metrics["reset/layers"] = len(chosen_blocks)
        record.metrics["reset/neurons"] = sum(len(n) for n in selected)
        return [len(n) for n in selected]


class RepairOnly(Sani):
    """Baseline: SANI's span-masked repair (the preset's), no reset."""

    method: Literal["repair_only"] = "repair_only"  # type: ignore[assignment]
