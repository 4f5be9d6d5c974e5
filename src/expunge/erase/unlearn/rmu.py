"""``rmu`` — Representation Misdirection for Unlearning.

Li et al., *The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning*, ICML
2024, §5 and eq. (1)–(2). At one layer ℓ, push the hidden states of forget text toward a fixed
random direction scaled by c, and keep those of retain text equal to the frozen model's::

    L(θ) = mean ‖h_θ^ℓ(x_f) − c·u‖²  +  α · mean ‖h_θ^ℓ(x_r) − h_ref^ℓ(x_r)‖²

u is drawn once with entries uniform in [0, 1) (``torch.rand``, seeded by ``control_seed``) and
normalized to unit length; the means run over token positions and hidden units (``F.mse_loss``
in the authors' code). Only a few tensors train: on Zephyr-7B the activations of layer 7 and
the MLP down-projections of layers 5–7, c = 6.5, α = 1200, lr 5e-5, 150 batches of 4 — the
defaults here (``layer=7``; ``params`` default to ``layers.{ℓ-2..ℓ}.mlp.down_proj.weight``).

Choices and departures:

- The layer is found by index among the model's decoder blocks (``layers.N``, ``h.N``,
  ``blocks.N``) or by module name (suffix or ``re:`` regex), and read with a forward hook —
  never by ``eval``-ing a module path. ``params`` are parameter-name patterns (exact name,
  dotted suffix such as ``layers.5.mlp.down_proj``, or ``re:REGEX``); a pattern that matches
  nothing is an error that lists the real names.
- Positions (``positions``): the authors average over every position of the padded batch, pad
  included. ``labels`` (default) averages over the positions whose next token is a label (the
  positions the step context counts for the stream): padding never enters and Q/A prompts are
  left out. ``tokens`` takes every non-pad position, prompts included — the authors' choice
  without the padding — averaged within each sequence, then over the step's sequences (a
  global count, so the loss is the same under accumulation and DDP): open-unlearning
  ``src/trainer/unlearn/rmu.py``'s ``compute_activation_loss`` when its label mask covers every
  non-pad token (text examples). On the unlearning demo
  (3 people's Q/A and bios, c = 300, α = 100, lr 5e-3, 30 epochs) both reach 0% forget accuracy
  at 98.3% retain; ``labels`` leaves truth ratios closer to the retrained model's (KS p 0.94 vs
  0.08).
- α: 1200 is tuned to Zephyr-7B's layer-7 scale. On SmolLM2-135M it holds the forget term
  almost still (its MSE fell 230 → 209 in 68 steps at lr 2e-2) and forget accuracy stayed at 47–87%;
  α = 100 lets it move.
- Efficiency: the forward pass stops right after layer ℓ (the rest of the network cannot
  change the loss), except under a distributed wrapper, which expects whole forward passes.
- The frozen copy (retain targets) is the model before unlearning (``Reference``).
- ``adaptive=true`` — Adaptive RMU (Dang et al., *On Effects of Steering Latent Representation
  for Large Language Model Unlearning*, AAAI 2025): the forget target at each position is
  β·‖h_ref^ℓ(x_f)‖·u, β = ``steering_coeff``, instead of a fixed c·u. A fixed c does not travel
  between models: 6.5 suits Zephyr-7B's layer 7, while SmolLM2-135M's layer-7 states have norms
  near 130, so c = 6.5 or 20 barely moves them. Costs one more frozen forward pass on the forget
  batch (to layer ℓ only).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, model_validator

from expunge.config import StrictModel, suggest
from expunge.data.formatting import IGNORE_INDEX
from expunge.erase.unlearn.common import FORGET, RETAIN
from expunge.errors import ConfigError
from expunge.lazy import lazy, no_grad
from expunge.models.lora import check_patterns
from expunge.train.objectives import Batch, StepContext
from expunge.train.reference import Reference

if TYPE_CHECKING:
    import torch
    from torch import nn
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    nn = lazy("torch.nn")
    torch = lazy("torch")

BLOCK_LIST = re.compile(r"^(?:.*\.)?(?:layers|h|blocks)\.(\d+)$")


class RMUSettings(StrictModel):
    layer: int | str = 7
    params: list[str] | None = None  # default: layers.{ℓ-2,ℓ-1,ℓ}.mlp.down_proj.weight
    steering_coeff: float = Field(default=6.5, gt=0)
    alpha: float = Field(default=1200.0, ge=0)
    control_seed: int = 0
    adaptive: bool = False  # target β·‖h_ref(x_f)‖·u per position, β = steering_coeff
    positions: Literal["labels", "tokens"] = "labels"  # which positions the two MSE terms average

    @model_validator(mode="after")
    def _params_for_named_layer(self) -> RMUSettings:
        if self.params is None and isinstance(self.layer, str):
            raise ValueError("with a layer given by name, set rmu.params (parameter patterns)")
        if self.params is not None and not self.params:
            raise ValueError("rmu.params is empty: name at least one parameter to train")
        # re: patterns compile with the config, not after the model has loaded
        named_layer = [self.layer] if isinstance(self.layer, str) else []
        check_patterns([*(self.params or []), *named_layer])
        return self

    def param_patterns(self) -> list[str]:
        if self.params is not None:
            return list(self.params)
        assert isinstance(self.layer, int)
        return [
            f"layers.{i}.mlp.down_proj.weight" for i in range(self.layer - 2, self.layer + 1)
            if i >= 0
        ]  # fmt: skip


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP / accelerate wrappers


def find_layer(model: nn.Module, layer: int | str) -> str:
    """The full module name of decoder block ``layer`` (index) or of the named module."""
    names = [name for name, _ in model.named_modules() if name]
    blocks = [n for n in names if BLOCK_LIST.match(n)]
    if isinstance(layer, int):
        indices = {int(BLOCK_LIST.match(n).group(1)): n for n in blocks}  # type: ignore[union-attr]
        if layer not in indices:
            where = (
                f"{type(model).__name__} has {len(indices)} decoder blocks (indices 0.."
                f"{len(indices) - 1})" if indices else
                f"found no decoder blocks (layers.N / h.N / blocks.N) in {type(model).__name__}; "
                "give the layer's module name instead"
            )  # fmt: skip
            raise ConfigError(f"rmu.layer={layer}: {where}")
        return indices[layer]
    if layer.startswith("re:"):
        regex = re.compile(layer[3:])
        hits = [n for n in names if regex.fullmatch(n)]
    else:
        hits = [n for n in names if n == layer or n.endswith("." + layer)]
    if len(hits) != 1:
        what = "matches no module" if not hits else f"matches {len(hits)} modules ({hits[:4]})"
        raise ConfigError(
            f"rmu.layer {layer!r} {what}{suggest(layer, blocks)}; decoder blocks: "
            f"{', '.join(blocks[:8])}{' ...' if len(blocks) > 8 else ''}"
        )
    return hits[0]


def select_parameters(model: nn.Module, patterns: list[str]) -> list[str]:
    """Parameter names matched by ``patterns``; a pattern matching nothing lists real names."""
    names = [name for name, _ in model.named_parameters()]
    chosen: list[str] = []
    for pattern in patterns:
        if pattern.startswith("re:"):
            regex = re.compile(pattern[3:])
            hits = [n for n in names if regex.fullmatch(n)]
        else:
            hits = [n for n in names if n == pattern or f".{pattern}." in f".{n}."]
        if not hits:
            first_block = [n for n in names if re.search(r"(?:layers|h|blocks)\.0\.", n)]
            other = [n for n in names if not re.search(r"(?:layers|h|blocks)\.\d+\.", n)]
            raise ConfigError(
                f"rmu.params pattern {pattern!r} matches no parameter of "
                f"{type(model).__name__}{suggest(pattern, names)}; its parameters are named "
                f"like: {', '.join(first_block + other)} (block 0 shown; blocks repeat per layer)"
            )
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


class _StopForward(Exception):
    """Raised by the hook once layer ℓ has run: nothing after it changes the loss."""


@contextmanager
def capture(module: nn.Module, stop: bool) -> Iterator[list[torch.Tensor]]:
    """Record ``module``'s output hidden states (B, T, H) during a forward pass."""
    seen: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: tuple, output: object) -> None:
        seen.append(output[0] if isinstance(output, tuple) else output)  # type: ignore[arg-type]
        if stop:
            raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield seen
    except _StopForward:
        pass  # the forward pass ended at the hook, as asked
    finally:
        handle.remove()


