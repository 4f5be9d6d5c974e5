"""Checkpoints of the loop: model, optimizer and RNG state through accelerate (or, for a model
the loop sharded itself on CPU processes, ``expunge.train.cpu_fsdp``), plus what accelerate does
not know (sampler positions, the schedule), so a resume lands on the same step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expunge.errors import ConfigError, DataError
from expunge.files import atomic_write_text, read_text
from expunge.train import cpu_fsdp

if TYPE_CHECKING:
    from accelerate import Accelerator

    from expunge.train.batches import StreamSampler

STATE_FILE = "trainer_state.json"


def save_checkpoint(
    accelerator: Accelerator, out_dir: Path, step: int, samplers: dict[str, StreamSampler],
    scheduler: Any, keep: int, sharded: tuple[Any, Any] | None = None,
) -> Path:  # fmt: skip
    """Model, optimizer and RNG state (accelerate) plus sampler positions and the schedule.

    The scheduler is not prepared by accelerate (see ``train``), so ``save_state`` does not know
    it: its state goes into our own state file, or a resume would restart the warmup.
    ``sharded``: the (model, optimizer) the loop sharded itself (``cpu_fsdp``), which
    accelerate does not hold.
    """
    root = out_dir / "checkpoints"
    target = root / f"step-{step:07d}"
    if sharded is None:
        accelerator.save_state(str(target), safe_serialization=True)
    else:
        cpu_fsdp.save(*sharded, target, accelerator.process_index)
    if accelerator.is_main_process:
        state = {
            "step": step,
            "samplers": {n: s.consumed for n, s in samplers.items()},
            "scheduler": scheduler.state_dict(),
        }
        # atomic: latest_checkpoint takes a checkpoint whose state file exists as complete
        atomic_write_text(target / STATE_FILE, json.dumps(state))
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


def restore_checkpoint(
    accelerator: Accelerator,
    out_dir: Path | None,
    samplers: dict[str, StreamSampler],
    scheduler: Any,
    sharded: tuple[Any, Any] | None = None,
) -> int:
    checkpoint = latest_checkpoint(out_dir)
    if checkpoint is None:
        raise ConfigError(f"nothing to resume: no checkpoint under {out_dir}/checkpoints")
    if sharded is None:
        accelerator.load_state(str(checkpoint))
    else:
        cpu_fsdp.load(*sharded, checkpoint, accelerator.process_index)
    try:  # written atomically, so only damage from outside makes it unreadable
        state = json.loads(read_text(checkpoint / STATE_FILE, "checkpoint state"))
        step, consumed_by, schedule = int(state["step"]), state["samplers"], state["scheduler"]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataError(
            f"{checkpoint / STATE_FILE}: not a checkpoint state ({err}); "
            "resume from another checkpoint or start over with --overwrite"
        ) from None
    for name, consumed in consumed_by.items():
        if name in samplers:
            samplers[name].consumed = consumed
    scheduler.load_state_dict(schedule)
    return step


def trim_metrics(path: Path, keep_until_step: int) -> None:
    """On resume, drop curve points past the checkpoint so the curve has no duplicates.

    The loop appends one line per step, so an interrupted run can end the file with half a
    line: that last line is dropped (a step's line is written before its checkpoint is saved,
    so a cut line is past the checkpoint and its step is trained again). A broken line
    before it is not the interruption's doing and is an error naming the line."""
    if not path.exists():
        return
    lines = [(n, line) for n, line in enumerate(read_text(path, "training curve").splitlines(), 1)
             if line.strip()]  # fmt: skip
    kept = []
    for index, (number, line) in enumerate(lines):
        try:
            step = json.loads(line)["step"]
            if not isinstance(step, int):
                raise TypeError(step)
        except (ValueError, KeyError, TypeError) as err:
            if index == len(lines) - 1:
                break  # half-written when the run was stopped
            raise DataError(f"{path}:{number}: not a training-curve line ({type(err).__name__}: "
                            f"{err}); remove the line or start over with --overwrite") from None  # fmt: skip
        if step <= keep_until_step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))
