"""Progress of long commands on stderr (rich), only for a person watching a terminal.

Nothing is drawn when stderr is not a terminal (pipes, files, tests) or when `WHARF_PROGRESS=0`, so the
results printed on stdout never change. Work reports through a plain callback, `(done, total)`, so the
code below the CLI (online_models/evaluation) needs no UI library.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Report = Callable[[int, int], None]  # (done, total)


def enabled() -> bool:
    return sys.stderr.isatty() and os.environ.get("WHARF_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


def _nothing(done: int, total: int) -> None:
    return None


@contextmanager
def bar(description: str) -> Iterator[Report]:
    """A bar on stderr while the block runs, moved by the `(done, total)` callback it yields; removed at the end."""
    if not enabled():
        yield _nothing
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield report


class Phases:
    """`[k/n] phase` lines on stderr, one per phase of a benchmark (only when `enabled()`)."""

    def __init__(self, total: int, what: str) -> None:
        self.total, self.what, self.k = total, what, 0
        self._console = None
        if enabled():
            from rich.console import Console

            self._console = Console(stderr=True)

    def next(self, phase: str) -> None:
        self.k += 1
        if self._console is not None:
            self._console.print(f"[dim]{self.what} [{self.k}/{self.total}] {phase}[/dim]", highlight=False)
