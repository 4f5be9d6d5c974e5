"""FSDP on CPU processes: torch's ``fully_shard`` (FSDP2) applied by the loop itself.

accelerate runs CPU processes as plain multi-CPU data parallel whatever its config says: its
FSDP plugin is used only with GPUs and other accelerators. A launch that asks for FSDP
(``ACCELERATE_USE_FSDP=true``, as ``accelerate launch --config_file
configs/accelerate/cpu_fsdp_2proc.yaml`` sets) on CPU processes is therefore sharded here: one
FSDP unit per transformer block (the model's ``_no_split_modules``, or the launch's
``fsdp_transformer_layer_cls_to_wrap``) and one for the rest, over the gloo process group
accelerate opened. Gradients are reduce-scattered (averaged, as DDP does, so the loop's
token-normalized loss means the same), AdamW steps on the shards, checkpoints are written with
``torch.distributed.checkpoint`` (one shard per process), and the end of the run gathers the
full state on the main process, as FULL_STATE_DICT does under accelerate's FSDP.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expunge.errors import ConfigError
from expunge.lazy import lazy

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from torch import nn
else:  # loaded when training starts (expunge.lazy)
    torch, nn = lazy("torch"), lazy("torch.nn")

SHARDED_DIR = "sharded"  # inside a checkpoint: torch.distributed.checkpoint's files
RNG_FILE = "rng_state_{rank}.pt"  # each process's torch generator (dropout masks)


def requested(accelerator: Accelerator) -> bool:
    """The launch asks for FSDP but accelerate runs these processes as multi-CPU data parallel."""
    from accelerate.utils import DistributedType

    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    return asked and accelerator.distributed_type == DistributedType.MULTI_CPU


def _reshard_after_forward() -> bool:
    """FULL_SHARD (FSDP1's name) or ``fsdp_reshard_after_forward`` (FSDP2's): True frees the
    gathered parameters after each block's forward; SHARD_GRAD_OP keeps them until backward."""
    if os.environ.get("FSDP_VERSION", "1") == "2":
        return os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true"
    strategy = os.environ.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper()
    by_name = {"FULL_SHARD": True, "1": True, "SHARD_GRAD_OP": False, "2": False}
    if strategy not in by_name:
        raise ConfigError(
            f"fsdp_sharding_strategy {strategy} is not supported on CPU processes: use "
            "FULL_SHARD or SHARD_GRAD_OP (NO_SHARD is configs/accelerate/cpu_2proc.yaml)"
        )
    return by_name[strategy]


def _block_classes(model: nn.Module) -> set[str]:
    policy = os.environ.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
    if policy == "NO_WRAP":
        return set()
    if policy != "TRANSFORMER_BASED_WRAP":
        raise ConfigError(f"fsdp_auto_wrap_policy {policy} is not supported on CPU processes: "
                          "use TRANSFORMER_BASED_WRAP or NO_WRAP")  # fmt: skip
    named = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    classes = {c.strip() for c in named.split(",") if c.strip()}
    classes = classes or set(getattr(model, "_no_split_modules", None) or ())
    present = {type(m).__name__ for m in model.modules()}
    if not classes & present:
        raise ConfigError(
            f"no transformer block to shard: {sorted(classes) or 'the model names none'} not in "
            "the model; set fsdp_transformer_layer_cls_to_wrap (e.g. LlamaDecoderLayer)"
        )
    return classes


def shard(model: nn.Module) -> nn.Module:
    """``fully_shard`` each transformer block, then the root; the same module, now sharded."""
    from torch.distributed.fsdp import fully_shard

    if os.environ.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true":
        raise ConfigError("fsdp_offload_params asks to move parameters to the CPU; on CPU "
                          "processes they are there already: set it to false")  # fmt: skip
    reshard = _reshard_after_forward()
    classes = _block_classes(model)
    for module in [m for m in model.modules() if type(m).__name__ in classes]:
        fully_shard(module, reshard_after_forward=reshard)
    fully_shard(model, reshard_after_forward=reshard)
    return model


def clip_grad_norm_(model: nn.Module, max_norm: float) -> torch.Tensor:
    """The global gradient norm over every shard (clipped to ``max_norm``), as one tensor."""
    from torch.distributed.tensor import DTensor

    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type=2.0)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def full_state_dict(model: nn.Module) -> dict[str, Any]:
    """Whole tensors on the main process (an empty dict on the others); every process calls."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def save(model: nn.Module, optimizer: Any, target: Path, rank: int) -> None:
    """Model and optimizer shards (``torch.distributed.checkpoint``) and this process's RNG."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(target / SHARDED_DIR))
    torch.save(torch.get_rng_state(), target / RNG_FILE.format(rank=rank))


def load(model: nn.Module, optimizer: Any, source: Path, rank: int) -> None:
    """What ``save`` wrote, back into the sharded model and its optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not (source / SHARDED_DIR).is_dir():
        raise ConfigError(f"{source} was not written by a CPU FSDP run: resume it with the "
                          "launch that wrote it")  # fmt: skip
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(source / SHARDED_DIR))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])  # fmt: skip
    # our own file, written by this process: a tensor, nothing else to unpickle
    torch.set_rng_state(torch.load(source / RNG_FILE.format(rank=rank), weights_only=True))
