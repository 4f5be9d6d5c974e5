"""LoRA through peft: attach by name pattern, merge, save, load.

Targets are given as patterns and resolved against the model's own linear layers first, so a
pattern that matches nothing fails with the list of names that exist instead of a peft error
deep in a run. A pattern is a module name suffix (``q_proj``, ``mlp.down_proj``), a regular
expression matched against the full module name (``re:layers\\.[5-7]\\.mlp\\.down_proj``), or
``all-linear`` (every linear layer except the output head).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from expunge.config import StrictModel, suggest
from expunge.errors import ConfigError, ModelError
from expunge.lazy import lazy, no_grad

if TYPE_CHECKING:
    import peft
    import torch
    from peft import PeftModel
    from torch import nn
    from transformers import PreTrainedModel
else:  # loaded when a model is adapted (expunge.lazy): settings classes here stay light
    torch, nn, peft = lazy("torch"), lazy("torch.nn"), lazy("peft")
pytorch_utils = lazy("transformers.pytorch_utils")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression of a ``re:REGEX`` name pattern; a ``ValueError`` naming the
    pattern if it does not compile (a config validator turns it into a one-line error)."""
    try:
        return re.compile(pattern[3:])
    except re.error as err:
        raise ValueError(f"{pattern!r} is not a valid regular expression ({err})") from None


def check_patterns(patterns: list[str] | None) -> list[str] | None:
    """``patterns`` unchanged once every ``re:`` one compiles: a typo in a regex fails with the
    config, not after the model has loaded and the run has started writing."""
    for pattern in patterns or []:
        if pattern.startswith("re:"):
            compile_pattern(pattern)
    return patterns


class LoraSettings(StrictModel):
    # checked here, with the config, not by peft after the model has loaded
    r: int = Field(default=8, ge=1)  # the adapter's rank
    alpha: float = Field(default=16.0, gt=0)  # scaling: the update is multiplied by alpha / r
    dropout: float = Field(default=0.05, ge=0, lt=1)
    # module name suffixes, re:REGEX or all-linear (resolved against the model's linear layers)
    targets: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)
    bias: Literal["none", "all", "lora_only"] = "none"

    _check_targets = field_validator("targets")(check_patterns)


def linear_module_names(model: nn.Module) -> list[str]:
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, pytorch_utils.Conv1D)) and name
    ]


def _output_head_names(model: nn.Module) -> set[str]:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {name for name, module in model.named_modules() if module is head}


def match_modules(model: nn.Module, patterns: list[str], kind: str = "LoRA target") -> list[str]:
    """Full names of the linear modules matched by ``patterns``; error if one matches nothing."""
    names = linear_module_names(model)
    heads = _output_head_names(model)
    matched: list[str] = []
    for pattern in patterns:
        if pattern == "all-linear":
            hits = [n for n in names if n not in heads]
        elif pattern.startswith("re:"):
            try:  # settings built without validation (model_construct) reach here unchecked
                regex = compile_pattern(pattern)
            except ValueError as err:
                raise ConfigError(f"{kind} {err}") from None
            hits = [n for n in names if regex.fullmatch(n)]
        else:
            hits = [n for n in names if n == pattern or n.endswith("." + pattern)]
        if not hits:
            short = sorted({n.rsplit(".", 1)[-1] for n in names})
            raise ModelError(
                f"{kind} {pattern!r} matches no linear layer of {type(model).__name__}"
                f"{suggest(pattern, short)}; its linear layers are named: {', '.join(short)}"
            )
        matched.extend(h for h in hits if h not in matched)
    return matched


def attach_lora(model: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    targets = match_modules(model, settings.targets)
    fan_in_fan_out = any(isinstance(model.get_submodule(t), pytorch_utils.Conv1D) for t in targets)
    config = peft.LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias=settings.bias,
        fan_in_fan_out=fan_in_fan_out,
        # an encoder classifier's head is new or task-specific: SEQ_CLS trains it beside the
        # adapters (peft's modules_to_save) and merges it back; CAUSAL_LM wrapped such a model in
        # a generation wrapper that failed on it (no prepare_inputs_for_generation)
        task_type="SEQ_CLS" if type(model).__name__.endswith("ForSequenceClassification")
        else "CAUSAL_LM",
    )  # fmt: skip
    return peft.get_peft_model(model, config)


def merge_lora(model: nn.Module) -> PreTrainedModel:
    """Fold the adapter into the base weights and return the plain model."""
    if isinstance(model, peft.PeftModel):
        return model.merge_and_unload()
    return model  # type: ignore[return-value]


def scale_lora(model: nn.Module, factor: float) -> None:
    """Multiply every LoRA layer's scaling (α/r) by ``factor``, so that merging adds ``factor``
    times the adapter's update (a negative factor takes it back out)."""
    for module in model.modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict):
            for adapter in scaling:
                scaling[adapter] *= factor


def save_adapter(model: PeftModel, path: str | Path) -> None:
    model.save_pretrained(path, safe_serialization=True)


