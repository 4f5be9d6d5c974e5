"""``ga`` — gradient ascent on the forget set.

Jang et al., *Knowledge Unlearning for Mitigating Privacy Risks in Language Models*, ACL 2023;
the baseline of every unlearning benchmark (TOFU, MUSE, WMDP)::

    L_GA(θ) = −E_{x∈D_f} [ −log π_θ(x) ] = −(mean NLL over the forget label tokens)

The NLL is averaged over every forget label token of the optimizer step; open-unlearning
(``src/trainer/unlearn/grad_ascent.py``: ``-outputs.loss``, HF's mean over the micro-batch's
label tokens) and TOFU's code average per micro-batch: the same for one micro-batch, whatever
the lengths. Unbounded below: GA diverges if run long enough, which is why GradDiff and NPO
exist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from expunge.config import StrictModel
from expunge.erase.unlearn.common import FORGET, mean_nll
from expunge.lazy import lazy
from expunge.train.objectives import Batch, StepContext

if TYPE_CHECKING:
    import torch
    from torch import nn
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    nn = lazy("torch.nn")
    torch = lazy("torch")


class GASettings(StrictModel):
    """Plain GA has no knobs; the section exists so every objective is configured alike."""


class GAObjective:
    Settings: ClassVar[type[StrictModel]] = GASettings
    streams: tuple[str, ...] = (FORGET,)

    def __init__(self, model: nn.Module | None = None, settings: GASettings | None = None) -> None:
        self.settings = settings or GASettings()

    def __call__(
        self, model: nn.Module, batches: dict[str, Batch], ctx: StepContext
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        forget = mean_nll(model, batches[FORGET], ctx, FORGET)
        return -forget, {f"{FORGET}/nll": forget.detach()}
