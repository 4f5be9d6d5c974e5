"""Progress for long work: a rich bar on a terminal, plain lines in a log (a batch job's
output file, ``nohup``), where a bar is drawn only once it has finished; silent when disabled
or off the main process."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)

# plain-line mode: training says where it is at every tenth of its steps; a scoring or
# generation loop, short as a rule, says so only when it has run this long since its last line
LINE_FRACTION = 0.1
LINE_EVERY_S = 60.0


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def _plain_line(description: str, done: int, total: int | None, elapsed: float,
                rate_from: int = 0, info: str = "") -> str:  # fmt: skip
    """``description  done/total  info · elapsed, ~left``: the bar's columns as text."""
    parts = [f"{description} {done}/{total}" if total else f"{description} {done}"]
    if info:
        parts.append(info)
    clock = f"{_clock(elapsed)} elapsed"
    if total and done > rate_from and elapsed > 0:
        left = (total - done) * elapsed / (done - rate_from)
        clock += f", ~{_clock(left)} left"
    return " · ".join([*parts, clock])


class TrainProgress:
    def __init__(self, total: int, start: int, description: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task = None
        self.total, self.start, self.description = total, start, description
        self.plain = enabled and not console.is_terminal
        self._started = 0.0
        self._next_line = 0

    def __enter__(self) -> TrainProgress:
        if self.plain:
            self._started = time.perf_counter()
            self._next_line = self.start + self._line_step()
        elif self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(
                self.description, total=self.total, completed=self.start, info=""
            )
        return self

    def _line_step(self) -> int:
        return max(1, round(self.total * LINE_FRACTION))

    def update(self, step: int, record: dict[str, Any]) -> None:
        if self._progress is None and not self.plain:
            return
        info = f"loss {record['loss']:.4f}"
        if record.get("tokens_per_s"):
            info += f" · {record['tokens_per_s']:.0f} tok/s"
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)
        elif step >= self._next_line or step == self.total:
            self._next_line = step + self._line_step()
            elapsed = time.perf_counter() - self._started
            line = _plain_line(self.description, step, self.total, elapsed, self.start, info)
            console.print(line, highlight=False, markup=False, soft_wrap=True)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


def track(items, description: str, total: int | None = None, enabled: bool = True):
    """Iterate with a progress bar (for scoring and generation loops)."""
    if not enabled:
        yield from items
        return
    if not console.is_terminal:
        yield from _track_plain(items, description, total)
        return
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


def _track_plain(items, description: str, total: int | None):
    started = last = time.perf_counter()
    for done, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if now - last >= LINE_EVERY_S:
            last = now
            line = _plain_line(description, done, total, now - started)
            console.print(line, highlight=False, markup=False, soft_wrap=True)
