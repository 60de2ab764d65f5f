"""Progress and messages on stderr, through rich.

Messages (`info`) go to stderr whether or not it is a terminal (a log file under nohup or torchrun
keeps them), one line each, unless quiet; warnings always.  Progress bars are drawn only on a
terminal, and never when quiet.  The library reports through a `Reporter`; only this module knows
about rich.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Reporter:
    """Logs and progress bars for long jobs, on stderr."""

    def __init__(self, *, quiet: bool = False, force_terminal: bool | None = None):
        self.console = Console(stderr=True, force_terminal=force_terminal)
        self.quiet = quiet
        self.show_progress = not quiet and (self.console.is_terminal if force_terminal is None else force_terminal)

    def info(self, message: str) -> None:
        if not self.quiet:  # soft_wrap: one line per message in a log (rich would break it at 80 columns)
            self.console.print(message, highlight=False, markup=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        self.console.print(f"warning: {message}", style="yellow", highlight=False, markup=False, soft_wrap=True)

    @contextmanager
    def progress(self, description: str, total: int, *, completed: int = 0) -> Iterator["Tick"]:
        if not self.show_progress:
            yield Tick(None, None)
            return
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        with bar:
            task = bar.add_task(description, total=total, completed=completed)
            yield Tick(bar, task)


class Tick:
    def __init__(self, bar: Progress | None, task: Any):
        self.bar, self.task = bar, task

    def __call__(self, advance: float = 1) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=advance)

    def to(self, completed: float) -> None:
        """Set the count exactly (fractional advances add up with rounding error)."""
        if self.bar is not None:
            self.bar.update(self.task, completed=completed)


SILENT = Reporter(quiet=True)


def stdout_line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
