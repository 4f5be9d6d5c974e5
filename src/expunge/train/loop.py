"""THE training loop. Every loss-based method in expunge runs through ``train``.

Read top to bottom:
1. streams of tokenized examples are sampled in a seeded order that survives a resume;
2. each optimizer step takes ``grad_accum`` micro-batches per stream, counts label tokens and
   sequences over the whole step on every process, and asks the objective for a loss;
3. backward (gradient sync only on the last micro-batch), clip, AdamW, schedule;
4. log to ``metrics.jsonl``, the progress bar and the tracker of ``report_to`` (TensorBoard,
   W&B, MLflow); checkpoint every ``save_every`` steps.

Device, precision and distribution (DDP, FSDP, DeepSpeed) come from ``accelerate``; nothing
here calls ``.cuda()``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expunge.data.collator import collate
from expunge.data.formatting import IGNORE_INDEX, TokenizedExample
from expunge.errors import ConfigError, DataError
from expunge.lazy import lazy
from expunge.models.device import autocast, resolve_precision
from expunge.models.lora import attach_lora, match_modules
from expunge.train.objectives import Objective, StepContext
from expunge.train.progress import TrainProgress
from expunge.train.reference import ReferenceCache
from expunge.train.settings import TrainSettings, steps_for

if TYPE_CHECKING:
    import numpy as np
    import torch
    from accelerate import Accelerator
    from torch import nn
else:  # loaded when training starts, not when a config is checked (expunge.lazy)
    np, torch, nn = lazy("numpy"), lazy("torch"), lazy("torch.nn")
accelerate, transformers = lazy("accelerate"), lazy("transformers")

STATE_FILE = "trainer_state.json"
TRACKED = ("loss", "lr", "grad_norm", "tokens_per_s")  # sent to report_to, as in metrics.jsonl
TRACKING_RUN = "tracking"  # TensorBoard events go to OUT_DIR/tracking/


class StreamSampler:
    """An endless, seeded walk over one stream: epoch after epoch of fresh permutations.

    The position is a single integer (indices consumed), so a resume restores it exactly.

    With ``lengths`` (``train.group_by_length``), the walk is cut into windows of ``window``
    batches of ``block`` indices (one global micro-batch); inside a window the indices are
    sorted by length, cut into batches and the batches shuffled (seeded by the window), so a
    batch holds examples of similar length and pads little. Every draw takes one whole batch,
    so windows stay aligned with batches across epochs and a resume lands on the same batches.
    """

    def __init__(
        self, size: int, seed: int, salt: int, lengths: list[int] | None = None,
        block: int = 1, window: int = 16,
    ) -> None:  # fmt: skip
        self.size = size
        self.seed = seed
        self.salt = salt
        self.consumed = 0
        self._epoch = -1
        self._order: np.ndarray = np.empty(0, dtype=np.int64)
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
        self.span = block * window
        self.block = block
        self._window = -1
        self._window_order: np.ndarray = np.empty(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, self.salt, epoch])
            self._order = rng.permutation(self.size)
            self._epoch = epoch
        return self._order

    def _plain(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        return int(self._permutation(epoch)[offset])

    def _grouped(self, position: int) -> int:
        window, offset = divmod(position, self.span)
        if window != self._window:
            start = window * self.span
            plain = np.array([self._plain(p) for p in range(start, start + self.span)])
            assert self.lengths is not None
            by_length = plain[np.argsort(-self.lengths[plain], kind="stable")]
            batches = by_length.reshape(-1, self.block)
            rng = np.random.default_rng([self.seed, self.salt, 1 << 20, window])
            self._window_order = batches[rng.permutation(len(batches))].reshape(-1)
            self._window = window
        return int(self._window_order[offset])

    def take(self, count: int) -> list[int]:
        pick = self._plain if self.lengths is None else self._grouped
        out = [pick(position) for position in range(self.consumed, self.consumed + count)]
        self.consumed += count
        return out


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

    @property
    def total_steps(self) -> int:
        """The step the run reached, the steps before a resume included."""
        return self.start_step + self.steps

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0


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
    import re

    names = [n for n, _ in model.named_parameters()]
    chosen: set[str] = set()
    for pattern in patterns:
        if pattern.startswith("re:"):
            regex = re.compile(pattern[3:])
            hits = {n for n in names if regex.fullmatch(n)}
        else:
            hits = {n for n in names if n == pattern or f".{pattern}." in f".{n}"}
        if not hits:
            # Fall back to module patterns so 'mlp.down_proj' style names work too.
            modules = match_modules(model, [pattern], kind="trainable pattern")
            hits = {n for n in names if any(n.startswith(m + ".") for m in modules)}
        chosen |= hits
    return chosen


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
    _check_fsdp_honoured(accelerator)
    accelerate.utils.set_seed(settings.seed)
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
    world = accelerator.num_processes
    total_steps = steps_for(settings, len(streams[primary]), world)

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("no trainable parameters: check train.mode / train.trainable")
    optimizer = torch.optim.AdamW(
        params,
        lr=settings.lr,
        betas=settings.adam_betas,
        eps=settings.adam_eps,
        weight_decay=settings.weight_decay,
    )
    warmup = settings.warmup_steps or int(settings.warmup_ratio * total_steps)
    scheduler = transformers.get_scheduler(
        settings.schedule
        if warmup == 0 or settings.schedule != "constant"
        else "constant_with_warmup",
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=total_steps,
    )
    _configure_deepspeed(accelerator, settings)
    if settings.compile:
        model = torch.compile(model, dynamic=True)
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
    reference_cache = _reference_cache(settings, streams, objective.streams, model)
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None and accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
    start_step = 0
    if resume:
        start_step = _restore(accelerator, out_dir, samplers, scheduler)
    metrics_path = out_dir / "metrics.jsonl" if out_dir is not None else None
    if metrics_path is not None and accelerator.is_main_process:
        _trim_metrics(metrics_path, start_step)

    tracker = _start_tracker(settings, out_dir)
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
            micro = _draw_step(
                streams, samplers, objective.streams, settings, accelerator, pad_token_id,
                share_prefix=settings.share_prefix and world == 1
                and not settings.gradient_checkpointing,
            )  # fmt: skip
            ctx = _step_context(micro, step, accelerator)
            ctx.reference_cache = reference_cache
            logs_sum: dict[str, torch.Tensor] = {}
            loss_sum = torch.zeros((), device=accelerator.device)
            for index, batches in enumerate(micro):
                with _micro_step(accelerator, model, is_last=index == len(micro) - 1):
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
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            lr = float(scheduler.get_last_lr()[0])  # the rate this step uses, logged as such
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            step_tokens = sum(ctx.tokens.values())
            tokens_seen += world * sum(
                _cpu_int(b, "token_count") for batches in micro for b in batches.values()
            )
            record = _log_record(
                step + 1, accelerator, loss_sum, logs_sum, lr, grad_norm, step_tokens, tokens_seen,
                time.perf_counter() - started, samplers[primary], len(streams[primary]),
            )  # fmt: skip
            last_loss = record["loss"]
            history.append(record)
            if (
                accelerator.is_main_process
                and metrics_path is not None
                and ((step + 1) % settings.log_every == 0 or step + 1 == total_steps)
            ):
                with metrics_path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
            if tracker is not None and (
                (step + 1) % settings.log_every == 0 or step + 1 == total_steps
            ):
                tracker.log(
                    {k: record[k] for k in TRACKED if record.get(k) is not None}, step=step + 1
                )
            progress.update(step + 1, record)
            if (
                out_dir is not None
                and settings.save_every
                and (step + 1) % settings.save_every == 0
            ):
                save_checkpoint(
                    accelerator, out_dir, step + 1, samplers, scheduler, settings.keep_checkpoints
                )
            # After the checkpoint, so a callback that stops the run at step k can resume from k.
            # A callback that returns True ends the run here (a stop rule on held-out text).
            if on_step is not None and on_step(step + 1, record):
                break

    wall = time.perf_counter() - started
    if tracker is not None:
        tracker.finish()
    accelerator.wait_for_everyone()
    full_state = accelerator.get_state_dict(model) if _weights_are_sharded(accelerator) else None
    model = accelerator.unwrap_model(model, keep_torch_compile=False)
    model.eval()
    done = history[-1]["step"] if history else start_step
    return model, TrainResult(
        done - start_step, tokens_seen, wall, last_loss, history, full_state, start_step,
        precision, reference_cache.mode if reference_cache is not None else "off",
    )  # fmt: skip


def _reference_cache(
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


def _start_tracker(settings: TrainSettings, out_dir: Path | None) -> Any:
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


def _check_fsdp_honoured(accelerator: Accelerator) -> None:
    """A launch that asks for FSDP must get it: accelerate runs CPU processes as plain
    multi-CPU data parallel whatever the config says (the FSDP plugin is only used with GPUs and
    other accelerators), which would replicate the model the user meant to shard."""
    import os

    from accelerate.utils import DistributedType

    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if asked and accelerator.distributed_type != DistributedType.FSDP:
        raise ConfigError(
            f"the launch asks for FSDP but accelerate runs these processes as "
            f"{accelerator.distributed_type.value} on {accelerator.device.type}: accelerate has "
            "no FSDP for CPU processes; on a CPU launch with configs/accelerate/cpu_2proc.yaml"
        )


def _weights_are_sharded(accelerator: Accelerator) -> bool:
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


@contextmanager
def _micro_step(accelerator: Accelerator, model: nn.Module, is_last: bool) -> Iterator[None]:
    """One micro-batch of the step: gradients are reduced across processes only on the last.

    DDP and FSDP skip the reduction under ``no_sync``; DeepSpeed instead reads accelerate's
    ``sync_gradients`` flag in ``backward`` (and would take an optimizer step on every
    micro-batch without it). The flag is set back to True so ``optimizer.step`` is not skipped.
    """
    if is_last:
        yield
        return
    accelerator.sync_gradients = False
    try:
        with accelerator.no_sync(model):
            yield
    finally:
        accelerator.sync_gradients = True


def _draw_step(
    streams: dict[str, list[TokenizedExample]],
    samplers: dict[str, StreamSampler],
    names: tuple[str, ...],
    settings: TrainSettings,
    accelerator: Accelerator,
    pad_token_id: int,
    share_prefix: bool = False,
) -> list[dict[str, dict[str, torch.Tensor]]]:
    """``grad_accum`` micro-batches; each process keeps its slice of every global micro-batch."""
    world, rank, size = accelerator.num_processes, accelerator.process_index, settings.batch_size
    micro = []
    for _ in range(settings.grad_accum):
        batches = {}
        for name in names:
            global_indices = samplers[name].take(size * world)
            local = global_indices[rank * size : (rank + 1) * size]
            examples = [streams[name][i] for i in local]
            batch = collate(examples, pad_token_id)
            # Token counts are taken here, on the CPU: reading them off device tensors later
            # would force a GPU sync every step. So are the rows' identities for the
            # reference cache (an example is its tokens and labels).
            counts = {
                "_cpu_label_count": int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()),
                "_cpu_token_count": int(batch["attention_mask"].sum()),
                "_cpu_row_keys": [(tuple(e.input_ids), tuple(e.labels)) for e in examples],
            }
            if share_prefix:
                counts["_cpu_shared_prefix"] = shared_prefix(examples)
            batches[name] = {k: v.to(accelerator.device) for k, v in batch.items()} | counts
        micro.append(batches)
    return micro


# Below this many shared tokens the extra forward call costs more than it saves.
MIN_SHARED_PREFIX = 8


def shared_prefix(examples: list[TokenizedExample]) -> int:
    """Tokens every row starts with and no label falls in (0 when fewer than 8, or one row).

    The prefix stops before the first position that predicts a label in any row, so every
    logit the loss needs comes from the rows' own continuation, and leaves every row at least
    one token of its own."""
    if len(examples) < 2:
        return 0
    limit = min(len(e.input_ids) for e in examples) - 1
    for e in examples:
        first = next((i for i, label in enumerate(e.labels) if i and label != IGNORE_INDEX), None)
        if first is not None:
            limit = min(limit, first - 1)  # position first-1 predicts the first label
    first_ids = examples[0].input_ids
    length = 0
    while length < limit and all(e.input_ids[length] == first_ids[length] for e in examples):
        length += 1
    return length if length >= MIN_SHARED_PREFIX else 0


def _cpu_int(batch: dict, key: str) -> int:
    """A count collated on the CPU (kept there as ``_cpu_<key>``: no device sync to read it)."""
    return int(batch["_cpu_" + key])


def _step_context(micro: list[dict], step: int, accelerator: Accelerator) -> StepContext:
    names = list(micro[0])
    counts = torch.tensor(
        [
            [_cpu_int(b[n], "label_count") for n in names]
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


def _configure_deepspeed(accelerator: Accelerator, settings: TrainSettings) -> None:
    """DeepSpeed wants batch sizes up front; we feed batches ourselves, so tell it."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    config = plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = settings.batch_size
    config["gradient_accumulation_steps"] = 1  # we accumulate ourselves
    # DeepSpeed clips inside its own step; 0.0 turns that off (accelerate would fill in 1.0).
    config["gradient_clipping"] = settings.max_grad_norm or 0.0


