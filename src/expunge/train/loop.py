"""THE training loop. Every loss-based method in expunge runs through ``train``.

Read top to bottom:
1. streams of tokenized examples are sampled in a seeded order that survives a resume;
2. each optimizer step takes ``grad_accum`` micro-batches per stream, counts label tokens and
   sequences over the whole step on every process, and asks the objective for a loss;
3. backward (gradient sync only on the last micro-batch), clip, AdamW, schedule;
4. log to ``metrics.jsonl``, the progress bar and the tracker of ``report_to`` (TensorBoard,
   W&B, MLflow); checkpoint every ``save_every`` steps.

Device, precision and distribution (DDP, FSDP, DeepSpeed) come from ``accelerate``; nothing
here calls ``.cuda()``. FSDP on CPU processes, which accelerate does not shard, is torch's own
``fully_shard`` (``expunge.train.cpu_fsdp``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expunge.data.formatting import TokenizedExample
from expunge.lazy import lazy
from expunge.models.device import autocast, resolve_precision
from expunge.train import cpu_fsdp
from expunge.train.batches import StreamSampler, cpu_int, draw_step, shared_prefix  # noqa: F401
from expunge.train.checkpoint import restore_checkpoint, save_checkpoint, trim_metrics
from expunge.train.objectives import Objective, StepContext
from expunge.train.progress import TrainProgress
from expunge.train.settings import TrainSettings, steps_for
from expunge.train.setup import (  # noqa: F401 (prepare_trainable: the loop's public pair)
    build_optimizer,
    check_streams,
    configure_deepspeed,
    prepare_trainable,
    reference_cache_for,
    start_tracker,
    weights_are_sharded,
)

if TYPE_CHECKING:
    import numpy as np
    import torch
    from accelerate import Accelerator
    from torch import nn

    from expunge.records import RunRecord
else:  # loaded when training starts, not when a config is checked (expunge.lazy)
    np, torch, nn = lazy("numpy"), lazy("torch"), lazy("torch.nn")
accelerate, transformers = lazy("accelerate"), lazy("transformers")

TRACKED = ("loss", "lr", "grad_norm", "tokens_per_s")  # sent to report_to, as in metrics.jsonl


@dataclass
class TrainResult:
    steps: int  # taken by this call (a resumed run: since the checkpoint)
    tokens: int  # seen by this call
    wall_time_s: float
    final_loss: float | None
    history: list[dict[str, Any]] = field(default_factory=list)
    # With FSDP or ZeRO-3 the unwrapped model holds shards; this is the gathered full state
    # (on the main process) to save from. None when the model's own weights are complete.
    full_state_dict: dict[str, Any] | None = None
    start_step: int = 0  # where a resumed run picked up
    precision: str = "fp32"  # what train.precision resolved to
    reference_cache: str = "off"  # what train.reference_cache resolved to
    # how the frozen reference's cache served the run (ReferenceCache.usage; empty when the
    # objective has no reference, or the cache is off)
    reference_use: dict[str, Any] = field(default_factory=dict)

    def note(self, record: RunRecord, section: str) -> None:
        """Record what this section's ``auto`` settings resolved to (``inputs.training``), so
        a reader knows whether a KL term saw whole distributions or a top-k cache."""
        resolved = {
            "precision": self.precision,
            **({"reference_cache": self.reference_use} if self.reference_use else {}),
        }
        record.inputs.setdefault("training", {})[section] = resolved

    @property
    def total_steps(self) -> int:
        """The step the run reached, the steps before a resume included."""
        return self.start_step + self.steps

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0


def train(
    model: nn.Module,
    streams: dict[str, list[TokenizedExample]],
    objective: Objective,
    settings: TrainSettings,
    pad_token_id: int,
    out_dir: str | Path | None = None,
    accelerator: Accelerator | None = None,
    resume: bool = False,
    primary_stream: str | None = None,
    on_step: Callable[[int, dict[str, float]], bool | None] | None = None,
    description: str = "training",
) -> tuple[nn.Module, TrainResult]:
    """Train ``model`` (already prepared with ``prepare_trainable``) and return it, unwrapped."""
    # the device the model was loaded on (models.device.pick_device) is the one it trains on
    accelerator = accelerator or accelerate.Accelerator(
        cpu=next(model.parameters()).device.type == "cpu"
    )
    shard_here = cpu_fsdp.requested(accelerator)
    accelerate.utils.set_seed(settings.seed)
    primary = check_streams(streams, objective, primary_stream, accelerator)
    world = accelerator.num_processes
    total_steps = steps_for(settings, len(streams[primary]), world)

    if shard_here:  # the optimizer must see the shards, so it comes after them
        model = cpu_fsdp.shard(model)
    optimizer, scheduler = build_optimizer(model, settings, total_steps)
    sharded = (model, optimizer) if shard_here else None
    if settings.compile:
        model = torch.compile(model, dynamic=True)
    if not shard_here:
        configure_deepspeed(accelerator, settings)
        # The scheduler stays unprepared: accelerate would step it once per process.
        model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    block = settings.batch_size * world
    samplers = {
        name: StreamSampler(
            len(streams[name]), settings.seed, salt=index,
            lengths=[len(e.input_ids) for e in streams[name]] if settings.group_by_length else None,
            block=block, window=settings.length_window,
        )
        for index, name in enumerate(objective.streams)
    }  # fmt: skip
    precision = resolve_precision(settings.precision, accelerator.device)
    reference_cache = reference_cache_for(settings, streams, objective.streams, model)
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None and accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
    start_step = 0
    if resume:
        start_step = restore_checkpoint(accelerator, out_dir, samplers, scheduler, sharded)
    metrics_path = out_dir / "metrics.jsonl" if out_dir is not None else None
    if metrics_path is not None and accelerator.is_main_process:
        trim_metrics(metrics_path, start_step)

    tracker = start_tracker(settings, out_dir)
    history: list[dict[str, Any]] = []
    tokens_seen = 0
    started = time.perf_counter()
    last_loss: float | None = None
    progress = TrainProgress(
        total_steps,
        start_step,
        description,
        enabled=settings.progress and accelerator.is_main_process,
    )
    with progress:
        for step in range(start_step, total_steps):
            micro = draw_step(
                streams, samplers, objective.streams, settings, accelerator, pad_token_id,
                share_prefix=settings.share_prefix and world == 1
                and not settings.gradient_checkpointing,
            )  # fmt: skip
            ctx = _step_context(micro, step, accelerator)
            ctx.reference_cache = reference_cache
            logs_sum: dict[str, torch.Tensor] = {}
            loss_sum = torch.zeros((), device=accelerator.device)
            for index, batches in enumerate(micro):
                with _micro_step(accelerator, model, index == len(micro) - 1, sharded):
                    with autocast(precision, accelerator.device):
                        loss, logs = objective(model, batches, ctx)
                    accelerator.backward(loss)
                loss_sum += loss.detach()
                for key, value in logs.items():
                    logs_sum[key] = logs_sum.get(key, 0) + value.detach().float()
            grad_norm = None
            if settings.max_grad_norm is not None:
                # All parameters, not just the trainable ones: under FSDP accelerate only uses the
                # sharding-aware (global) norm when handed exactly model.parameters(); frozen
                # parameters have no gradient and do not count anyway.
                grad_norm = (
                    cpu_fsdp.clip_grad_norm_(sharded[0], settings.max_grad_norm) if sharded
                    else accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                )  # fmt: skip
            lr = float(scheduler.get_last_lr()[0])  # the rate this step uses, logged as such
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            step_tokens = sum(ctx.tokens.values())
            tokens_seen += world * sum(
                cpu_int(b, "token_count") for batches in micro for b in batches.values()
            )
            record = _log_record(
                step + 1, accelerator, loss_sum, logs_sum, lr, grad_norm, step_tokens, tokens_seen,
                time.perf_counter() - started, samplers[primary], len(streams[primary]),
            )  # fmt: skip
            last_loss = record["loss"]
            history.append(record)
            if (step + 1) % settings.log_every == 0 or step + 1 == total_steps:
                _log(record, metrics_path if accelerator.is_main_process else None, tracker)
            progress.update(step + 1, record)
            if (
                out_dir is not None
                and settings.save_every
                and (step + 1) % settings.save_every == 0
            ):
                save_checkpoint(
                    accelerator, out_dir, step + 1, samplers, scheduler, settings.keep_checkpoints,
                    sharded,
                )  # fmt: skip
            # After the checkpoint, so a callback that stops the run at step k can resume from k.
            # A callback that returns True ends the run here (a stop rule on held-out text).
            if on_step is not None and on_step(step + 1, record):
                break

    wall = time.perf_counter() - started
    if tracker is not None:
        tracker.finish()
    accelerator.wait_for_everyone()
    full_state = (
        cpu_fsdp.full_state_dict(sharded[0]) if sharded
        else accelerator.get_state_dict(model) if weights_are_sharded(accelerator) else None
    )  # fmt: skip
    model = accelerator.unwrap_model(model, keep_torch_compile=False)
    model.eval()
    done = history[-1]["step"] if history else start_step
    return model, TrainResult(
        done - start_step, tokens_seen, wall, last_loss, history, full_state, start_step,
        precision, reference_cache.mode if reference_cache is not None else "off",
        reference_cache.usage() if reference_cache is not None else {},
    )  # fmt: skip


def _log(record: dict[str, Any], metrics_path: Path | None, tracker: Any) -> None:
    """One curve point to ``metrics.jsonl`` (the main process's path, else None) and the
    tracker."""
    if metrics_path is not None:
        with metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    if tracker is not None:
        tracker.log({k: record[k] for k in TRACKED if record.get(k) is not None},
                    step=record["step"])  # fmt: skip


@contextmanager
def _micro_step(
    accelerator: Accelerator, model: nn.Module, is_last: bool, sharded: tuple | None = None
) -> Iterator[None]:
    """One micro-batch of the step: gradients are reduced across processes only on the last.

    DDP and FSDP skip the reduction under ``no_sync``; DeepSpeed instead reads accelerate's
    ``sync_gradients`` flag in ``backward`` (and would take an optimizer step on every
    micro-batch without it). The flag is set back to True so ``optimizer.step`` is not skipped.
    A model the loop sharded itself (``sharded``, see ``cpu_fsdp``) has no ``no_sync``: FSDP2's
    own switch.
    """
    if sharded is not None:
        sharded[0].set_requires_gradient_sync(is_last)
        yield
        return
    if is_last:
        yield
        return
    accelerator.sync_gradients = False
    try:
        with accelerator.no_sync(model):
            yield
    finally:
        accelerator.sync_gradients = True


def _step_context(micro: list[dict], step: int, accelerator: Accelerator) -> StepContext:
    names = list(micro[0])
    counts = torch.tensor(
        [
            [cpu_int(b[n], "label_count") for n in names]
            + [float(b[n]["input_ids"].shape[0]) for n in names]
            for b in micro
        ],
        dtype=torch.float64,
    ).sum(dim=0)
    if accelerator.num_processes > 1:
        counts = counts.to(accelerator.device)
    counts = (
        accelerator.reduce(counts, reduction="sum") if accelerator.num_processes > 1 else counts
    )
    tokens = {n: int(counts[i]) for i, n in enumerate(names)}
    sequences = {n: int(counts[len(names) + i]) for i, n in enumerate(names)}
    return StepContext(step, accelerator.num_processes, tokens, sequences)


def _log_record(
    step: int, accelerator: Accelerator, loss_sum: torch.Tensor, logs_sum: dict,
    lr: float, grad_norm: Any, step_tokens: int, tokens_seen: int, elapsed: float,
    primary_sampler: StreamSampler, primary_size: int,
) -> dict[str, Any]:  # fmt: skip
    keys = sorted(logs_sum)
    values = torch.stack(
        [loss_sum] + [torch.as_tensor(logs_sum[k], device=loss_sum.device) for k in keys]
    )
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, reduction="mean")
    record: dict[str, Any] = {
        "step": step,
        "epoch": round(primary_sampler.consumed / max(primary_size, 1), 4),
        "loss": float(values[0]),
        "lr": lr,
        "label_tokens": step_tokens,
        "tokens_per_s": round(tokens_seen / elapsed, 2) if elapsed > 0 else None,
        "elapsed_s": round(elapsed, 3),
    }
    if grad_norm is not None:
        record["grad_norm"] = float(grad_norm)
    record.update({k: float(v) for k, v in zip(keys, values[1:], strict=True)})
    return record
