"""Write a dataset directory in the Hugging Face hub's layout, so that
``datasets.load_dataset(DIR, name=CONFIG, split=SPLIT)`` reads it exactly as it reads the hub id.

A directory holds a ``README.md`` whose YAML front matter lists ``configs:`` (the dataset card's
config section), and the data files those entries name. Two layouts, one per benchmark family:

- ``"json"`` — TOFU's (``locuslab/TOFU``, its ``README.md``): one JSON-lines file per config,
  ``<config>.json``, named by ``data_files: <config>.json``; every config has the one split
  ``train``::

      configs:
      - config_name: full
        data_files: full.json
        default: true

- ``"parquet"`` — the layout ``push_to_hub`` writes, MUSE's (``muse-bench/MUSE-News``,
  ``MUSE-Books``): ``<config>/<split>-00000-of-00001.parquet``, named per split::

      configs:
      - config_name: knowmem
        data_files:
        - split: forget_qa
          path: knowmem/forget_qa-*
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml

from expunge.errors import ConfigError

Rows = list[dict[str, Any]]
Layout = dict[str, dict[str, Rows]]  # config -> split -> rows


def card_yaml(layout: Layout, fmt: Literal["json", "parquet"], default: str | None) -> str:
    """The ``configs:`` front matter for ``layout`` in the ``fmt`` layout."""
    entries: list[dict[str, Any]] = []
    for config, splits in layout.items():
        entry: dict[str, Any] = {"config_name": config}
        if fmt == "json":
            entry["data_files"] = f"{config}.json"
        else:
            entry["data_files"] = [
                {"split": split, "path": f"{config}/{split}-*"} for split in splits
            ]
        if config == default:
            entry["default"] = True
        entries.append(entry)
    return yaml.safe_dump({"configs": entries}, sort_keys=False, allow_unicode=True)


def write_hub_layout(
    directory: str | Path,
    layout: Layout,
    fmt: Literal["json", "parquet"],
    default: str | None = None,
    card: str = "",
) -> list[Path]:
    """Write ``layout`` (config → split → rows) into ``directory`` (which must exist and is
    normally a staging directory) with a ``README.md`` holding ``card`` after the front matter.
    Returns the files written, README first."""
    directory = Path(directory)
    if not layout or any(not splits or not all(splits.values()) for splits in layout.values()):
        raise ConfigError("a hub-layout dataset needs at least one config, each split non-empty")
    if default is not None and default not in layout:
        raise ConfigError(f"default config {default!r} is not among {', '.join(layout)}")
    if fmt == "json" and any(list(splits) != ["train"] for splits in layout.values()):
        # data_files: <config>.json gives exactly one split, named train by datasets
        raise ConfigError("the json (TOFU) layout holds one 'train' split per config")
    readme = directory / "README.md"
    readme.write_text(f"---\n{card_yaml(layout, fmt, default)}---\n{card}", encoding="utf-8")
    written = [readme]
    for config, splits in layout.items():
        for split, rows in splits.items():
            if fmt == "json":
                path = directory / f"{config}.json"
                lines = (json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
                path.write_text("".join(lines), encoding="utf-8")
            else:
                import pyarrow as pa
                import pyarrow.parquet as pq

                path = directory / config / f"{split}-00000-of-00001.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.Table.from_pylist(rows), path)
            written.append(path)
    return written
