"""Run records and safe output directories.

Every command writes ``record.json`` — resolved config, library versions, git hash, seed,
device, world size, wall time, metrics — before any table is drawn; reports read only records.

Output directories are staged: a run writes into ``.<name>.partial/`` beside the target and
renames it into place when it succeeds, so an interrupted or failed run never leaves a
half-written directory that looks finished, and ``--overwrite`` replaces the old directory only
once the new one is complete. Files are written by ``expunge.files`` (atomic, with the permission
rule for secrets).
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from expunge.errors import DataError, ExpungeError, OutputError, OutputExistsError
from expunge.files import atomic_write_json, file_digest, read_text

TRACKED_PACKAGES = (
    "expunge", "torch", "transformers", "peft", "accelerate", "datasets", "safetensors",
    "tokenizers", "numpy", "scipy", "scikit-learn", "pydantic",
)  # fmt: skip


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_state() -> dict[str, Any]:
    """Commit and dirtiness of the expunge source tree, when it is a git checkout.

    Outside a checkout, the commit ``git archive`` wrote into ``ARCHIVE_COMMIT`` (an
    ``export-subst`` file), so a run from an exported tree still names its source."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return archive_commit(source)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source, capture_output=True, text=True, timeout=5,
        )  # fmt: skip
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return archive_commit(source)


def archive_commit(source: Path) -> dict[str, Any]:
    """The commit in ``source/ARCHIVE_COMMIT`` if ``git archive`` filled it in, else None."""
    try:
        text = (source / "ARCHIVE_COMMIT").read_text().strip()
    except OSError:
        return {"commit": None}
    if re.fullmatch(r"[0-9a-f]{40}", text):
        return {"commit": text, "from": "git archive"}
    return {"commit": None}


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def device_info() -> dict[str, Any]:
    """Where the run ran. The CPU and the instruction set torch's kernels use are kept because
    fp32 training is reproducible under a seed only on the same kernels: hosts that dispatch to
    AVX2 and to AVX-512 round differently, and a few hundred steps carry that into the weights."""
    import torch

    from expunge.models.device import cpu_has_native_bf16

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": cpu_has_native_bf16(),
    }
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


class RunRecord(BaseModel):
    """What one command did, enough to reproduce it and to report it."""

    command: str
    argv: list[str] = Field(default_factory=lambda: record_argv())  # defined below
    config: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None
    versions: dict[str, str] = Field(default_factory=library_versions)
    git: dict[str, Any] = Field(default_factory=git_state)
    device: str = "cpu"
    dtype: str | None = None
    world_size: int = 1
    host: dict[str, Any] = Field(default_factory=device_info)
    started_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    finished_at: str | None = None
    wall_time_s: float | None = None
    status: str = "running"
    error: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    metric_details: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    artifacts: dict[str, str] = Field(default_factory=dict)
    # two runs saved the same weights exactly when these agree (a seed's reproducibility, checked)
    weights_sha256: dict[str, str] = Field(default_factory=dict)
    inputs: dict[str, Any] = Field(default_factory=dict)


class RunDir:
    """An output directory written through a staging directory.

    ``RunDir(out, overwrite)`` checks up front that ``out`` may be written (nothing is touched
    when it may not). ``path`` is where files go while the run is in progress (created on first
    use); ``commit()`` moves the finished run into place. A staging directory left by an
    interrupted run that saved checkpoints is kept unless ``resume`` (continue it) or
    ``overwrite`` (discard it) says what to do with it.
    """

    def __init__(self, out: str | Path, overwrite: bool = False, resume: bool = False,
                 resumable: bool = True) -> None:  # fmt: skip
        self.final = Path(out).resolve()
        self.overwrite = overwrite
        self.staging = self.final.parent / f".{self.final.name}.partial"
        # keeps a staging dir that --resume can continue
        check_output_dir(self.final, overwrite, resume, resumable=resumable)
        if self.staging.exists() and not resume:
            shutil.rmtree(self.staging)
        self.touched = False
        self._started = time.monotonic()

    @property
    def path(self) -> Path:
        self.staging.mkdir(parents=True, exist_ok=True)
        self.touched = True
        return self.staging

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def commit(self) -> Path:
        """Move the staged run into its final place, replacing an old one if allowed."""
        trash = None
        if self.final.exists():
            trash = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
            os.replace(self.final, trash)
        try:
            os.replace(self.staging, self.final)
        except OSError:
            if trash is not None:
                os.replace(trash, self.final)  # put the old run back
            raise
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return self.final