def save_checkpoint(
    accelerator: Accelerator, out_dir: Path, step: int, samplers: dict[str, StreamSampler],
    scheduler: Any, keep: int,
) -> Path:  # fmt: skip
    """Model, optimizer and RNG state (accelerate) plus sampler positions and the schedule.

    The scheduler is not prepared by accelerate (see ``train``), so ``save_state`` does not know
    it: its state goes into our own state file, or a resume would restart the warmup.
    """
    root = out_dir / "checkpoints"
    target = root / f"step-{step:07d}"
    accelerator.save_state(str(target), safe_serialization=True)
    if accelerator.is_main_process:
        state = {
            "step": step,
            "samplers": {n: s.consumed for n, s in samplers.items()},
            "scheduler": scheduler.state_dict(),
        }
        (target / STATE_FILE).write_text(json.dumps(state))
        for old in sorted(root.glob("step-*"))[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return target


def latest_checkpoint(out_dir: Path | None) -> Path | None:
    if out_dir is None:
        return None
    candidates = sorted(
        p for p in (out_dir / "checkpoints").glob("step-*") if (p / STATE_FILE).is_file()
    )
    return candidates[-1] if candidates else None


def _restore(
    accelerator: Accelerator,
    out_dir: Path | None,
    samplers: dict[str, StreamSampler],
    scheduler: Any,
) -> int:
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is None:
        raise ConfigError(f"nothing to resume: no checkpoint under {out_dir}/checkpoints")
    accelerator.load_state(str(checkpoint))
    state = json.loads((checkpoint / STATE_FILE).read_text())
    for name, consumed in state["samplers"].items():
        if name in samplers:
            samplers[name].consumed = consumed
    scheduler.load_state_dict(state["scheduler"])
    return int(state["step"])


def _trim_metrics(path: Path, keep_until_step: int) -> None:
    """On resume, drop curve points past the checkpoint so the curve has no duplicates."""
    if not path.exists():
        return
    kept = [
        line for line in path.read_text().splitlines()
        if line.strip() and json.loads(line)["step"] <= keep_until_step
    ]  # fmt: skip
    path.write_text("".join(line + "\n" for line in kept))
