"""Fine-pruning (Liu, Dolan-Gavitt & Garg, "Fine-Pruning: Defending Against Backdooring
Attacks on Deep Neural Networks", RAID 2018), as the Fine-mixing paper's baseline.

Backdoor behaviour tends to live in neurons that stay dormant on clean inputs. Run the clean
set through the model, take each MLP hidden neuron's mean |activation| (the input of the MLP's
down projection: ``mlp.down_proj`` in Llama/Qwen2, ``mlp.c_proj`` in GPT-2, the layer's
``output.dense`` in BERT), prune the
``ratio`` least active neurons of each layer — their down-projection weights are zeroed and
their activation is masked during the clean fine-tuning that follows, so they stay pruned —
then fine-tune on the clean set. Liu et al. prune the last convolutional layer until clean
accuracy drops; we prune a fixed share in every MLP layer (``layers`` = the last N only),
a choice of ours, recorded with the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, PrivateAttr

from expunge.data.collator import collate
from expunge.data.formatting import TokenizedExample
from expunge.erase.backdoor.clean_tuning import BackdoorEraser
from expunge.errors import ConfigError
from expunge.lazy import lazy, no_grad
from expunge.models.loading import LoadedModel
from expunge.records import RunRecord

if TYPE_CHECKING:
    import torch
    from torch import nn
else:  # loaded when first used, not when a config is checked (expunge.lazy)
    nn = lazy("torch.nn")
    torch = lazy("torch")
pytorch_utils = lazy("transformers.pytorch_utils")

DOWN_PROJECTIONS = ("mlp.down_proj", "mlp.c_proj", "output.dense")  # Llama/Qwen2, GPT-2, BERT


def _is_down_projection(name: str) -> bool:
    # BERT's attention block has an ``attention.output.dense`` too; only the MLP's counts.
    return name.endswith(DOWN_PROJECTIONS) and not name.endswith("attention.output.dense")


def down_projections(model: nn.Module, last: int | None = None) -> list[nn.Module]:
    """The MLP down projections in layer order (the last ``last`` if given).

    Matched by name, so a LoRA wrapper around the projection is found in its place.
    """
    found = [module for name, module in model.named_modules() if _is_down_projection(name)]
    if not found:
        raise ConfigError(
            f"fine_pruning found no MLP down projection ({', '.join(DOWN_PROJECTIONS)}) in "
            f"this {type(model).__name__}"
        )
    return found[-last:] if last else found


@no_grad
def mean_activations(
    model: nn.Module, modules: list[nn.Module], clean: list[TokenizedExample],
    pad_token_id: int, batch_size: int = 8,
) -> list[torch.Tensor]:  # fmt: skip
    """Mean |input| of each module per hidden neuron over the clean set's real tokens."""
    sums: list[torch.Tensor | None] = [None] * len(modules)
    tokens = 0
    mask_holder: dict[str, torch.Tensor] = {}

    def hook_for(index: int):
        def hook(_module, args):
            active = args[0].abs() * mask_holder["mask"].unsqueeze(-1)
            total = active.sum(dim=(0, 1)).double().cpu()
            previous = sums[index]
            sums[index] = total if previous is None else previous + total

        return hook

    handles = [m.register_forward_pre_hook(hook_for(i)) for i, m in enumerate(modules)]
    device = next(model.parameters()).device
    try:
        for start in range(0, len(clean), batch_size):
            batch = collate(clean[start : start + batch_size], pad_token_id)
            mask = batch["attention_mask"].to(device)
            mask_holder["mask"] = mask.to(next(model.parameters()).dtype)
            model(input_ids=batch["input_ids"].to(device), attention_mask=mask)
            tokens += int(mask.sum())
    finally:
        for handle in handles:
            handle.remove()
    return [total / max(tokens, 1) for total in sums]  # type: ignore[operator]


def prune_dormant(modules: list[nn.Module], activity: list[torch.Tensor],
                  ratio: float) -> list[torch.Tensor]:  # fmt: skip
    """Zero the down-projection weights of the ``ratio`` least active neurons per layer.

    Returns each layer's keep mask over its hidden neurons (True = kept).
    """
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"fine_pruning ratio must be in [0, 1), got {ratio}")
    masks = []
    for module, values in zip(modules, activity, strict=True):
        keep = torch.ones(values.numel(), dtype=torch.bool)
        keep[torch.topk(values, round(ratio * values.numel()), largest=False).indices] = False
        zero_columns(module, ~keep)
        masks.append(keep)
    return masks


def zero_columns(module: nn.Module, dropped: torch.Tensor) -> None:
    """Zero the weights that read the dropped hidden neurons (Conv1D stores them transposed)."""
    with torch.no_grad():
        dropped = dropped.to(module.weight.device)
        if isinstance(module, pytorch_utils.Conv1D):
            module.weight[dropped, :] = 0
        else:
            module.weight[:, dropped] = 0


def mask_inputs(module: nn.Module, keep: torch.Tensor) -> Any:
    """A forward pre-hook that zeroes the pruned neurons' activations (keeps them pruned)."""

    def hook(_module, args):
        return (args[0] * keep.to(args[0].device, args[0].dtype), *args[1:])

    return module.register_forward_pre_hook(hook)


class FinePruning(BackdoorEraser):
    method: Literal["fine_pruning"] = "fine_pruning"
    ratio: float = Field(default=0.3, ge=0.0, lt=1.0)  # share of MLP neurons pruned per layer
    layers: int | None = Field(default=None, ge=1)  # prune the last N MLP layers (default: all)
    EDIT_STAGE: ClassVar[str | None] = "pruned"
    _keep: list[Any] = PrivateAttr(default_factory=list)  # torch masks, one per module

    def edit(self, loaded: LoadedModel, reference: nn.Module | None,
             clean: list[TokenizedExample], record: RunRecord) -> None:  # fmt: skip
        modules = down_projections(loaded.model, self.layers)
        activity = mean_activations(loaded.model, modules, clean, loaded.tokenizer.pad_token_id)
        self._keep = prune_dormant(modules, activity, self.ratio)
        record.metrics["prune/layers"] = len(modules)
        record.metrics["prune/neurons"] = sum(int((~keep).sum()) for keep in self._keep)

    def training_hooks(self, model: nn.Module) -> list[Any]:
        # On the modules training sees (a LoRA wrapper when LoRA is attached): pruned neurons
        # then reach neither the base weights nor the adapter.
        modules = down_projections(model, self.layers)
        return [mask_inputs(m, keep) for m, keep in zip(modules, self._keep, strict=True)]

    def after_finetune(self, loaded: LoadedModel) -> None:
        # The activations were masked, so this changes nothing the model computes; it makes the
        # saved weights say so (a merged adapter may have written into the pruned columns).
        for module, keep in zip(
            down_projections(loaded.model, self.layers), self._keep, strict=True
        ):
            zero_columns(module, ~keep)
