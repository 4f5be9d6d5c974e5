"""A rich progress bar for long work; silent when disabled or off the main process."""

from __future__ import annotations

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


class TrainProgress:
    def __init__(self, total: int, start: int, description: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task = None
        self.total, self.start, self.description = total, start, description

    def __enter__(self) -> TrainProgress:
        if self.enabled:
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

    def update(self, step: int, record: dict[str, Any]) -> None:
        if self._progress is None:
            return
        info = f"loss {record['loss']:.4f}"
        if record.get("tokens_per_s"):
            info += f" · {record['tokens_per_s']:.0f} tok/s"
        self._progress.update(self._task, completed=step, info=info)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


def track(items, description: str, total: int | None = None, enabled: bool = True):
    """Iterate with a progress bar (for scoring and generation loops)."""
    if not enabled:
        yield from items
        return
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