def masked_sq_error_sum(hidden: torch.Tensor, target: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Σ over the positions whose next token is a label of mean_hidden (h − target)²."""
    mask = (batch["labels"][:, 1:] != IGNORE_INDEX).to(hidden.dtype)
    per_position = (hidden[:, :-1].float() - target[:, :-1].float()).pow(2).mean(dim=-1)
    return (per_position * mask).sum()


def sequence_mean_sq_error_sum(
    hidden: torch.Tensor, target: torch.Tensor, batch: Batch
) -> torch.Tensor:
    """Σ over sequences of the mean over its non-pad positions of mean_hidden (h − target)²."""
    mask = batch["attention_mask"].to(torch.float32)
    per_position = (hidden.float() - target.float()).pow(2).mean(dim=-1)
    return ((per_position * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).sum()


class RMUObjective:
    Settings: ClassVar[type[StrictModel]] = RMUSettings
    streams: tuple[str, ...] = (FORGET, RETAIN)

    @staticmethod
    def needs_retain(settings: RMUSettings) -> bool:
        return True  # the retain term keeps the frozen copy's activations

    @staticmethod
    def trainable_parameters(settings: RMUSettings, model: nn.Module) -> list[str]:
        """RMU trains exactly the tensors ``params`` names, in full precision."""
        return select_parameters(model, settings.param_patterns())

    def __init__(self, model: nn.Module, settings: RMUSettings | None = None) -> None:
        self.settings = settings or RMUSettings()
        base = _unwrap(model)
        self.layer_name = find_layer(base, self.settings.layer)
        self.param_names = select_parameters(base, self.settings.param_patterns())
        generator = torch.Generator().manual_seed(self.settings.control_seed)
        u = torch.rand(_hidden_size(base), generator=generator)
        self.direction = u / u.norm()  # unit u, on the CPU
        self.control = self.direction * self.settings.steering_coeff  # c·u
        self.reference = Reference(model)

    def hidden(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        base = _unwrap(model)
        stop = model is base  # a DDP/FSDP wrapper expects whole forward passes
        with capture(base.get_submodule(self.layer_name), stop) as seen:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return seen[0]

    @no_grad
    def reference_hidden(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        base = _unwrap(model)
        runner = self.reference.frozen if self.reference.frozen is not None else base
        adapter_off = base.disable_adapter() if self.reference.frozen is None else nullcontext()
        with adapter_off, capture(runner.get_submodule(self.layer_name), stop=True) as seen:
            runner(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return seen[0]

    def mean_sq_error(
        self, stream: str, hidden: torch.Tensor, target: torch.Tensor, batch: Batch,
        ctx: StepContext,
    ) -> torch.Tensor:  # fmt: skip
        if self.settings.positions == "tokens":
            return ctx.mean_over_sequences(
                stream, sequence_mean_sq_error_sum(hidden, target, batch)
            )
        return ctx.mean_over_tokens(stream, masked_sq_error_sum(hidden, target, batch))

    def __call__(
        self, model: nn.Module, batches: dict[str, Batch], ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        forget_batch, retain_batch = batches[FORGET], batches[RETAIN]
        h_forget = self.hidden(model, forget_batch)
        if self.settings.adaptive:
            norms = self.reference_hidden(model, forget_batch).float().norm(dim=-1, keepdim=True)
            target = self.control.to(h_forget.device) * norms
        else:
            target = self.control.to(h_forget.device).expand_as(h_forget)
        forget = self.mean_sq_error(FORGET, h_forget, target, forget_batch, ctx)
        h_retain = self.hidden(model, retain_batch)
        h_ref = self.reference_hidden(model, retain_batch)
        retain = self.mean_sq_error(RETAIN, h_retain, h_ref, retain_batch, ctx)
        loss = forget + self.settings.alpha * retain
        return loss, {f"{FORGET}/rmu_mse": forget.detach(), f"{RETAIN}/rmu_mse": retain.detach()}


def _hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    for key in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise ConfigError(f"cannot read the hidden size of {type(model).__name__} from its config")
