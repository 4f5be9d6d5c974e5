"""The one place that decides device and dtype. Method code never calls ``.cuda()``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

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
