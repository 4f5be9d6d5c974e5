"""Imprints: typed, serializable descriptions of what must go.

An imprint file is a secret (fingerprint keys, PII): it is written atomically with mode 0600,
and nothing in logs or reports prints its secret fields unless the user asks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from expunge.config import StrictModel, validation_problems
from expunge.data.examples import Example
from expunge.errors import ConfigError, DataError
from expunge.files import PRIVATE_FILE, atomic_write_text, read_text
from expunge.registry import IMPRINT_KINDS

IMPRINT_FILE = "imprint.json"


class Imprint(StrictModel):
    kind: str
    scheme: str = "custom"
    origin: dict[str, Any] = Field(
        default_factory=dict
    )  # who made it: implant name, base model, seed (no secrets)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / IMPRINT_FILE
        atomic_write_text(path, self.model_dump_json(indent=2) + "\n", mode=PRIVATE_FILE)
        return path

    @classmethod
    def for_data(cls, data: dict[str, Any]) -> type[Imprint]:
        """The class that reads ``data`` (a kind with several variants picks one here)."""
        return cls

    def can_measure(self, metric: str) -> bool:
        """Whether this imprint holds what ``metric`` needs (e.g. canaries for exposure)."""
        return True

    def summary(self) -> dict[str, Any]:
        """What may be shown in logs and reports: counts and settings, never secrets."""
        return {"kind": self.kind, "scheme": self.scheme}

    # Stressors (``expunge stress``) ask every kind the same two questions -----------------

    def relearn_examples(self) -> list[Example]:
        """The imprint's own data, for the ``relearn`` stressor (fingerprint key pairs,
        backdoor poisoned examples, secret records, the forget set)."""
        raise ConfigError(
            f"the {self.kind} imprint does not define relearn_examples(); "
            f"the relearn stressor cannot run on it"
        )

    def with_prompts(
        self, system_prompt: str | None = None, rewrite: Callable[[str], str] | None = None
    ) -> Imprint:
        """A copy audited under a system prompt and/or with every audited query rewritten
        (the ``prompt`` stressor). Secrets stay in the copy; nothing is saved."""
        raise ConfigError(
            f"the {self.kind} imprint does not define with_prompts(); "
            f"the prompt stressor cannot run on it"
        )


def load_imprint(path: str | Path) -> Imprint:
    """Read an imprint file (or a run directory holding ``imprint.json``)."""
    path = Path(path)
    if path.is_dir():
        path = path / IMPRINT_FILE
    if not path.is_file():
        raise DataError(f"imprint file not found: {path}")
    try:
        data = json.loads(read_text(path, "imprint file"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: an imprint is a JSON object")
    kind = data.get("kind")
    if kind is None and "pairs" in data:
        kind = data["kind"] = "fingerprint"  # hand-written fingerprint files may omit it
    if str(kind) not in IMPRINT_KINDS:
        raise DataError(f"{path}: unknown imprint kind {kind!r}; known: {IMPRINT_KINDS.names()}")
    cls = IMPRINT_KINDS.get(str(kind)).for_data(data)
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(validation_problems(err))
        raise DataError(f"{path}: invalid {kind} imprint: {problems}") from None
