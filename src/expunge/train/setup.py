"""What the loop sets up before its first step: the trainable parameters (LoRA or full), the
streams it checks, the optimizer and schedule, the reference cache, the tracker, and the
distributed back-end's settings (DeepSpeed told our batch sizes)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from expunge.data.formatting import IGNORE_INDEX, TokenizedExample
from expunge.errors import ConfigError, DataError
from expunge.lazy import lazy
from expunge.models.lora import attach_lora, compile_pattern, match_modules
from expunge.train.objectives import Objective
from expunge.train.reference import ReferenceCache
from expunge.train.settings import TrainSettings

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator
    from torch import nn
else:  # loaded when training starts (expunge.lazy)
    torch, nn = lazy("torch"), lazy("torch.nn")
accelerate, transformers = lazy("accelerate"), lazy("transformers")

TRACKING_RUN = "tracking"  # TensorBoard events go to OUT_DIR/tracking/


def prepare_trainable(model: nn.Module, settings: TrainSettings) -> nn.Module:
    """Attach LoRA, or choose which full-weight parameters train (by name pattern).

    LoRA's random initialisation is drawn under ``settings.seed``: the same settings give the
    same adapter whatever ran before in the process (an audit, a generation, a cache miss).
    """
    if settings.mode == "lora":
        torch.manual_seed(settings.seed)
        model = attach_lora(model, settings.lora)
    elif settings.trainable:
        names = _match_parameters(model, settings.trainable)
        for name, param in model.named_parameters():
            param.requires_grad_(name in names)
    else:
        for param in model.parameters():
            param.requires_grad_(True)
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    return model


def _match_parameters(model: nn.Module, patterns: list[str]) -> set[str]:
    names = [n for n, _ in model.named_parameters()]
    chosen: set[str] = set()
    for pattern in patterns:
        if pattern.startswith("re:"):
            try:  # TrainSettings checks its patterns; settings built without validation don't
                regex = compile_pattern(pattern)
            except ValueError as err:
                raise ConfigError(f"trainable pattern {err}") from None
            hits = {n for n in names if regex.fullmatch(n)}
        else:
            hits = {n for n in names if n == pattern or f".{pattern}." in f".{n}"}
        if not hits:
            # Fall back to module patterns so 'mlp.down_proj' style names work too.
            modules = match_modules(model, [pattern], kind="trainable pattern")
            hits = {n for n in names if any(n.startswith(m + ".") for m in modules)}
        chosen |= hits
    return chosen


def check_streams(
    streams: dict[str, list[TokenizedExample]], objective: Objective,
    primary_stream: str | None, accelerator: Accelerator,
) -> str:  # fmt: skip
    """The primary stream (the one epochs count), once the objective's streams are all there."""
    missing = [s for s in objective.streams if s not in streams]
    if missing:
        raise ConfigError(f"the objective needs data streams {missing}; given {sorted(streams)}")
    for name in objective.streams:
        if not streams[name]:
            raise DataError(f"data stream {name!r} is empty")
    primary = primary_stream or objective.streams[0]
    if primary not in objective.streams:
        raise ConfigError(
            f"primary stream {primary!r} is not one the objective uses: {list(objective.streams)}"
        )
    if accelerator.gradient_accumulation_steps != 1:
        # accelerator.backward would divide every loss again; the objective already normalizes
        # over the whole step (see StepContext), so accumulation belongs to settings.grad_accum.
        raise ConfigError(
            "pass an Accelerator with gradient_accumulation_steps=1; set train.grad_accum instead"
        )
    return primary


def build_optimizer(model: nn.Module, settings: TrainSettings, total_steps: int) -> tuple[Any, Any]:
    """AdamW over the trainable parameters and the schedule (warmup, then ``schedule``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("no trainable parameters: check train.mode / train.trainable")
    optimizer = torch.optim.AdamW(
        params, lr=settings.lr, betas=settings.adam_betas, eps=settings.adam_eps,
        weight_decay=settings.weight_decay,
    )  # fmt: skip
    warmup = settings.warmup_steps or int(settings.warmup_ratio * total_steps)
    constant = warmup > 0 and settings.schedule == "constant"
    scheduler = transformers.get_scheduler(
        "constant_with_warmup" if constant else settings.schedule, optimizer,
        num_warmup_steps=warmup, num_training_steps=total_steps,
    )  # fmt: skip
    return optimizer, scheduler


def reference_cache_for(
    settings: TrainSettings, streams: dict[str, list[TokenizedExample]], names: tuple[str, ...],
    model: nn.Module,
) -> ReferenceCache | None:  # fmt: skip
    """The run's reference cache for ``train.reference_cache`` (None: exact, no cache).

    ``auto`` keeps whole distributions when every label position of the run's streams (an upper
    bound on what a KL term can ask for) fits in ``reference_cache_mib`` as fp32, else top-k.
    """
    mode = settings.reference_cache
    if mode == "off":
        return None
    if mode == "auto":
        positions = sum(
            sum(1 for label in e.labels[1:] if label != IGNORE_INDEX)
            for name in names for e in streams[name]
        )  # fmt: skip
        vocab = _vocab_size(model)
        fits = vocab is not None and positions * vocab * 4 <= settings.reference_cache_mib * 2**20
        mode = "full" if fits else "topk"
    return ReferenceCache(mode, settings.reference_top_k)  # type: ignore[arg-type]


def _vocab_size(model: nn.Module) -> int | None:
    config = getattr(getattr(model, "module", model), "config", None)
    return getattr(config, "vocab_size", None)


def start_tracker(settings: TrainSettings, out_dir: Path | None) -> Any:
    """accelerate's tracker for ``settings.report_to``, started, logging into ``out_dir``.

    The tracker is used directly rather than through ``Accelerator(log_with=...)``: callers
    build the Accelerator (finetune picks the device) before the train settings reach the
    loop, and ``Accelerator.end_training`` would also destroy the process group that a
    multi-process run still needs after training (gathering, saving, a second phase). The
    tracker's methods run on the main process only.
    """
    if settings.report_to == "none":
        return None
    if out_dir is None:
        raise ConfigError(f"train.report_to={settings.report_to} needs a run directory to log into")
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    if settings.report_to == "tensorboard":
        tracker = TensorBoardTracker(TRACKING_RUN, out_dir)
    elif settings.report_to == "wandb":
        tracker = WandBTracker("expunge", dir=str(out_dir), name=out_dir.name)
    else:
        tracker = MLflowTracker("expunge", logging_dir=str(out_dir), run_name=out_dir.name)
    tracker.start()
    if settings.report_to != "tensorboard":  # TensorBoard's hparams would open a second run
        tracker.store_init_configuration(settings.model_dump(mode="json"))
    return tracker


def weights_are_sharded(accelerator: Accelerator) -> bool:
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def configure_deepspeed(accelerator: Accelerator, settings: TrainSettings) -> None:
    """DeepSpeed wants batch sizes up front; we feed batches ourselves, so tell it."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    config = plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = settings.batch_size
    config["gradient_accumulation_steps"] = 1  # we accumulate ourselves
    # DeepSpeed clips inside its own step; 0.0 turns that off (accelerate would fill in 1.0).
    config["gradient_clipping"] = settings.max_grad_norm or 0.0
