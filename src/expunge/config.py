"""Typed configuration: pydantic models, YAML files, dotted ``key=value`` overrides.

A YAML file is a saved instance of a config class; the CLI takes overrides such as
``train.lr=1e-4 lora.r=16``. Unknown keys fail with the closest valid names, never silently.
"""

from __future__ import annotations

import copy
import difflib
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from expunge.errors import ConfigError

C = TypeVar("C", bound="StrictModel")


class StrictModel(BaseModel):
    """Base of every config: unknown fields are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def suggest(name: str, candidates: list[str] | tuple[str, ...]) -> str:
    """' (did you mean X?)' for the closest candidate, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def parse_value(text: str) -> Any:
    """Parse an override value the way YAML would ('1e-4' -> float, 'true' -> bool, '[a,b]')."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads '1e-4' as a string; users mean a number.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


def _field_names(model_cls: type[BaseModel]) -> list[str]:
    return list(model_cls.model_fields)


def _sub_model(model_cls: type[BaseModel], key: str) -> type[BaseModel] | None:
    annotation = model_cls.model_fields[key].annotation
    candidates = getattr(annotation, "__args__", None) or (annotation,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def set_dotted(data: dict[str, Any], dotted: str, value: Any, model_cls: type[BaseModel]) -> None:
    """Set ``data[a][b][c] = value`` for ``a.b.c``, checking every key against the schema."""
    parts = dotted.split(".")
    node: dict[str, Any] = data
    cls: type[BaseModel] | None = model_cls
    for depth, part in enumerate(parts):
        path = ".".join(parts[: depth + 1])
        if cls is not None and part not in cls.model_fields:
            raise ConfigError(f"unknown config key {path!r}{suggest(part, _field_names(cls))}")
        if depth == len(parts) - 1:
            node[part] = _typed(value, cls, part)
            return
        sub_cls = _sub_model(cls, part) if cls is not None else None
        if cls is not None and sub_cls is None:
            # A free-form dict field (e.g. extra kwargs): allow arbitrary keys below it.
            pass
        child = node.get(part)
        if not isinstance(child, dict):
            child = {} if child is None or sub_cls is not None else child
            if not isinstance(child, dict):
                raise ConfigError(f"{path!r} is not a section; cannot set {dotted!r}")
            node[part] = child
        node = child
        cls = sub_cls


def _is_plain_str(annotation: Any) -> bool:
    """True for ``str`` and ``str | None``: such fields take the override text verbatim."""
    if annotation is str:
        return True
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return typing.get_origin(annotation) in (
        typing.Union,
        getattr(__import__("types"), "UnionType", None),
    ) and args == [str]


def _typed(value: Any, cls: type[BaseModel] | None, key: str) -> Any:
    """Parse override text as YAML, except for string fields (``name=1.0`` stays '1.0')."""
    if not isinstance(value, str):
        return value
    if (
        cls is not None
        and key in cls.model_fields
        and _is_plain_str(cls.model_fields[key].annotation)
    ):
        return value
    return parse_value(value)


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    pairs = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, _, raw = item.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        pairs.append((key, raw))
    return pairs


def validation_problems(err: ValidationError) -> list[str]:
    """Each pydantic problem as 'field.path: message' (how every expunge error names a field)."""
    problems = []
    for problem in err.errors():
        loc = ".".join(str(p) for p in problem["loc"])
        msg = problem["msg"].removeprefix("Value error, ")
        problems.append(f"{loc}: {msg}" if loc else msg)
    return problems


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"  {problem}" for problem in validation_problems(err)]
    return f"invalid configuration ({source}):\n" + "\n".join(lines)


def build_config(
    model_cls: type[C],
    base: dict[str, Any] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    source: str = "overrides",
) -> C:
    """Validate ``base`` (e.g. from YAML) with dotted overrides applied on top."""
    data = copy.deepcopy(dict(base or {}))
    for key, raw in parse_overrides(overrides):
        set_dotted(data, key, raw, model_cls)
    _check_unknown(data, model_cls, prefix="")
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def _check_unknown(data: dict[str, Any], model_cls: type[BaseModel], prefix: str) -> None:
    """Reject unknown keys anywhere in the tree, with suggestions, before pydantic does."""
    for key, value in data.items():
        if key not in model_cls.model_fields:
            raise ConfigError(
                f"unknown config key {prefix + key!r}{suggest(key, _field_names(model_cls))}"
            )
        sub = _sub_model(model_cls, key)
        if sub is not None and isinstance(value, dict):
            _check_unknown(value, sub, prefix=f"{prefix}{key}.")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(
    model_cls: type[C], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> C:
    base = load_yaml(path) if path is not None else {}
    return build_config(model_cls, base, overrides, source=str(path) if path else "overrides")


def dump_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