def checkpoint_steps(directory: Path) -> list[int]:
    """The steps of the training checkpoints saved anywhere under ``directory``, in order."""
    steps = []
    for path in directory.rglob("checkpoints/step-*"):
        suffix = path.name.removeprefix("step-")
        if suffix.isdigit():
            steps.append(int(suffix))
    return sorted(steps)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what was kept and how to go on."""


def check_output_dir(out: str | Path, overwrite: bool = False, resume: bool = False,
                     inputs: dict[str, str | Path] | None = None,
                     resumable: bool = True) -> None:  # fmt: skip
    """Fail before any work when ``out`` may not be written (the same rule as ``RunDir``).

    An empty ``out``, the current directory and any directory above it are refused whatever
    ``overwrite`` says: ``commit`` replaces the output directory as a whole, so ``--out ""``
    (which is ``.``) with ``--overwrite`` would delete the directory the user stands in. So is
    an ``out`` that is or holds one of ``inputs`` (what the run reads, by the option or config
    key that names it): the run would delete its own model, imprint or data when it commits."""
    if not str(out).strip():
        raise OutputError("--out is empty: name the run's output directory")
    final = Path(out).resolve()
    if holds_working_directory(final):
        raise OutputError(f"--out {out} ({final}) is or holds the current directory: a run "
                          "replaces its output directory as a whole; name a new directory for it")  # fmt: skip
    for key, source in (inputs or {}).items():
        path = Path(source).expanduser().resolve()  # resolve: a symlink to the input counts
        if path == final or path.is_relative_to(final):
            where = "is" if path == final else "holds"
            raise OutputError(f"--out {out} {where} an input of this run ({key}: {source}); "
                              "a run replaces its output directory as a whole: name another")  # fmt: skip
    if final.exists() and not final.is_dir():
        raise OutputExistsError(f"output path {final} exists and is not a directory")
    if final.exists() and any(final.iterdir()) and not overwrite and not resume:
        raise OutputExistsError(
            f"output directory {final} already exists; pass --overwrite to replace it"
        )
    staging = final.parent / f".{final.name}.partial"
    # a command that cannot resume (only finetune can) has nothing to lose in the old staging
    if staging.is_dir() and not resume and not overwrite and resumable:
        kept = checkpoint_steps(staging)
        if kept:  # a plain re-run must not delete what an interrupted run can resume from
            raise OutputExistsError(
                f"an interrupted run left checkpoints (step {kept[-1]}) in {staging}: "
                "pass --resume to continue it, or --overwrite to discard it"
            )
    check_writable(final)


def holds_working_directory(path: str | Path) -> bool:
    """Is ``path`` the current directory or one above it?"""
    return Path.cwd().resolve().is_relative_to(Path(path).resolve())


def check_writable(path: str | Path, output: str | Path | None = None) -> None:
    """Fail before any work when ``path`` (a directory, made if missing) could not be written:
    its nearest existing ancestor must be a directory this process may write into. The message
    names ``output`` (a file to be written in ``path``) when given."""
    target = Path(path).resolve()
    named = Path(output).resolve() if output is not None else target
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write {named}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        why = "is on a read-only file system" if read_only else "is not writable by this user"
        raise OutputError(f"cannot write {named}: {existing} {why}")


@contextmanager
def made_dirs(path: str | Path) -> Iterator[Path]:
    """Make directory ``path`` (and its missing parents); on the way out remove those this
    made that are still empty, so a run stopped before it wrote anything leaves nothing."""
    target = Path(path).resolve()
    missing = []
    probe = target
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot write {target}: {err.strerror or err}") from None
    try:
        yield target
    finally:
        for directory in missing:  # deepest first
            try:
                directory.rmdir()
            except OSError:
                break  # not empty (the run's output is there) or gone: keep the rest


def write_record(directory: str | Path, record: RunRecord) -> Path:
    path = Path(directory) / "record.json"
    atomic_write_json(path, record.model_dump(mode="json"))
    return path


def weights_digests(directory: str | Path, artifacts: dict[str, str]) -> dict[str, str]:
    """SHA-256 of each safetensors file among a run's artefacts (an artefact that is one, or
    those directly inside an artefact directory), by its path in the run directory."""
    root = Path(directory)
    digests = {}
    for name in sorted(set(artifacts.values())):
        path = root / name
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
        for file in files:
            if file.suffix == ".safetensors" and file.is_file():
                digests[file.relative_to(root).as_posix()] = file_digest(file)
    return digests


def finish_record(record: RunRecord, started: float, status: str = "ok") -> RunRecord:
    record.finished_at = datetime.now(timezone.utc).isoformat()
    record.wall_time_s = round(time.monotonic() - started, 3)
    record.status = status
    return record


def read_record(path: str | Path) -> RunRecord:
    path = Path(path)
    if path.is_dir():
        path = path / "record.json"
    text = read_text(path, "record")
    try:
        return RunRecord.model_validate_json(text)
    except ValueError as err:  # pydantic's ValidationError is a ValueError
        raise DataError(f"{path}: not a run record ({str(err).splitlines()[0]})") from None


def _record_beside(model: Path) -> RunRecord | None:
    """The record of the run that saved the model at ``model`` (an expunge run directory, or
    the model directory inside one); None when there is none or it is not a run record."""
    for run, name in ((model, "model"), (model.parent, model.name)):
        if (run / "record.json").is_file() and (run / name).is_dir():
            try:
                record = read_record(run)
            except (OSError, DataError):
                return None
            if record.artifacts.get(name) == name:
                return record
    return None


def implanted_on(model: str | Path, kind: str = "fingerprint", max_steps: int = 16) -> str | None:
    """The model an imprint of ``kind`` was implanted on, for the model at ``model``: the run
    records are followed back through the runs that derived it (fine-tuning, erasing, another
    implant) to the implant's own input. An embedded model is given by its name. None when a
    model on the way has no record, or the chain reaches a model no expunge run made."""
    from expunge.models.embedded import embedded_name

    path = Path(model).expanduser()
    for _ in range(max_steps):
        record = _record_beside(path)
        if record is None:
            return None
        source = record.inputs.get("model")
        if not isinstance(source, str):
            return None
        if record.config.get("command") == "implant" and record.config.get("kind") == kind:
            return embedded_name(source) or source
        path = Path(source)
    return None


# Secret config values are kept in imprint.json (0600), never in records or their argv copy.
REDACTED = "<in imprint.json>"


def redact_fields(data: dict[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """A copy of ``data`` with each dotted path that holds a value replaced by ``REDACTED``."""
    out = json.loads(json.dumps(data, default=str))
    for path in paths:
        node, parts = out, path.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        value = node.get(parts[-1]) if isinstance(node, dict) else None
        if value not in (None, [], ""):
            node[parts[-1]] = [REDACTED] if isinstance(value, list) else REDACTED
    return out


def secret_values(data: dict[str, Any], paths: Sequence[str]) -> list[str]:
    """The strings held at the secret ``paths`` of ``data`` (to blank them from shared text)."""
    out: list[str] = []
    for path in paths:
        node: Any = data
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        values = node if isinstance(node, list) else [node]
        out.extend(str(v) for v in values if isinstance(v, str | int) and str(v).strip())
    return out


def holds_secret(text: str, values: Sequence[str]) -> bool:
    """Whether ``text`` holds one of the secret ``values`` as a whole word (a two-letter
    trigger inside a longer word is no match)."""
    return any(re.search(rf"(?<!\w){re.escape(v)}(?!\w)", text) for v in values if v.strip())


def redact_argv(argv: Sequence[str], paths: Sequence[str], values: Sequence[str] = ()) -> list[str]:
    """A copy of ``argv`` without secrets. A ``key=value`` argument keeps only its key when the
    key is a secret path, lies under one, or is a section holding one (``trigger={text: [..]}``),
    or when its value holds one of the secret ``values``; any other argument holding one of
    them is replaced whole."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.strip()  # as the override parser reads 'terms =[...]'
        by_path = any(key == p or key.startswith(p + ".") or p.startswith(key + ".")
                      for p in paths)  # fmt: skip
        if sep and (by_path or holds_secret(value, values)) and not holds_secret(key, values):
            out.append(f"{key}={REDACTED}")
        elif holds_secret(arg, values):
            out.append(REDACTED)
        else:
            out.append(arg)
    return out


