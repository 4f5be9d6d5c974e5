"""Atomic file writes, UTF-8 reads with a line-naming error, and the permission rule.

**The permission rule** for every file expunge writes beside model weights: a file that holds a
secret or a model's own outputs — ``imprint.json`` and the data sets exported from an imprint,
sampled responses, cached answers of a model — is private (``PRIVATE_FILE``, 0600; a cache
directory of such files ``PRIVATE_DIR``, 0700). Every other file — records, ``metrics.jsonl``,
reports, model cards, plans — holds neither (secret config values are redacted out of it, see
``redact_fields``) and is written like the weights themselves, with the user's umask.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from expunge.errors import DataError

PRIVATE_FILE = 0o600  # secrets and model outputs: readable by their owner only
PRIVATE_DIR = 0o700  # a directory of such files (the cache of a model's answers)


def atomic_write_text(path: str | Path, text: str, mode: int | None = None) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename: readers never see half."""
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> None:
    """``atomic_write_text`` for bytes (images, archives)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600 files; ordinary outputs get the usual umask-based mode.
        os.fchmod(fd, mode if mode is not None else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 file's text; a file in another encoding is a ``DataError`` naming the line."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(not_utf8(path, data, err, what)) from None


def not_utf8(path: Path, data: bytes, err: UnicodeDecodeError, what: str = "file",
             line: int | None = None) -> str:  # fmt: skip
    """The one-line message for bytes of ``path`` that are not UTF-8."""
    line = line if line is not None else data[: err.start].count(b"\n") + 1
    return (f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); expunge reads every "
            f"{what} as UTF-8: re-save it in that encoding")  # fmt: skip


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's content, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_json(path: str | Path, data: Any, mode: int | None = None) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", mode)
