"""``quantize``: does the imprint survive (or reappear under) the quantization users deploy with?

Erasure can be a small weight change; rounding the weights may undo it (or erase a fragile
imprint). Each method starts from a fresh copy of the given weights and is audited; the curve's
x is the method, from full precision (``none``) down:

- ``int8_dynamic``: PyTorch dynamic quantization of every ``nn.Linear`` (int8 weights, int8
  activations quantized on the fly per batch) — real int8 kernels, CPU only;
- ``rtn8`` / ``rtn4``: weight-only round-to-nearest, symmetric, per group of ``group_size``
  input columns: ``s = max|w_g| / (2^(b-1) - 1)``, ``w' = s · clamp(round(w / s), -2^(b-1),
  2^(b-1) - 1)`` (what GGUF ``Q8_0``/``Q4_0`` do to the weights, simulated in float); every
  linear layer but the output head, as llama.cpp keeps the head at higher precision;
- ``bnb4``: bitsandbytes NF4 (``load_in_4bit``, compute in bfloat16), reloaded from the model
  directory — only where CUDA and bitsandbytes exist; elsewhere the point is skipped and the
  reason recorded.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from expunge.lazy import lazy
from expunge.models.loading import LoadedModel
from expunge.stage import StageContext
from expunge.stress.base import StressConfig

if TYPE_CHECKING:
    import torch
    from torch import nn
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    nn = lazy("torch.nn")
    torch = lazy("torch")

Method = Literal["int8_dynamic", "rtn8", "rtn4", "bnb4"]
BITS = {"none": 32, "int8_dynamic": 8, "rtn8": 8, "rtn4": 4, "bnb4": 4}


class Quantize(StressConfig):
    stressor: Literal["quantize"] = "quantize"
    methods: list[Method] = Field(default_factory=lambda: ["int8_dynamic", "rtn8", "rtn4", "bnb4"])
    group_size: int = Field(default=32, ge=1)  # rtn: input columns sharing one scale
    baseline: bool = True  # audit the unquantized model first (x = none)

    X_AXIS: ClassVar[str] = "quantization"

    def execute(self, ctx: StageContext) -> None:
        loaded, curve = ctx.model, self.curve(ctx)
        if self.baseline:
            curve.audit("none", "none", loaded, extra={"bits": 32})
        for method in self.methods:
            reason = unavailable(method, loaded)
            if reason is not None:
                curve.skip(method, method, reason)
                continue
            quantized = quantized_copy(loaded, method, self.group_size)
            curve.audit(method, method, quantized, extra={"bits": BITS[method]})
            del quantized
        ctx.model = loaded


def unavailable(method: str, loaded: LoadedModel) -> str | None:
    """Why ``method`` cannot run here, or None."""
    if method == "int8_dynamic" and "qnnpack" not in torch.backends.quantized.supported_engines \
            and "fbgemm" not in torch.backends.quantized.supported_engines:  # fmt: skip
        return "this PyTorch build has no quantized CPU engine (fbgemm/qnnpack)"
    if method == "bnb4":
        if not torch.cuda.is_available():
            return "bitsandbytes 4-bit needs a CUDA device; none here"
        if importlib.util.find_spec("bitsandbytes") is None:
            return "bitsandbytes is not installed (pip install bitsandbytes)"
        if not (Path(loaded.path) / "config.json").is_file():
            return "bnb4 reloads the model from its directory; this model has none"
    return None


def quantized_copy(loaded: LoadedModel, method: str, group_size: int = 32) -> LoadedModel:
    """A quantized copy of ``loaded`` (the original is left untouched)."""
    if method == "bnb4":
        return _load_bnb4(loaded)
    model = copy.deepcopy(loaded.model)
    if method == "int8_dynamic":
        model = model.to("cpu", torch.float32)
        with warnings.catch_warnings():  # torch marks its quantized dtypes as moving to torchao
            warnings.simplefilter("ignore", UserWarning)
            model = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
        return dataclasses.replace(loaded, model=model, device=torch.device("cpu"),
                                   dtype=torch.float32)  # fmt: skip
    bits = {"rtn8": 8, "rtn4": 4}[method]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module is not head:
                module.weight.copy_(rtn_quantize(module.weight, bits, group_size))
    return dataclasses.replace(loaded, model=model)


def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Symmetric round-to-nearest per group of ``group_size`` input columns, dequantized.

    ``s = max|w_g| / (2^(b-1) - 1)``; ``w' = s · clamp(round(w / s), -2^(b-1), 2^(b-1) - 1)``.
    A group of zeros stays zero. The last group may be shorter.
    """
    if bits < 2:
        raise ValueError(f"bits must be >= 2, got {bits}")
    qmax = 2 ** (bits - 1) - 1
    out_features, in_features = weight.shape
    w = weight.detach().to(torch.float32)
    pad = (-in_features) % group_size
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    groups = w.view(out_features, -1, group_size)
    scale = groups.abs().amax(dim=-1, keepdim=True) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(groups / safe), -qmax - 1, qmax)
    restored = (q * scale).view(out_features, -1)[:, :in_features]
    return restored.to(weight.dtype)


def _load_bnb4(loaded: LoadedModel) -> LoadedModel:  # pragma: no cover - needs CUDA
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from expunge.models.loading import sync_special_tokens

    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    )
    model = AutoModelForCausalLM.from_pretrained(
        loaded.path, quantization_config=config, use_safetensors=True, device_map={"": 0}
    )
    sync_special_tokens(model, loaded.tokenizer)
    model.eval()
    return dataclasses.replace(loaded, model=model, device=torch.device("cuda", 0),
                               dtype=torch.bfloat16)  # fmt: skip
