"""Reference-model outputs without a second copy when possible.

With LoRA, the frozen reference is the same model with its adapter switched off
(``disable_adapter``); with full fine-tuning, a frozen copy is kept (on the same device).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from expunge.lazy import lazy, no_grad

if TYPE_CHECKING:
    import torch
    from torch import nn
peft = lazy("peft")  # loaded when first used (expunge.lazy)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP / accelerate wrappers


class Reference:
    """Call ``reference(model, batch)`` for the frozen model's logits on ``batch``."""

    def __init__(self, model: nn.Module) -> None:
        base = _unwrap(model)
        self.uses_adapter = isinstance(base, peft.PeftModel)
        self.frozen: nn.Module | None = None
        if not self.uses_adapter:
            self.frozen = copy.deepcopy(base).eval()
            for param in self.frozen.parameters():
                param.requires_grad_(False)

    @no_grad
    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if self.frozen is not None:
            return self.frozen(**inputs).logits
        base = _unwrap(model)
        with base.disable_adapter():
            return base(**inputs).logits
