"""Keep imprint secrets out of reports: every string of an imprint file is a secret by default.

Records are written without secrets, but a report should not rely on every writer getting that
right: the report collects the text fields of each ``imprint.json`` under the run directories
(keys, responses, triggers, sensitive spans, forget sets) and blanks any occurrence of them in
what it renders. Settings that describe an imprint without revealing it (kind, scheme,
template, matcher, origin) are not secrets.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REDACTED = "[redacted]"
NOT_SECRET = {"kind", "scheme", "template", "matcher", "origin", "type", "position", "loss_on",
              "labels", "split", "role",
              # a generative backdoor's setting and how its target is judged ("generative",
              # "vader", "negative" would otherwise blank those words in every report)
              "setting", "judge", "judge_label", "train_file",
              # a benchmark's name and source, and its public evaluation sets (real authors,
              # world facts): what a knowledge imprint is measured on, not what it must forget
              "benchmark", "eval_sets"}  # fmt: skip
MIN_LENGTH = 4  # shorter strings (labels like "yes") would blank ordinary words everywhere


def secret_strings(value: Any, key: str | None = None) -> Iterable[str]:
    if key in NOT_SECRET:
        return
    if isinstance(value, str):
        text = value.strip()
        if len(text) >= MIN_LENGTH:
            yield text
    elif isinstance(value, dict):
        for child_key, child in value.items():
            yield from secret_strings(child, str(child_key))
    elif isinstance(value, list):
        for child in value:
            yield from secret_strings(child, key)


def imprint_files(run_dirs: Iterable[Path]) -> list[Path]:
    found: list[Path] = []
    for run_dir in run_dirs:
        found.extend(sorted(Path(run_dir).rglob("imprint.json")))
        for record in sorted(Path(run_dir).rglob("record.json")):
            try:
                data = json.loads(record.read_text())
            except (OSError, ValueError):  # unreadable: the report says so when it reads it
                continue
            # not an object (a hand-edited file): the report refuses it when it reads it
            inputs = data.get("inputs", {}) if isinstance(data, dict) else None
            named = inputs.get("imprint") if isinstance(inputs, dict) else None
            if isinstance(named, str):
                path = Path(named)
                path = path / "imprint.json" if path.is_dir() else path
                if path.is_file():
                    found.append(path)
    return sorted(set(found))


WHOLE_WORD_BELOW = 8  # a secret shorter than this is blanked only as a whole word


def _pattern(secret: str) -> str:
    """A short secret ("rain", an answer of the forget set) only as a whole word, so it does not
    blank part of another word ("retrained"); a longer one wherever it stands."""
    escaped = re.escape(secret)
    return rf"(?<!\w){escaped}(?!\w)" if len(secret) < WHOLE_WORD_BELOW else escaped


class Redactor:
    """``redactor(text)`` blanks every secret string; ``enabled=False`` passes text through."""

    def __init__(self, secrets: Iterable[str] = (), enabled: bool = True) -> None:
        self.enabled = enabled
        self.secrets = sorted(set(secrets), key=len, reverse=True) if enabled else []
        self.pattern = (
            re.compile("|".join(_pattern(s) for s in self.secrets)) if self.secrets else None
        )

    @classmethod
    def for_runs(cls, run_dirs: Iterable[Path], enabled: bool = True) -> Redactor:
        if not enabled:
            return cls(enabled=False)
        secrets: list[str] = []
        for path in imprint_files(run_dirs):
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            secrets.extend(secret_strings(data))
        return cls(secrets)

    def __call__(self, text: str) -> str:
        if self.pattern is None or not text:
            return text
        return self.pattern.sub(REDACTED, text)
