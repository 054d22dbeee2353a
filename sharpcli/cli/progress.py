"""Progress of a long command, on stderr: a rich bar on a terminal; off one (a pipe, a log
file, a Slurm job) a plain line at least every PROGRESS_SECONDS and one when done, each
with the step or fraction done, the elapsed time and the time left. --quiet (and every
process but rank 0 under torchrun: the commands pass quiet then) silences both.

One mechanism for every command: `with progress_bar("flow", total, quiet) as bar:` then
`bar.update(completed, total=..., info=...)` as the work goes.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

stderr_console = Console(stderr=True)


def progress_seconds() -> float:
    """Seconds between two plain lines: 30, or SHARPCLI_PROGRESS_SECONDS (the tests' knob)."""
    return float(os.environ.get("SHARPCLI_PROGRESS_SECONDS", "30"))


def output_console() -> Console:
    """The console a command prints its results on (stdout): off a terminal, lines are never
    wrapped and tables get room (a log is read by people and by grep, not in 80 columns)."""
    console = Console(highlight=False)
    if console.is_terminal:
        return console
    return Console(highlight=False, width=1000, soft_wrap=True)


class Reporter:
    """What a command tells about its progress: `update(completed, total, info)`."""

    def update(self, completed: int, total: int | None = None, info: str | None = None) -> None:
        """`completed` of `total` units done; `info` a short note on the latest (λ₁ ...)."""


class _Bar(Reporter):
    """A rich progress bar on a terminal."""

    def __init__(self, progress: Progress):
        self.progress, self.task = progress, progress.task_ids[0]

    def update(self, completed: int, total: int | None = None, info: str | None = None) -> None:
        fields = {"info": info} if info else {}
        self.progress.update(self.task, completed=completed,
                             **({"total": total} if total else {}), **fields)


class PlainLines(Reporter):
    """Plain lines off a terminal: one every `seconds` from a timer thread (so a long step
    cannot silence it), and one at `finish`."""

    def __init__(self, name: str, total: int | None, seconds: float, stream=None):
        self.name, self.total, self.seconds = name, total, seconds
        self.stream = stream or sys.stderr
        self.completed, self.info = 0, ""
        self.start = time.monotonic()
        self._lock, self._done = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()

    def update(self, completed: int, total: int | None = None, info: str | None = None) -> None:
        with self._lock:
            self.completed, self.total = completed, total or self.total
            self.info = info or self.info

    def _tick(self) -> None:
        while not self._done.wait(self.seconds):
            self._print()

    def finish(self, done: bool = True) -> None:
        """The last line, once the work is done; none when it failed or was stopped: the
        error's one line says so, and a bad argument stays one line on stderr."""
        self._done.set()
        self._thread.join()
        if done:
            self._print(final=True)

    def _print(self, final: bool = False) -> None:
        with self._lock:
            line = self.line(time.monotonic() - self.start, final)
        print(line, file=self.stream, flush=True)

    def line(self, elapsed: float, final: bool = False) -> str:
        """`flow: 484/1001 (48%) · elapsed 5:00 · left 5:20 · λ₁ ...`: the time left from
        the mean pace so far (unknown until the first unit is done)."""
        done, total = self.completed, self.total
        if not total:  # not known yet: the command is setting up
            return f"{self.name}: starting · elapsed {_clock(elapsed)}"
        left = "0:00" if final else (_clock(elapsed * (total - done) / done) if done else "?")
        parts = [f"{self.name}: {done}/{total} ({done / total:.0%})", f"elapsed {_clock(elapsed)}",
                 f"left {left}"]
        if self.info:
            parts.append(self.info)
        return " · ".join(parts) + (" · done" if final else "")


def _clock(seconds: float) -> str:
    """h:mm:ss or m:ss."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@contextmanager
def progress_bar(description: str, total: int | None, quiet: bool) -> Iterator[Reporter]:
    """The progress of one command named `description`, over `total` units (None: known at
    the first `update`, which may change it); a silent Reporter with `quiet`."""
    if quiet:
        yield Reporter()
    elif stderr_console.is_terminal:
        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                       TimeRemainingColumn(), console=stderr_console, transient=False)
        with bar:
            bar.add_task(description, total=total, info="")
            yield _Bar(bar)
    else:
        lines, done = PlainLines(description, total, progress_seconds()), False
        try:
            yield lines
            done = True
        finally:
            lines.finish(done)