def redact_values(data: Any, values: Sequence[str]) -> Any:
    """A copy of JSON-like ``data`` with every string that holds a secret value redacted."""
    if isinstance(data, dict):
        return {k: redact_values(v, values) for k, v in data.items()}
    if isinstance(data, list):
        return [redact_values(v, values) for v in data]
    return REDACTED if isinstance(data, str) and holds_secret(data, values) else data


# The command line records keep: this process's, or inside ``redacted_argv`` (a study running
# its stages) that command line with the study's secrets taken out.
_RECORD_ARGV: ContextVar[tuple[str, ...] | None] = ContextVar("record_argv", default=None)


def record_argv() -> list[str]:
    """The command line a record made now keeps (``RunRecord.argv``)."""
    kept = _RECORD_ARGV.get()
    return list(sys.argv if kept is None else kept)


@contextmanager
def redacted_argv(paths: Sequence[str], values: Sequence[str]) -> Iterator[list[str]]:
    """Within, every record keeps the command line with these secret ``paths`` and ``values``
    redacted: a study's stages run under the study's command line, whose secrets are addressed
    by paths of the study (``imprint.implant.response``), not of the stage."""
    argv = redact_argv(record_argv(), paths, values)
    token = _RECORD_ARGV.set(tuple(argv))
    try:
        yield argv
    finally:
        _RECORD_ARGV.reset(token)


