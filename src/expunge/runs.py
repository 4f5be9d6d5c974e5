"""Shared settings of every command and the run context that writes its record."""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from expunge.config import StrictModel
from expunge.records import RunDir, RunRecord, finish_record, write_record


class ModelSettings(StrictModel):
    name: str = "smollm2-135m"  # hub id, local directory, run directory or embedded name
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    adapter: str | None = None  # a LoRA adapter directory merged into the model after loading
    head: Literal["auto", "causal_lm", "sequence_classification"] = "auto"  # auto: by checkpoint
    num_labels: int | None = Field(default=None, ge=2)  # a new classification head's outputs


class DataSettings(StrictModel):
    path: str | None = None  # .jsonl file, saved dataset directory or hub dataset id
    split: str = "train"
    max_examples: int | None = Field(default=None, ge=1)


@contextmanager
def recorded_run(
    command: str,
    out: str | Path,
    config: StrictModel,
    overwrite: bool = False,
    resume: bool = False,
    is_main: bool = True,
    seed: int | None = None,
) -> Iterator[tuple[RunDir | None, RunRecord]]:
    """Stage a run directory, yield it with a fresh record, and write/commit on the way out.

    On success the record is written with status ``ok`` and the staging directory moves into
    place. On failure the record (status ``failed``, the error) is written into the staging
    directory, which is kept so that ``--resume`` can pick up its checkpoints; an existing
    output directory is left untouched either way.
    """
    run_dir = RunDir(out, overwrite=overwrite, resume=resume) if is_main else None
    record = RunRecord(command=command, config=config.model_dump(mode="json"), seed=seed)
    started = time.monotonic()
    try:
        yield run_dir, record
    except BaseException as err:
        if run_dir is not None:
            finish_record(record, started, status="failed")
            record.error = "".join(traceback.format_exception_only(type(err), err)).strip()
            write_record(run_dir.path, record)
        raise
    if run_dir is not None:
        finish_record(record, started)
        write_record(run_dir.path, record)
        run_dir.commit()


def staging_path(run_dir: RunDir | None, out: str | Path) -> Path:
    """Where this process writes: the staging dir on the main process, else the final path."""
    return run_dir.path if run_dir is not None else Path(out)


def flag_overrides(base: dict[str, Any], flags: dict[str, Any]) -> dict[str, Any]:
    """Put CLI flag values (taken verbatim, not YAML-parsed) into a nested config dict."""
    data = dict(base)
    for dotted, value in flags.items():
        if value is None:
            continue
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return data
