"""Rich progress bars on stderr: shown on a terminal, silent with --quiet or in a pipe."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

stderr_console = Console(stderr=True)


def progress_enabled(quiet: bool) -> bool:
    return not quiet and stderr_console.is_terminal


@contextmanager
def progress_bar(description: str, total: int, quiet: bool) -> Iterator[Progress | None]:
    if not progress_enabled(quiet):
        yield None
        return
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=stderr_console, transient=False)
    with bar:
        bar.add_task(description, total=total, info="")
        yield bar
