"""Progress bars on stderr (rich), silenced with `enabled=False` or HARNESS_NO_PROGRESS=1."""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Bar:
    def __init__(self, progress: Progress | None, task_id=None):
        self._progress, self._task = progress, task_id

    def advance(self, n: int = 1, **fields) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n, **fields)


@contextmanager
def bar(description: str, total: int, enabled: bool = True, status: str = "") -> Iterator[Bar]:
    if not enabled or os.environ.get("HARNESS_NO_PROGRESS"):
        yield Bar(None)
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=Console(stderr=True),
        transient=False,
        refresh_per_second=4,
    )
    with progress:
        yield Bar(progress, progress.add_task(description, total=total, status=status))
