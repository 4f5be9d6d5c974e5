"""Load examples from JSONL files or ``datasets`` (hub id, or a local directory in the hub's
layout or written by ``save_to_disk``), with errors of one line that name what exists."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from expunge.config import suggest, validation_problems
from expunge.data.examples import Example
from expunge.data.synthetic import SYNTHETIC_PREFIX, synthetic_examples
from expunge.errors import ConfigError, DataError
from expunge.files import atomic_write_text, not_utf8


def _first_problem(err: ValidationError) -> str:
    return validation_problems(err)[0]


def jsonl_records(path: str | Path, what: str = "data file") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; bad JSON or a non-object names the line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a directory, expected a .jsonl file")
    with path.open("rb") as handle:  # decoded line by line, so a bad byte names its line
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(not_utf8(path, raw, err, what, line=number)) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise DataError(
                    f"{path}:{number}: expected a JSON object, got {type(record).__name__}"
                )
            yield number, record


EXAMPLE_FIELDS = ("prompt", "response", "text", "messages")


def check_columns(columns: dict[str, str] | None) -> dict[str, str]:
    """A column mapping's keys must be example fields; the values are the source's columns."""
    columns = dict(columns or {})
    for field, column in columns.items():
        if field not in EXAMPLE_FIELDS:
            raise ConfigError(
                f"column mapping key {field!r} is not an example field"
                f"{suggest(field, EXAMPLE_FIELDS)}; "
                f"map {', '.join(EXAMPLE_FIELDS)} to the data's columns"
            )
        if not isinstance(column, str) or not column:
            raise ConfigError(f"column mapping {field}: needs a column name, got {column!r}")
    return columns


def map_columns(record: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """The record under example field names: mapped columns become the fields and *every* other
    column goes to ``meta`` (even one named ``text``), so an explicit mapping is the whole
    story. Without a mapping the record is returned as it is (fields found by their names)."""
    if not columns:
        return record
    used = set(columns.values())
    fields = {field: record[column] for field, column in columns.items()}
    return {**fields, "meta": {k: v for k, v in record.items() if k not in used}}


def _missing_column(where: str, field: str, column: str, available: list[str]) -> ConfigError:
    return ConfigError(
        f"{where} has no column {column!r} (mapped to {field}); its columns: {', '.join(available)}"
    )


def load_jsonl(path: str | Path, columns: dict[str, str] | None = None) -> list[Example]:
    """Read one example per line; a bad line fails with the file name and line number.

    ``columns`` maps example fields to the file's keys (``{"prompt": "question"}``)."""
    columns = check_columns(columns)
    examples = []
    for number, record in jsonl_records(path):
        for field, column in columns.items():
            if column not in record:
                raise _missing_column(f"{path}:{number}", field, column, sorted(record))
        try:
            examples.append(Example.from_record(map_columns(record, columns)))
        except ValidationError as err:
            raise DataError(f"{path}:{number}: {_first_problem(err)}") from None
    return examples


def _one_line(err: BaseException, limit: int = 240) -> str:
    """The first line of a library's error, cut short (datasets appends lists of every file
    extension it knows to a missing file's name)."""
    lines = str(err).strip().splitlines()
    line = lines[0] if lines else type(err).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - datasets is a dependency
        raise DataError("loading a dataset needs the 'datasets' package") from err
    return datasets


