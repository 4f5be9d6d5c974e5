"""What every benchmark loader shares: one source (a hub id or a local directory in the hub's
layout), its configs read once, and errors that name the config or split a source lacks."""

from __future__ import annotations

from pathlib import Path

from expunge.data.examples import Example
from expunge.data.loaders import dataset_configs, dataset_splits, load_hf_dataset
from expunge.errors import DataError

QA_COLUMNS = {"prompt": "question", "response": "answer"}  # TOFU's and MUSE's Q/A columns
TEXT_COLUMNS = {"text": "text"}


def is_local(spec: str) -> bool:
    """A path rather than a hub id: an existing directory, or text that can only be a path."""
    return Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")) or "/" not in spec


class Source:
    """One benchmark source. ``require`` checks a config/split before anything is loaded, so a
    source missing a piece fails naming it, and nothing half-loaded is returned."""

    def __init__(self, benchmark: str, spec: str) -> None:
        self.benchmark = benchmark
        self.spec = spec
        if is_local(spec) and not Path(spec).expanduser().is_dir():
            raise DataError(f"{benchmark} source not found: {spec} (a directory or a hub id)")
        self._configs: list[str] | None = None
        self._splits: dict[str, list[str]] = {}

    def configs(self) -> list[str]:
        if self._configs is None:
            self._configs = dataset_configs(self.spec)
        return self._configs

    def has(self, config: str) -> bool:
        return config in self.configs()

    def splits(self, config: str) -> list[str]:
        if config not in self._splits:
            self._splits[config] = dataset_splits(self.spec, config)
        return self._splits[config]

    def require(self, config: str, split: str = "train") -> None:
        if not self.has(config):
            raise DataError(
                f"{self.spec} lacks the {self.benchmark} config {config!r}; "
                f"it has: {', '.join(self.configs())}"
            )
        if split not in self.splits(config):
            raise DataError(
                f"{self.spec} lacks the split {split!r} of the {self.benchmark} config "
                f"{config!r}; it has: {', '.join(self.splits(config))}"
            )

    def load(
        self,
        config: str,
        split: str = "train",
        columns: dict[str, str] | None = None,
        max_examples: int | None = None,
    ) -> list[Example]:
        self.require(config, split)
        return load_hf_dataset(self.spec, split, columns, config, max_examples)
