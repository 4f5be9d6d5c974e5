"""What a report is made of: headings, text, tables and figures, and how numbers are shown."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from expunge.report.collect import number

RATE = re.compile(r"(^|_)(fsr|asr|acc|accuracy|rate)$")


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Text:
    text: str


@dataclass
class TableBlock:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    name: str
    png: bytes
    caption: str


@dataclass
class Report:
    title: str
    blocks: list[Any] = field(default_factory=list)

    def add(self, *blocks: Any) -> None:
        self.blocks.extend(b for b in blocks if b is not None)


def is_rate(metric: str) -> bool:
    return bool(RATE.search(metric))


def fmt(value: Any, metric: str = "") -> str:
    x = number(value)
    if x is None:
        return "—" if value is None else str(value)
    if is_rate(metric) and 0.0 <= x <= 1.0:
        return f"{100 * x:.1f}%"
    if x == int(x) and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.5g}"


def arrow(flag: bool | None) -> str:
    return {True: " ↑", False: " ↓"}.get(flag, "")


def cost(before: float | None, after: float | None, metric: str) -> str:
    if before is None or after is None:
        return "—"
    delta = after - before
    if is_rate(metric) and 0 <= before <= 1 and 0 <= after <= 1:
        return f"{100 * delta:+.1f} pts"
    relative = f" ({100 * delta / before:+.0f}%)" if before else ""
    return f"{delta:+.4g}{relative}"


# ---------------------------------------------------------------------------------------------
# A pipeline study
