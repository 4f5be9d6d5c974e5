"""The secrets of a study config: each stage entry's ``SECRET_FIELDS``, under the entry's path.

A stage's record redacts its own secret fields. A study's record (and a bench's) holds the whole
study config, and every record of the run holds the study's command line, where the same
secrets sit under the study's paths (``imprint.implant.response``, ``erasers.NAME.trigger``,
``imprints.NAME.imprint.implant.terms``); they are redacted there by path and by value.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from expunge.config import entry_name
from expunge.errors import ConfigError
from expunge.pipeline.plan import StudyPlanner
from expunge.pipeline.spec import stage_kind
from expunge.records import redact_argv, redact_fields, redact_values, secret_values

# study sections whose entries are stage configs, and the kind of stage each entry makes
SECTIONS = {"erasers": "erase", "stress": "stress", "detect": "detect", "stages": None}


def _secret_fields(kind: str | None, entry: dict[str, Any]) -> tuple[str, ...]:
    try:
        cls, _ = StudyPlanner.stage_class(kind or stage_kind(entry, ""), entry, "")
    except (ConfigError, KeyError):  # not a valid entry: planning it says what is wrong
        return ()
    return tuple(getattr(cls, "SECRET_FIELDS", ()))


def _entries(body: dict[str, Any], prefixes: list[str]) -> Iterator[tuple[list[str], dict, tuple]]:
    """Each stage entry of a study ``body`` (a dict, changed in place by the caller): the paths
    an override may name it by (list entries by index and by name), the entry, its secret
    fields. ``imprints:`` studies are walked too."""
    implant = (body.get("imprint") or {}).get("implant")
    if isinstance(implant, dict):
        fields = _secret_fields("implant", implant)
        yield [f"{p}imprint.implant" for p in prefixes], implant, fields
    for section, kind in SECTIONS.items():
        entries = body.get(section)
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            if isinstance(entry, dict):
                names = [str(index)] + ([name] if (name := entry_name(entry)) else [])
                paths = [f"{p}{section}.{n}" for p in prefixes for n in names]
                yield paths, entry, _secret_fields(kind, entry)
    studies = body.get("imprints")
    for index, study in enumerate(studies if isinstance(studies, list) else []):
        if isinstance(study, dict):
            names = [str(index)] + ([str(study["name"])] if study.get("name") else [])
            yield from _entries(study, [f"{p}imprints.{n}." for p in prefixes for n in names])


def study_secrets(body: dict[str, Any], prefix: str = "") -> tuple[list[str], list[str]]:
    """The dotted paths (under ``prefix``) of a study config that hold secrets, and the secret
    values the config gives."""
    paths: list[str] = []
    values: list[str] = []
    for addresses, entry, fields in _entries(body, [prefix]):
        paths += [f"{address}.{field}" for address in addresses for field in fields]
        # text only: a number (a trigger's token ids) would blank every seed, step and lr equal
        # to it; those are redacted by their paths
        values += [v for v in secret_values(entry, fields) if not v.lstrip("-").isdigit()]
    return paths, values


def redact_study(body: dict[str, Any], values: list[str]) -> dict[str, Any]:
    """A copy of a study config without secrets: every entry's secret fields redacted, the
    ``quick:`` overrides that set one (by path: without ``--quick`` its value is in no entry),
    and any other string holding a secret ``value``."""
    out = json.loads(json.dumps(body, default=str))
    paths = study_secrets(out)[0]
    for _, entry, fields in _entries(out, [""]):
        entry.update(redact_fields(entry, fields))
    if isinstance(out.get("quick"), list):
        out["quick"] = redact_argv([str(item) for item in out["quick"]], paths)
    return redact_values(out, values)
