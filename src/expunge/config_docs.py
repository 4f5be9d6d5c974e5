"""A config's keys, types, defaults and help, for ``expunge config VERB [NAME]``.

The help of a field is its ``description``, else the comment on its line in the source (the
codebase's habit: ``name: type = default  # help``) or on the line above it.
"""

from __future__ import annotations

import inspect
import json
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from expunge.config import _sub_model


def field_help(model_cls: type[BaseModel]) -> dict[str, str]:
    """Each field's one-line help: its ``description``, else the comment on its line in the
    source (``name: type = default  # help``) or on the line above it."""
    helps: dict[str, str] = {}
    for klass in reversed(model_cls.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, BaseModel)) or klass is BaseModel:
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        for index, line in enumerate(lines):
            name = line.strip().split(":", 1)[0]
            if name not in inspect.get_annotations(klass):
                continue
            comment = line.partition("  # ")[2].strip()
            above = lines[index - 1].strip() if index else ""
            if not comment and above.startswith("# "):
                comment = above[2:]
            if comment and "fmt:" not in comment:
                helps[name] = comment
    for name, info in model_cls.model_fields.items():
        if info.description:
            helps[name] = info.description
    return helps


def describe(
    model_cls: type[BaseModel], prefix: str = "", defaults: dict[str, Any] | None = None
) -> list[tuple[str, str, str, str]]:
    """``(dotted key, type, default, help)`` for every field, nested sections expanded; the
    defaults are those of ``model_cls()`` (its default preset, where it has presets)."""
    if defaults is None:
        defaults = model_cls().model_dump(mode="json") if _constructible(model_cls) else {}
    rows = []
    helps = field_help(model_cls)
    for name, info in model_cls.model_fields.items():
        sub = _sub_model(model_cls, name)
        key = prefix + name
        if sub is not None and isinstance(defaults.get(name), dict):
            rows.append((key, sub.__name__, "(section)", helps.get(name, "")))
            rows.extend(describe(sub, key + ".", defaults[name]))
            continue
        default = json.dumps(defaults[name]) if name in defaults else "(required)"
        rows.append((key, type_name(info.annotation), default, helps.get(name, "")))
    return rows


def type_name(annotation: Any) -> str:
    """A readable type: ``int``, ``str | None``, ``one of a|b``, ``list[str]``."""
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + "|".join(str(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _constructible(model_cls: type[BaseModel]) -> bool:
    try:
        model_cls()
    except ValidationError:
        return False
    return True
