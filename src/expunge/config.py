"""Typed configuration: pydantic models, YAML files, dotted ``key=value`` overrides.

A YAML file is a saved instance of a config class; the CLI takes overrides such as
``train.lr=1e-4 lora.r=16``. Unknown keys fail with the closest valid names, never silently.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from expunge.errors import ConfigError

C = TypeVar("C", bound="StrictModel")


class StrictModel(BaseModel):
    """Base of every config: unknown fields are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _words_read_as_booleans(cls, data: Any) -> Any:
        """YAML 1.1 reads on/off/yes/no as booleans; an option whose values are those words
        (``reference_cache=off``, ``add_bos=no``) gets its word back instead of refusing it."""
        if not isinstance(data, dict):
            return data
        for name, field in cls.model_fields.items():
            value = data.get(name)
            if isinstance(value, bool) and typing.get_origin(field.annotation) is typing.Literal:
                words = typing.get_args(field.annotation)
                spelled = [w for w in (("on", "yes") if value else ("off", "no")) if w in words]
                if spelled:
                    data = {**data, name: spelled[0]}
        return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = (
            deep_merge(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


def section_defaults(model_cls: type[BaseModel]) -> dict[str, Any]:
    """What each section's ``default_factory`` sets beyond its class's own defaults
    (``train: TrainSettings = Field(default_factory=lambda: TrainSettings(**STRESS_TRAIN))``).

    Merged under the user's values, so that ``train.lr=1e-3`` changes the rate and keeps the
    section's other defaults: pydantic builds a section given as a dict from its class
    defaults, and dropped the factory's (LoRA on all-linear fell back to q_proj/v_proj)."""
    out: dict[str, Any] = {}
    for name, info in model_cls.model_fields.items():
        if info.default_factory is None or _sub_model(model_cls, name) is None:
            continue
        try:
            value = info.default_factory()  # type: ignore[call-arg]
        except TypeError:  # a factory that takes the validated data: nothing to say here
            continue
        if isinstance(value, BaseModel):
            # only what the factory set: a value a validator derived from the others (a
            # trigger's parts from its type) must follow them when the user changes them
            dumped = value.model_dump(
                mode="json", include=value.model_fields_set, exclude_defaults=True
            )
            if dumped:
                out[name] = dumped
    return out


class PresetConfig(StrictModel):
    """A config whose sections default to the chosen preset's values.

    ``PRESETS`` maps a preset's name to the values it sets (a key ``NAME:VARIANT`` adds values
    for a variant, e.g. ``demo:rmu``); ``DEFAULT_PRESET`` is the one used when none is named.
    ``paper`` (the authors' settings) and ``demo`` (sized for the embedded model on a CPU) are
    accepted by every config, so a study can set one preset for all its stages.
    """

    DEFAULT_PRESET: ClassVar[str] = "paper"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    preset: str = "paper"

    @classmethod
    def preset_names(cls, data: dict[str, Any]) -> list[str]:
        """The PRESETS entries merged under the user's values, later ones winning."""
        return [data.get("preset", cls.DEFAULT_PRESET)]

    @classmethod
    def known_presets(cls) -> list[str]:
        return sorted({"paper", "demo", *(n.split(":")[0] for n in cls.PRESETS)})

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = {"preset": cls.DEFAULT_PRESET, **data}
        if data["preset"] not in cls.known_presets():
            raise ValueError(f"unknown preset {data['preset']!r}"
                             f"{suggest(str(data['preset']), cls.known_presets())}; "
                             f"known: {', '.join(cls.known_presets())}")  # fmt: skip
        defaults: dict[str, Any] = {}
        for name in cls.preset_names(data):
            defaults = deep_merge(defaults, cls.PRESETS.get(name, {}))
        # a preset's section is complete (relative to the class defaults); a section no preset
        # names keeps its default_factory's values under the user's
        for key, value in section_defaults(cls).items():
            defaults.setdefault(key, value)
        return deep_merge(defaults, data)


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


def entry_name(entry: Any) -> str | None:
    """How a list entry is addressed by name in overrides (``erasers.meraser.n_erase=16``)."""
    if not isinstance(entry, dict):
        return None
    for key in ("name", "id", "method", "stressor", "detector", "scheme"):
        if entry.get(key) is not None:
            return str(entry[key])
    return None


# Keys of free-form sections whose override text is kept as written (a name, a path).
TEXT_KEYS = frozenset({"name", "id", "file", "out", "path"})


def set_dotted(data: dict[str, Any], dotted: str, value: Any, model_cls: type[BaseModel]) -> None:
    """Set ``data[a][b][c] = value`` for ``a.b.c``, checking every key against the schema.

    Below a list, a part names an entry by index or by name (``entry_name``); below a
    free-form ``dict`` field, any key is allowed. The one override parser of every config.
    """
    parts = dotted.split(".")
    node: Any = data
    cls: type[BaseModel] | None = model_cls
    depth = 0
    while depth < len(parts):
        part = parts[depth]
        path = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            index, used = _list_entry(node, parts[depth:], path)
            node, cls, depth = node[index], None, depth + used
            if depth == len(parts):
                raise ConfigError(f"{dotted!r} names a whole entry; set one of its keys")
            continue
        if cls is not None and part not in cls.model_fields:
            raise ConfigError(f"unknown config key {path!r}{_suggest_key(cls, parts, depth)}")
        if depth == len(parts) - 1:
            free_text = cls is None and part in TEXT_KEYS and isinstance(value, str)
            node[part] = value if free_text else _typed(value, cls, part)
            return
        sub_cls = _sub_model(cls, part) if cls is not None else None
        child = node.get(part)
        if isinstance(child, str) and sub_cls is not None and "name" in sub_cls.model_fields:
            child = {"name": child}  # the shorthand ``model: NAME``
        if child is None:
            child = {}
        if not isinstance(child, dict | list):
            raise ConfigError(f"{path!r} is not a section; cannot set {dotted!r}")
        node[part] = child
        node, cls, depth = child, sub_cls, depth + 1


def nested_keys(model_cls: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key of a config, nested sections included."""
    keys = []
    for name in model_cls.model_fields:
        keys.append(prefix + name)
        sub = _sub_model(model_cls, name)
        if sub is not None:
            keys.extend(nested_keys(sub, f"{prefix}{name}."))
    return keys


def _suggest_key(cls: type[BaseModel], parts: list[str], depth: int) -> str:
    """A suggestion among the keys at this level, else among every nested key of the config
    (``lr=1e-4`` on an eraser suggests ``erase.lr`` and ``recover.lr``)."""
    near = suggest(parts[depth], _field_names(cls))
    if near:
        return near
    nested = [key for key in nested_keys(cls) if "." in key]
    wanted = ".".join(parts[depth:])
    close = difflib.get_close_matches(wanted, nested, n=3, cutoff=0.6)
    leaf = [k for k in nested if k.rsplit(".", 1)[-1] == parts[-1]][:3]
    found = list(dict.fromkeys(close + leaf))[:3]
    return f" (did you mean {' or '.join(repr(k) for k in found)}?)" if found else ""


def _list_entry(entries: list[Any], parts: list[str], where: str) -> tuple[int, int]:
    """(index, parts used) of the entry the next parts name; a name may hold dots itself."""
    names = [entry_name(e) for e in entries]
    for used in range(len(parts), 0, -1):
        key = ".".join(parts[:used])
        if key in names:
            return names.index(key), used
    return _list_index(entries, parts[0], where), 1


def _list_index(entries: list[Any], key: str, where: str) -> int:
    if key.isdigit():
        if int(key) >= len(entries):
            raise ConfigError(f"{where}: there are only {len(entries)} entries")
        return int(key)
    names = [entry_name(e) for e in entries]
    if key not in names:
        known = [n for n in names if n]
        raise ConfigError(f"{where}: no entry named {key!r}{suggest(key, known)}; entries: {known}")
    return names.index(key)


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


class Locator:
    """Maps a path in a YAML file's tree (``("erasers", 1, "method")``) to ``file:line``."""

    def __init__(self, source: str, text: str | None = None, shadowed: Iterable[str] = ()) -> None:
        self.source = source
        # dotted keys set over the file's (flags, key=value): the file's line is not their source
        self.shadowed = frozenset(shadowed)
        self.root = None
        if text is not None:
            with contextlib.suppress(yaml.YAMLError):
                self.root = yaml.compose(text)

    def line(self, *path: str | int) -> int | None:
        """The line of the deepest part of ``path`` the file holds (None: not even the first,
        or the value there was set over the file's)."""
        dotted = ".".join(str(part) for part in path)
        if any(dotted == key or dotted.startswith(key + ".") for key in self.shadowed):
            return None
        node, line = self.root, None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                found = [v for k, v in node.value if getattr(k, "value", None) == part]
                if not found:
                    break
                line = next(k for k, v in node.value if v is found[0]).start_mark.line + 1
                node = found[0]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if part >= len(node.value):
                    break
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                break
        return line

    def __call__(self, *path: str | int) -> str:
        line = self.line(*path)
        where = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in path)
        where = where.replace(".[", "[")
        return f"{self.source}:{line} ({where})" if line else f"{self.source} ({where})"


def validation_problems(err: ValidationError) -> list[str]:
    """Each pydantic problem as 'field.path: message' (how every expunge error names a field)."""
    problems = []
    for problem in err.errors():
        loc = ".".join(str(p) for p in problem["loc"])
        msg = problem["msg"].removeprefix("Value error, ")
        problems.append(f"{loc}: {msg}" if loc else msg)
    return problems


def _format_validation_error(err: ValidationError, source: str,
                             locate: Locator | None = None) -> str:  # fmt: skip
    lines = []
    for problem, detail in zip(validation_problems(err), err.errors(), strict=True):
        line = locate.line(*detail["loc"]) if locate is not None else None
        lines.append(f"  {locate.source}:{line}: {problem}" if line else f"  {problem}")
    return f"invalid configuration ({source}):\n" + "\n".join(lines)


def build_config(
    model_cls: type[C],
    base: dict[str, Any] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    source: str = "overrides",
    locate: Locator | None = None,
) -> C:
    """Validate ``base`` (e.g. from YAML) with dotted overrides applied on top. ``locate``
    (the YAML file ``base`` was read from) puts the file's line before each problem it holds."""
    data = copy.deepcopy(dict(base or {}))
    for key, raw in parse_overrides(overrides):
        set_dotted(data, key, raw, model_cls)
    try:
        _check_unknown(data, model_cls, prefix="")
    except UnknownKeyError as err:
        line = locate.line(*err.path) if locate is not None else None
        raise ConfigError(f"{locate.source}:{line}: {err}" if line else str(err)) from None
    if not issubclass(model_cls, PresetConfig):  # a PresetConfig merges them under its presets
        factory = section_defaults(model_cls)
        for key in factory.keys() & {k for k, v in data.items() if isinstance(v, dict)}:
            data[key] = deep_merge(factory[key], data[key])
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source, locate)) from None


class UnknownKeyError(ConfigError):
    """A config key no field has; ``path`` is where it sits in the config's tree."""

    def __init__(self, message: str, path: tuple[str, ...]) -> None:
        super().__init__(message)
        self.path = path


def _check_unknown(data: dict[str, Any], model_cls: type[BaseModel], prefix: str) -> None:
    """Reject unknown keys anywhere in the tree, with suggestions, before pydantic does."""
    for key, value in data.items():
        if key not in model_cls.model_fields:
            raise UnknownKeyError(
                f"unknown config key {prefix + key!r}{suggest(key, _field_names(model_cls))}",
                tuple(f"{prefix}{key}".split(".")),
            )
        sub = _sub_model(model_cls, key)
        if sub is not None and isinstance(value, dict):
            _check_unknown(value, sub, prefix=f"{prefix}{key}.")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    from expunge.records import read_text  # records imports this module's neighbours only

    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(read_text(path, "config file"))
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
