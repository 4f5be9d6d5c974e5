"""The tables a study YAML declares under ``report.tables``: chosen stages × chosen metrics.

A row names a stage and the metric prefix inside its record (``erased/`` for an eraser's stage
audit); a column names a metric, or a path into its details (``regurgitation/direct/greedy``),
where ``*`` expands into one column per key found (``regurgitation/per_type/*/greedy``).
``transpose`` puts the stages across and the metrics down. Only records are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expunge.report.blocks import Heading, TableBlock, is_rate
from expunge.report.collect import load_state, number, read_record_json
from expunge.report.redact import Redactor

FORMATS = {
    "percent": lambda x: f"{100 * x:.1f}%",
    "number": lambda x: f"{x:.2f}",
    "integer": lambda x: str(round(x)),
    "p": lambda x: f"{x:.3g}",
    "signed": lambda x: f"{x:+.1f}",
}


def _lookup(record: dict[str, Any], prefix: str, path: list[str]) -> Any:
    """A metric's value (names may hold ``/``: the scan's ``mspc/auroc``), or the value at
    ``path`` inside its details."""
    metrics = record.get("metrics", {})
    whole = prefix + "/".join(path)
    if whole in metrics or len(path) == 1:
        return metrics.get(whole)
    node: Any = record.get("metric_details", {}).get(prefix + path[0])
    for part in path[1:]:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def expand(column: dict[str, Any], records: list[dict[str, Any]], prefixes: list[str]) -> list:
    """``(label, path)`` for a column, one per key where its path holds ``*``."""
    path = column["metric"].split("/")
    if "*" not in path:
        return [(column.get("label") or column["metric"], path)]
    star = path.index("*")
    keys: list[str] = []
    for record, prefix in zip(records, prefixes, strict=True):
        node = _lookup(record, prefix, path[:star]) if star > 1 else None
        if star == 1:
            node = record.get("metric_details", {}).get(prefix + path[0])
        for key in node if isinstance(node, dict) else []:
            if key not in keys:
                keys.append(key)
    label = column.get("label") or column["metric"]
    return [(label.replace("*", key), [*path[:star], key, *path[star + 1 :]]) for key in keys]


def cell(value: Any, style: str, label: str) -> str:
    x = number(value)
    if x is None:
        return "—" if value is None else str(value)
    if style == "auto":
        style = "percent" if is_rate(label) and 0 <= x <= 1 else "number"
    return FORMATS[style](x)


def table_block(spec: dict[str, Any], run_dir: Path, redact: Redactor,
                planned: set[str]) -> TableBlock | None:  # fmt: skip
    """The table, over the rows whose stage is in the plan (None when no row is)."""
    rows = [row for row in spec["rows"] if row["stage"] in planned]
    if not rows:
        return None
    records, prefixes, labels = [], [], []
    for row in rows:
        path = run_dir / row["stage"] / "record.json"
        records.append(read_record_json(path) if path.is_file() else {})
        prefixes.append(row.get("prefix") or "")
        labels.append(redact(row.get("label") or row["stage"]))
    columns = [(label, path, column.get("format", "auto"))
               for column in spec["columns"]
               for label, path in expand(column, records, prefixes)]  # fmt: skip
    grid = [[cell(_lookup(record, prefix, path), style, label) for label, path, style in columns]
            for record, prefix in zip(records, prefixes, strict=True)]  # fmt: skip
    if spec.get("transpose"):
        header = ["", *labels]
        body = [[label, *[grid[r][c] for r in range(len(rows))]]
                for c, (label, _, _) in enumerate(columns)]  # fmt: skip
    else:
        header = ["", *[label for label, _, _ in columns]]
        body = [[label, *values] for label, values in zip(labels, grid, strict=True)]
    return TableBlock(header, body, spec.get("caption") or "")


def declared_tables(run_dir: Path, redact: Redactor) -> list[Any]:
    """The study's ``report.tables``, each under its title."""
    state = load_state(run_dir)
    planned = set(state.get("order") or state["stages"])
    blocks: list[Any] = []
    for spec in (state.get("report") or {}).get("tables") or []:
        block = table_block(spec, run_dir, redact, planned)
        if block is not None:
            blocks += [Heading(2, spec["title"]), block]
    return blocks