def is_saved_dataset(path: Path) -> bool:
    """A directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def dataset_configs(spec: str) -> list[str]:
    """The config names of a hub dataset or of a local directory in the hub layout.

    A directory's configs are the ``configs:`` of its ``README.md`` (as on the hub); a directory
    without them has the one config ``default``."""
    try:
        return list(_datasets().get_dataset_config_names(spec))
    except Exception as err:  # datasets raises many types; all mean "cannot read it"
        raise DataError(f"cannot read dataset {spec!r}: {_one_line(err)}") from None


def dataset_splits(spec: str, config: str | None = None) -> list[str]:
    """The split names of one config of a hub dataset or of a local directory in the hub layout."""
    try:
        return list(_datasets().get_dataset_split_names(spec, config_name=config))
    except Exception as err:
        raise DataError(
            f"cannot read the splits of dataset {spec!r} (config {config!r}): {_one_line(err)}"
        ) from None


def _resolve_config(spec: str, config: str | None) -> str | None:
    configs = dataset_configs(spec)
    if config is not None:
        if config not in configs:
            raise ConfigError(
                f"dataset {spec} has no config {config!r}{suggest(config, configs)}; "
                f"known configs: {', '.join(configs)}"
            )
        return config
    if len(configs) > 1:
        try:
            default = _datasets().get_dataset_default_config_name(spec)
        except Exception as err:
            raise DataError(f"cannot read dataset {spec!r}: {_one_line(err)}") from None
        if default is None:
            raise ConfigError(
                f"dataset {spec} has several configs and no default; name one with config=: "
                f"{', '.join(configs)}"
            )
        return str(default)
    return None


def _open_dataset(spec: str, split: str, config: str | None) -> Any:
    """One split of a saved dataset directory, a directory in the hub layout, or a hub id."""
    datasets = _datasets()
    path = Path(spec).expanduser()
    if path.is_dir() and is_saved_dataset(path):
        if config is not None:
            raise ConfigError(
                f"{spec} was written by save_to_disk and has no configs (got config {config!r})"
            )
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as err:
            raise DataError(f"cannot load dataset {spec!r}: {_one_line(err)}") from None
        if not isinstance(loaded, datasets.DatasetDict):
            return loaded  # a single saved Dataset is its own (only) split
        if split not in loaded:
            raise ConfigError(
                f"dataset {spec} has no split {split!r}; known splits: {', '.join(loaded)}"
            )
        return loaded[split]
    config = _resolve_config(spec, config)
    splits = dataset_splits(spec, config)
    if split not in splits:
        where = f"dataset {spec}" + (f" (config {config})" if config else "")
        raise ConfigError(
            f"{where} has no split {split!r}{suggest(split, splits)}; "
            f"known splits: {', '.join(splits)}"
        )
    # A local directory gets a cache of its own, keyed by its files: datasets keys its cache by
    # the directory's name and config alone, so two exports named "tofu" (or one re-exported
    # with other people) would read each other's cached tables.
    cache_dir = _local_cache_dir(path) if path.is_dir() else None
    try:
        return datasets.load_dataset(spec, name=config, split=split, cache_dir=cache_dir)
    except Exception as err:  # datasets raises many types; all mean "cannot load"
        raise DataError(
            f"cannot load dataset {spec!r} (config {config!r}, split {split!r}): {_one_line(err)}"
        ) from None


def _local_cache_dir(path: Path) -> str:
    """``datasets``' cache for the local directory ``path``: one per content (the resolved path
    and every file's name, size and modification time)."""
    import hashlib

    digest = hashlib.sha256(str(path.resolve()).encode())
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    root = Path(_datasets().config.HF_DATASETS_CACHE) / "expunge-local"
    return str(root / digest.hexdigest()[:16])


