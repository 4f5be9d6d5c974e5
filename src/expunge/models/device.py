"""The one place that decides device and dtype. Method code never calls ``.cuda()``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

from expunge.errors import ConfigError
from expunge.lazy import lazy

if TYPE_CHECKING:
    import torch
else:
    torch = lazy("torch")  # loaded when a device is picked (expunge.lazy)

# dtype names by what users write; torch's dtype objects are looked up when one is picked
DTYPES = {
    "float32": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16",
}  # fmt: skip


def pick_device(device: str = "auto") -> torch.device:
    """The device this process works on.

    ``auto`` is a GPU when there is one (under ``accelerate launch``, the process's own:
    ``LOCAL_RANK``), else the CPU. A CUDA device asked for where there is none is an error,
    never a silent fall-back to the CPU.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {device!r}: {err}") from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"model.device={device} but no CUDA device is available here; "
                "use model.device=cpu (or auto)"
            )
        if chosen.index is None:
            chosen = torch.device("cuda", local_rank)
    return chosen


def pick_dtype(dtype: str = "auto", device: torch.device | None = None) -> torch.dtype:
    """bf16 on a GPU that supports it, fp32 elsewhere (CPU bf16 training is slow and lossy)."""
    if dtype == "auto":
        device = device or pick_device()
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[dtype])


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


Precision = Literal["auto", "fp32", "bf16"]
# x86 (AVX512-BF16, AMX) and Arm (BF16 extension) flags of torch.cpu.get_capabilities()
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def cpu_has_native_bf16() -> bool:
    """Does this CPU multiply bf16 in hardware? (Without it, bf16 matmuls are emulated: slower.)"""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        try:
            found = capabilities()
        except RuntimeError:
            found = {}
        return any(bool(found.get(flag)) for flag in _CPU_BF16_FLAGS)
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe()) if probe is not None else False


def resolve_precision(precision: str, device: torch.device) -> Literal["fp32", "bf16"]:
    """The compute precision a run uses: ``auto`` is bf16 autocast where the hardware has bf16
    arithmetic (a CPU with AVX512-BF16/AMX/Arm BF16, a GPU that supports it), fp32 elsewhere.

    ``bf16`` is honoured on any device (on a CPU without bf16 arithmetic it is emulated: slow).
    """
    if precision in ("fp32", "bf16"):
        return precision  # type: ignore[return-value]
    if precision != "auto":
        raise ConfigError(f"unknown precision {precision!r}; use auto, fp32 or bf16")
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32"


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """bf16 autocast for ``precision`` (resolved) on ``device``; nothing for fp32.

    Weights stay as loaded (fp32 on a CPU): matmuls run in bf16, reductions and losses in fp32
    (the objectives take log-softmax in at least fp32).
    """
    if resolve_precision(precision, device) == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield
