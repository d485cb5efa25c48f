"""A rich progress bar that can be switched off (tests, `--quiet`, non-interactive CI logs)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)


class _Bar:
    def __init__(self, progress: Progress | None, task: TaskID | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)


@contextmanager
def progress_bar(*, total: int, completed: int = 0, description: str, enabled: bool = True) -> Iterator[_Bar]:
    """Yield an object with `.advance(n)`; draws a bar on stderr when enabled."""
    if not enabled:
        yield _Bar(None, None)
        return
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*cols, transient=False) as prog:
        task = prog.add_task(description, total=total, completed=completed)
        yield _Bar(prog, task)