@contextmanager
def output_lock(out: str | Path) -> Iterator[None]:
    """Hold ``.NAME.lock`` beside ``out`` for the whole run: one writer per output.

    The file is removed on the way out (while still held), so a run leaves nothing behind; a
    second writer that opened the old file before the removal sees that the path no longer
    names its file and stops too.
    """
    final = Path(out).resolve()
    path = final.parent / f".{final.name}.lock"
    busy = OutputExistsError(
        f"another expunge command is writing {final}; wait for it or choose another --out"
    )
    with made_dirs(final.parent):
        try:
            handle = open(path, "a")  # noqa: SIM115 - closed below, after the unlink
        except OSError as err:
            raise OutputError(f"cannot write {final}: {err.strerror or err}") from None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise busy from None
            try:
                if os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino:
                    raise busy
            except FileNotFoundError:
                raise busy from None
            try:
                yield
            finally:
                path.unlink(missing_ok=True)


@contextmanager
def recorded_run(
    command: str,
    out: str | Path,
    config: BaseModel | dict[str, Any],
    overwrite: bool = False,
    resume: bool = False,
    is_main: bool = True,
    seed: int | None = None,
    secret_keys: Sequence[str] = (),
    resumable: bool = True,
) -> Iterator[tuple[RunDir | None, RunRecord]]:
    """Stage a run directory, yield it with a fresh record, and write/commit on the way out.

    On success the record is written with status ``ok`` and the staging directory moves into
    place. On failure the record (status ``failed`` or ``interrupted``, the error) is written
    into the staging directory, which is kept so that ``--resume`` can pick up its
    checkpoints; an existing output directory is left untouched either way. An input error
    raised before the run wrote anything leaves nothing behind. ``secret_keys`` are config
    paths whose ``key=value`` arguments the record's copy of argv keeps without their value.
    ``resumable``: the command can continue from its checkpoints (``--resume``); the messages
    of an interrupted or re-run one say so only then.
    """
    run_dir = RunDir(out, overwrite, resume, resumable) if is_main else None
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    record = RunRecord(command=command, config=data, seed=seed,
                       argv=redact_argv(record_argv(), secret_keys))  # fmt: skip
    started = time.monotonic()
    try:
        yield run_dir, record
    except BaseException as err:
        if run_dir is None:
            raise
        if isinstance(err, ExpungeError) and not run_dir.touched:
            raise  # bad input found before anything was written: leave nothing
        interrupted = isinstance(err, KeyboardInterrupt)
        finish_record(record, started, status="interrupted" if interrupted else "failed")
        record.error = "".join(traceback.format_exception_only(type(err), err)).strip()
        write_record(run_dir.path, record)
        if interrupted and not resumable:
            raise RunInterrupted(f"interrupted; {run_dir.staging} keeps its record; this command "
                                 "starts over when run again") from err  # fmt: skip
        if interrupted:
            kept = checkpoint_steps(run_dir.staging)
            raise RunInterrupted(
                f"interrupted; {run_dir.staging} keeps the run so far"
                + (
                    f" with checkpoints up to step {kept[-1]}: run the same command with "
                    "--resume to continue from there"
                    if kept
                    else " (no checkpoint: train.save_every=N saves some)"
                )
            ) from err
        raise
    if run_dir is not None:
        record.weights_sha256 = weights_digests(run_dir.path, record.artifacts)
        finish_record(record, started)
        write_record(run_dir.path, record)
        run_dir.commit()


def staging_path(run_dir: RunDir | None, out: str | Path) -> Path:
    """Where this process writes: the staging dir on the main process, else the final path."""
    return run_dir.path if run_dir is not None else Path(out)