def _adapter_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import SafetensorError, safe_open

    shapes = {}
    weights = path / "adapter_model.safetensors"
    try:
        with safe_open(str(weights), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    except SafetensorError as err:  # a cut copy or a download that stopped
        raise ModelError(f"{weights}: not a readable safetensors file ({err})") from None
    return shapes


def load_adapter(model: PreTrainedModel, path: str | Path, trainable: bool = False) -> PeftModel:
    """Load a saved adapter onto ``model``; a shape mismatch names both shapes."""
    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise ModelError(f"{path} is not a LoRA adapter directory (no adapter_config.json)")
    if not (path / "adapter_model.safetensors").is_file():
        raise ModelError(f"{path} has no adapter_model.safetensors (only safetensors is loaded)")
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"{path / 'adapter_config.json'}: not valid JSON ({err})") from None
    check_adapter_fits(model, path, config)
    return peft.PeftModel.from_pretrained(model, str(path), is_trainable=trainable)


def check_adapter_fits(model: PreTrainedModel, path: Path, config: dict) -> None:
    """Compare every LoRA A/B matrix with the layer it will sit on before peft does."""
    modules = dict(model.named_modules())
    for key, shape in _adapter_shapes(path).items():
        # base_model.model.<module>.lora_A.weight
        match = re.match(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$", key)
        if not match:
            continue
        module_name, which = match.groups()
        module = modules.get(module_name)
        if module is None:
            raise ModelError(
                f"adapter {path} was trained on a model with a layer {module_name!r}, "
                f"which {type(model).__name__} does not have"
            )
        weight = module.weight
        out_features, in_features = (
            (weight.shape[1], weight.shape[0])
            if isinstance(module, pytorch_utils.Conv1D)
            else weight.shape
        )
        expected = (
            (config.get("r", shape[0]), in_features)
            if which == "A"
            else (out_features, config.get("r", shape[1]))
        )
        if tuple(shape) != tuple(expected):
            raise ModelError(
                f"adapter {path} does not fit this model: its {module_name}.lora_{which} has shape "
                f"{tuple(shape)} but the model's layer {module_name} ({out_features}x{in_features}) "
                f"needs {tuple(expected)} — the adapter was trained on a model of another shape"
            )


def trainable_parameter_count(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


@no_grad
def state_fingerprint(model: nn.Module) -> dict[str, float]:
    """A cheap per-tensor checksum, for tests that check which parameters changed."""
    return {name: float(p.detach().double().sum()) for name, p in model.named_parameters()}


@functools.cache
def _outside_subspace() -> type:
    """The parametrization class, made on first use (it subclasses torch's Module)."""

    class OutsideSubspace(nn.Module):
        """Parametrization W ↦ (I − QQᵀ)W: the weight's columns never enter span(Q)."""

        def __init__(self, basis: torch.Tensor) -> None:
            super().__init__()
            self.register_buffer("basis", basis)

        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            # in fp32: a bf16 projection would let ~1% of the update back into the span
            full = weight.float()
            return (full - self.basis @ (self.basis.T @ full)).to(weight.dtype)

    return OutsideSubspace


def adapter_output_bases(path: str | Path) -> dict[str, torch.Tensor]:
    """Orthonormal basis of each layer's LoRA output space, span(B), from a saved adapter.

    Layers whose B is zero (the adapter never moved them) have no span and are left out.
    """
    from safetensors.torch import load_file

    bases = {}
    for key, tensor in load_file(str(Path(path) / "adapter_model.safetensors")).items():
        match = re.match(r"^base_model\.model\.(.+)\.lora_B\.weight$", key)
        if not match:
            continue
        # SVD, not QR: a rank-deficient B must not forbid directions it never used
        left, singular, _ = torch.linalg.svd(tensor.double(), full_matrices=False)
        tolerance = singular.max() * max(tensor.shape) * torch.finfo(torch.float32).eps
        rank = int((singular > tolerance).sum())
        if rank:
            bases[match.group(1)] = left[:, :rank].float()
    return bases


def constrain_outside(model: PeftModel, bases: dict[str, torch.Tensor]) -> list[str]:
    """Keep each new LoRA update's output directions orthogonal to ``bases`` while it trains.

    The update B·A then has no component in span(B_other) of the same layer, so it cannot
    cancel an adapter merged earlier (whose change lies in that span). A parametrization, not a
    gradient projection: Adam's per-element scaling would leak a projected gradient back into
    the subspace. Returns the constrained layer names; ``release_constraints`` removes them.
    """
    from torch.nn.utils import parametrize

    constrained = []
    for name, module in model.base_model.model.named_modules():
        basis = bases.get(name)
        lora_b = getattr(module, "lora_B", None)
        if basis is None or not isinstance(lora_b, nn.ModuleDict):
            continue
        for linear in lora_b.values():
            if linear.weight.shape[0] != basis.shape[0]:
                raise ModelError(
                    f"cannot constrain {name}: its LoRA output size {linear.weight.shape[0]} "
                    f"differs from the reference adapter's {basis.shape[0]}"
                )
            projector = _outside_subspace()(basis.to(linear.weight.device, torch.float32))
            parametrize.register_parametrization(linear, "weight", projector)
        constrained.append(name)
    return constrained


def release_constraints(model: nn.Module) -> None:
    """Bake parametrized LoRA weights into plain parameters (before saving or merging)."""
    from torch.nn.utils import parametrize

    for module in model.modules():
        if parametrize.is_parametrized(module, "weight") and any(
            isinstance(p, _outside_subspace()) for p in module.parametrizations["weight"]
        ):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