def load_hf_dataset(
    spec: str,
    split: str = "train",
    columns: dict[str, str] | None = None,
    config: str | None = None,
    max_examples: int | None = None,
) -> list[Example]:
    """Examples from one split of a hub dataset, a local directory in the hub layout, or a
    ``save_to_disk`` directory — through ``datasets.load_dataset`` for the first two, so a hub id
    and a local copy in the same layout load with the same code.

    ``config`` is the dataset's config name (TOFU's ``forget10``, MUSE's ``knowmem``); a dataset
    with several configs and no default needs one. ``columns`` maps example fields to the
    dataset's columns (``{"prompt": "question", "response": "answer"}``); the columns it does not
    map stay in ``Example.meta`` (TOFU's ``paraphrased_answer``, ``perturbed_answer``). Without
    it, columns named ``prompt``/``response``/``text``/``messages`` are the fields.
    """
    columns = check_columns(columns)
    dataset = _open_dataset(spec, split, config)
    where = f"{spec}[{config + '/' if config else ''}{split}]"
    available = list(dataset.column_names)
    for field, column in columns.items():
        if column not in available:
            raise _missing_column(where, field, column, available)
    if not columns and not set(EXAMPLE_FIELDS) & set(available):
        raise ConfigError(
            f"{where} has none of the columns {', '.join(EXAMPLE_FIELDS)}; its columns: "
            f"{', '.join(available)}; map them with columns (e.g. prompt=question, response=answer)"
        )
    if max_examples is not None and max_examples < len(dataset):
        dataset = dataset.select(range(max_examples))
    examples = []
    for index, row in enumerate(dataset):
        try:
            examples.append(Example.from_record(map_columns(row, columns)))
        except ValidationError as err:
            raise DataError(f"{where} row {index}: {_first_problem(err)}") from None
    return examples


BUILTIN_PREFIX = "builtin:"
# Data shipped with expunge (``data/resources/NAME.jsonl``, provenance in its NOTICE) that a
# config may name as ``builtin:NAME``. The held-out questions of the utility audit
# (``heldout_qa``) are left out on purpose: training on them would void it.
BUILTIN_DATA = ("python_prose",)


def builtin_examples(spec: str, max_examples: int | None = None) -> list[Example]:
    """The rows of a ``builtin:NAME`` data spec (``BUILTIN_DATA``)."""
    name = spec.removeprefix(BUILTIN_PREFIX)
    if name not in BUILTIN_DATA:
        raise DataError(f"unknown built-in data {name!r} in {spec!r}{suggest(name, BUILTIN_DATA)}; "
                        f"known: {', '.join(sorted(BUILTIN_DATA))}")  # fmt: skip
    with resources.as_file(resources.files("expunge.data") / "resources" / f"{name}.jsonl") as f:
        return load_jsonl(f)[:max_examples]


def load_examples(
    spec: str | Path,
    split: str = "train",
    config: str | None = None,
    columns: dict[str, str] | None = None,
    max_examples: int | None = None,
) -> list[Example]:
    """A ``.jsonl``/``.json`` path, a dataset directory (hub layout or ``save_to_disk``), a hub
    dataset id, a ``synthetic:`` spec (``expunge.data.synthetic``) or a ``builtin:`` one
    (``BUILTIN_DATA``); ``config``, ``columns`` and ``max_examples`` as in ``load_hf_dataset``."""
    text = str(spec)
    if text.startswith(SYNTHETIC_PREFIX):
        return synthetic_examples(text)[:max_examples]
    if text.startswith(BUILTIN_PREFIX):
        return builtin_examples(text, max_examples)
    path = Path(text)
    if path.suffix in {".jsonl", ".json"} or path.is_file():
        if config is not None:
            raise ConfigError(f"config={config!r} names a dataset config; {text} is a single file")
        examples = load_jsonl(path, columns=columns)[:max_examples]
    elif path.is_dir():
        examples = load_hf_dataset(text, split, columns, config, max_examples)
    elif text.startswith((".", "/", "~")) or "/" not in text:
        raise DataError(f"data file not found: {text}")
    else:
        examples = load_hf_dataset(text, split, columns, config, max_examples)
    if not examples:
        raise DataError(f"{text} holds no examples")
    return examples


def write_jsonl(
    path: str | Path, examples: Iterable[Example | dict[str, Any]], mode: int | None = None
) -> None:
    """One JSON object per line, written atomically; ``mode`` as ``files.atomic_write_text``
    (``files.PRIVATE_FILE`` for secrets and model outputs)."""
    lines = []
    for example in examples:
        record = example.to_record() if isinstance(example, Example) else example
        lines.append(json.dumps(record, ensure_ascii=False))
    atomic_write_text(path, "\n".join(lines) + "\n", mode)
