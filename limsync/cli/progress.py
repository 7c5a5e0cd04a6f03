"""Progress bars on a terminal: records read per stream, with a rate.

They are drawn on stderr, and only when stderr is a terminal: stdout carries the results (the
summary table, ``--json``), which a script may redirect to a file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import (
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from limsync.cli.common import err
from limsync.sync.engine import Progress as ProgressCallback


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text(f"{speed:>9,.0f} records/s" if speed else " " * 19)


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[ProgressCallback | None]:
    """A progress callback that draws one line per stream, or None when not on a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.completed:>8,} records"),
        _Rate(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as bars:
        tasks: dict[str, TaskID] = {}

        def advance(stream: str, n: int) -> None:
            if stream not in tasks:
                tasks[stream] = bars.add_task(stream, total=None)
            bars.advance(tasks[stream], n)

        yield advance
