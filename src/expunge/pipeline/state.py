"""A run directory's ``pipeline.json``: per stage, its hash, status and timings.

A stage whose hash matches a finished stage is skipped, so re-running the same file does no
work twice, an interrupted run resumes at the stage it stopped in, and a changed setting re-runs
that stage and everything downstream of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from expunge.errors import ConfigError, OutputError, OutputExistsError
from expunge.files import read_text
from expunge.records import check_writable, holds_working_directory

STATE_FILE = "pipeline.json"
STATE_VERSION = 1
# Inputs larger than this are identified by size and modification time instead of content.
CONTENT_HASH_LIMIT = 4 * 2**20


def file_fingerprint(path: Path) -> str:
    """Content hash of small files; name, size and mtime of large ones; recursive for directories."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        stat = file.stat()
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        if stat.st_size <= CONTENT_HASH_LIMIT:
            digest.update(file.read_bytes())
        else:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    if not path.is_file():
        return {"stages": {}}
    try:
        state = json.loads(read_text(path, "pipeline state file"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err.msg}, line {err.lineno}); "
                          f"re-run with --overwrite to start over") from None  # fmt: skip
    if not isinstance(state, dict) or not isinstance(state.get("stages"), dict):
        raise ConfigError(f"{path}: not a pipeline state file; re-run with --overwrite")
    return state


def _stage_record_ok(run_dir: Path, stage_id: str) -> bool:
    path = run_dir / stage_id / "record.json"
    try:
        return json.loads(path.read_text()).get("status") == "ok"
    except (OSError, ValueError):  # missing, not JSON or not UTF-8: not a finished stage
        return False


def stage_status(run_dir: Path, stage: Any, previous: dict[str, Any], overwrite: bool) -> str:
    """Cached, or to run and why, for one stage of the plan."""
    old = previous.get(stage.id)
    finished = old is not None and old.get("status") in {"ok", "cached"}
    if overwrite:
        return "run:overwrite"
    if old is None:
        return "run:new"
    if not finished:
        last = {"running": "interrupted", "pending": "not reached"}.get(old.get("status"))
        return f"run:{last or old.get('status', 'unfinished')} last time"
    if old.get("config_hash") != stage.config_hash:
        return "run:config changed"
    if old.get("hash") != stage.hash:
        return "run:input changed"
    if not _stage_record_ok(run_dir, stage.id):
        return "run:record missing"
    return "cached"


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".pipeline.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputExistsError(f"another 'expunge run' is writing {run_dir}") from None
        yield


def remove_stale(root: Path, keep: set[str]) -> None:
    """Remove everything under ``root`` but the relative paths in ``keep`` (stage ids may be
    nested: ``erase/prune`` keeps ``erase/`` and sweeps its other children).

    ``--overwrite`` calls this only once the new run has succeeded: until then each stage
    replaces its old directory only when its new one is complete, so a failed run loses
    nothing of the old one."""

    if holds_working_directory(root):  # the last guard: run and bench check before any work
        raise OutputError(f"will not sweep {root}: it is or holds the current directory")

    def sweep(directory: Path, prefix: str) -> None:
        for child in directory.iterdir():
            name = prefix + child.name
            if name in keep:
                continue
            if child.is_dir() and not child.is_symlink():
                if any(k.startswith(name + "/") for k in keep):
                    sweep(child, name + "/")
                else:
                    shutil.rmtree(child)
            else:
                child.unlink()

    sweep(root, "")


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """A pipeline resumes in its own directory; any other non-empty directory needs --overwrite."""
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputExistsError(f"output path {run_dir} exists and is not a directory")
    # --overwrite sweeps everything in the run directory but its stages once the run succeeds:
    # with --out . (or a directory above it) that is the user's working directory
    if overwrite and holds_working_directory(run_dir):
        raise OutputError(f"--out {run_dir} is or holds the current directory, which "
                          "--overwrite would empty; name a directory of its own for the run")  # fmt: skip
    check_writable(run_dir)
    if (run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / STATE_FILE).is_file()
            and not overwrite):  # fmt: skip
        raise OutputExistsError(
            f"{run_dir} exists and is not a pipeline run directory (no {STATE_FILE}); "
            f"pass --overwrite to replace it"
        )
