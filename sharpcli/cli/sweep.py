"""`sharp sweep GRID`: a grid of `sharp train` runs as numbered tasks (sharpcli.training.sweep): count
them for `#SBATCH --array`, list them, run one (a Slurm array task) or all of them here."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from sharpcli.errors import DivergedError, Interrupted, SharpError

_POLL_SECONDS = 0.2  # how often --all --jobs J looks at its tasks


def sweep_command(
    grid: Annotated[Path, typer.Argument(help="The grid: a TOML file with \\[train] (fixed sharp train flags, without --), \\[grid] (lists whose product is the tasks) and an optional \\[sweep] (name, reports-dir, checkpoints-dir).", show_default=False)],
    count: Annotated[bool, typer.Option("--count", help="Print the number of tasks (for #SBATCH --array=0-<count − 1>) and exit.")] = False,
    list_tasks: Annotated[bool, typer.Option("--list", help="Print each task's id, run name and sharp train flags, tab-separated, and exit.")] = False,
    task_id: Annotated[Optional[int], typer.Option("--task-id", help="Run task I (0-based); default $SLURM_ARRAY_TASK_ID. A task whose run exists resumes it; one whose run ended does nothing.", show_default=False)] = None,
    all_tasks: Annotated[bool, typer.Option("--all", help="Run every task on this machine, in order (each resumed or skipped as --task-id would).")] = False,
    jobs: Annotated[int, typer.Option("--jobs", help="With --all: run this many tasks at once, each in its own process.")] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no summaries.")] = False,
) -> None:
    """Run a grid of sharp train settings as numbered tasks: one per Slurm array task
    (--task-id, or $SLURM_ARRAY_TASK_ID), or all of them here (--all). Each task's run is
    named from its grid values; rerunning a task resumes its run, or does nothing once it
    has ended. Under torchrun a task is trained by every process of the launch."""
    from sharpcli.training.sweep import load_sweep

    _check_modes(count, list_tasks, task_id, all_tasks, jobs)
    sweep = load_sweep(grid)
    tasks = sweep.tasks()
    if count:
        typer.echo(sweep.count)
    elif list_tasks:
        for task in tasks:
            typer.echo(f"{task.index}\t{task.run_name}\t{task.command_line()}")
    elif all_tasks and jobs > 1:
        _run_in_processes(grid, len(tasks), jobs)
    elif all_tasks:
        _run_here(sweep, range(len(tasks)), quiet)
    else:
        from sharpcli.training.sweep import task_from_environment

        _run_one(sweep, task_from_environment(task_id, os.environ), quiet)


def _check_modes(count: bool, list_tasks: bool, task_id: int | None, all_tasks: bool, jobs: int) -> None:
    modes = [name for name, on in (("--count", count), ("--list", list_tasks),
                                   ("--task-id", task_id is not None), ("--all", all_tasks)) if on]
    if len(modes) > 1:
        raise SharpError(f"give one of --count, --list, --task-id and --all, not {' and '.join(modes)}")
    if jobs < 1:
        raise SharpError(f"--jobs must be at least 1, got {jobs}")
    if jobs != 1 and not all_tasks:
        raise SharpError("--jobs runs tasks at once with --all; a single task is one process")


def _run_one(sweep, index: int, quiet: bool) -> None:
    """Task `index` in this process (every process of a torchrun launch)."""
    from sharpcli.cli.train import _train, print_summary
    from sharpcli.distributed import process_group
    from sharpcli.training.sweep import run_task

    config = sweep.config(sweep.task(index))
    with process_group(config.device, config.dist_timeout) as dist:
        def train(config, progress, dist):  # the progress bar of sharp train, around the task
            return run_task(sweep, index, progress=progress, dist=dist)

        quiet = quiet or config.quiet or not dist.is_main  # `quiet = true` in [train] too
        outcome = _train(config, train, quiet, dist)
    if quiet:
        return
    if outcome.skipped:
        typer.echo(f"task {index} ({outcome.task.run_name}): its run has ended; nothing to do")
    else:
        print_summary(outcome.result)


def _run_here(sweep, indices, quiet: bool) -> None:
    """Tasks one after another; a diverged one does not stop the others (exit 1 at the end)."""
    diverged = []
    for index in indices:
        try:
            _run_one(sweep, index, quiet)
        except DivergedError as err:
            typer.echo(f"task {index}: {err}", err=True)
            diverged.append(index)
    if diverged:
        raise DivergedError(f"tasks {', '.join(map(str, diverged))} diverged (their messages above)")


def _run_in_processes(grid: Path, count: int, jobs: int) -> None:
    """Every task as its own `sharp sweep GRID --task-id I --quiet` process, `jobs` at once.
    A stop request (Ctrl-C, SIGTERM) is passed to the running tasks, which checkpoint."""
    from sharpcli.interrupt import stop_on_signals

    pending, running, codes = list(range(count)), {}, {}
    with stop_on_signals() as stop:
        while pending or running:
            if stop.requested:
                for proc in running.values():
                    proc.terminate()  # SIGTERM: each task saves a checkpoint and exits 130
                for index, proc in running.items():
                    codes[index] = proc.wait()
                raise Interrupted(f"stopped by {stop.signal_name or 'a signal'}; tasks "
                                  f"{', '.join(map(str, sorted(running)))} saved checkpoints; "
                                  "run the sweep again to continue")
            while pending and len(running) < jobs:
                index = pending.pop(0)
                running[index] = subprocess.Popen([sys.executable, "-m", "sharpcli", "sweep",
                                                   str(grid), "--task-id", str(index), "--quiet"])
            for index, proc in list(running.items()):
                if proc.poll() is not None:
                    codes[index] = running.pop(index).returncode
            time.sleep(_POLL_SECONDS)
    _outcome(codes)


def _outcome(codes: dict[int, int]) -> None:
    """The sweep's exit: 0 when every task exited 0; else its worst task's code."""
    failed = {i: c for i, c in sorted(codes.items()) if c != 0}
    if not failed:
        return
    listing = ", ".join(f"{i} (exit {c})" for i, c in failed.items())
    if any(c == 2 for c in failed.values()):
        raise SharpError(f"tasks failed: {listing}; their messages above")
    if all(c == 1 for c in failed.values()):
        raise DivergedError(f"tasks failed: {listing}; their messages above")
    raise SharpError(f"tasks failed: {listing}; their messages above")


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep_command)
