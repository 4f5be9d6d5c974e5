"""Load examples from JSONL files or ``datasets`` (local or hub), with errors that point home."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from expunge.config import StrictModel, validation_problems
from expunge.data.examples import Example
from expunge.data.synthetic import SYNTHETIC_PREFIX, synthetic_examples
from expunge.errors import DataError
from expunge.records import atomic_write_text


class DataSettings(StrictModel):
    path: str | None = None  # .jsonl file, saved dataset directory or hub dataset id
    split: str = "train"
    max_examples: int | None = Field(default=None, ge=1)


def _first_problem(err: ValidationError) -> str:
    return validation_problems(err)[0]


def jsonl_records(path: str | Path, what: str = "data file") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; bad JSON or a non-object names the line."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a directory, expected a .jsonl file")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
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


def load_jsonl(path: str | Path) -> list[Example]:
    """Read one example per line; a bad line fails with the file name and line number."""
    examples = []
    for number, record in jsonl_records(path):
        try:
            examples.append(Example.from_record(record))
        except ValidationError as err:
            raise DataError(f"{path}:{number}: {_first_problem(err)}") from None
    return examples


def load_hf_dataset(
    spec: str, split: str = "train", columns: dict[str, str] | None = None
) -> list[Example]:
    """Load a local ``datasets`` directory or a hub dataset; ``columns`` renames fields."""
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - datasets is a dependency
        raise DataError(f"loading {spec} needs the 'datasets' package") from err
    try:
        path = Path(spec)
        if path.is_dir() and (path / "dataset_info.json").exists():
            loaded = datasets.load_from_disk(str(path))
            dataset = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        else:
            dataset = datasets.load_dataset(spec, split=split)
    except Exception as err:  # datasets raises many types; all mean "cannot load"
        raise DataError(f"cannot load dataset {spec!r} (split {split!r}): {err}") from None
    examples = []
    for index, row in enumerate(dataset):
        record = {(columns or {}).get(k, k): v for k, v in row.items()}
        try:
            examples.append(Example.from_record(record))
        except ValidationError as err:
            raise DataError(f"{spec}[{split}] row {index}: {_first_problem(err)}") from None
    return examples


def load_examples(spec: str | Path, split: str = "train", **kwargs: Any) -> list[Example]:
    """A ``.jsonl``/``.json`` path, a saved dataset directory, a hub dataset id, or a
    ``synthetic:`` spec (``expunge.data.synthetic``)."""
    text = str(spec)
    if text.startswith(SYNTHETIC_PREFIX):
        return synthetic_examples(text)
    path = Path(text)
    if path.suffix in {".jsonl", ".json"} or path.is_file():
        examples = load_jsonl(path)
    elif path.is_dir():
        examples = load_hf_dataset(text, split=split, **kwargs)
    elif text.startswith((".", "/", "~")) or "/" not in text:
        raise DataError(f"data file not found: {text}")
    else:
        examples = load_hf_dataset(text, split=split, **kwargs)
    if not examples:
        raise DataError(f"{text} holds no examples")
    return examples


def write_jsonl(path: str | Path, examples: Iterable[Example | dict[str, Any]]) -> None:
    lines = []
    for example in examples:
        record = example.to_record() if isinstance(example, Example) else example
        lines.append(json.dumps(record, ensure_ascii=False))
    atomic_write_text(path, "\n".join(lines) + "\n")
