"""`sharp sweep GRID`: a grid of `sharp train` runs as numbered tasks, one per Slurm array
task (docs/guides/sweeps.md).

GRID is a TOML file:

    [sweep]                 # optional
    name = "eos"            # default: the file's name
    reports-dir = "reports" # where each task's run folder goes (default: reports)
    checkpoints-dir = "checkpoints"

    [train]                 # fixed `sharp train` flags, named without the --
    train-size = 200
    steps = 20

    [grid]                  # lists; their product is the tasks, the last key varying fastest
    lr = [0.1, 0.2]
    seed = [0, 1]

Task i is the i-th setting of that product in the order written. Its run name joins the
sweep's name with each grid value (`eos-lr0.1-seed0`), so a task always names the same run
folder: rerunning a task is safe. A task whose run exists continues it (`--resume`), one
whose run ended does nothing, and SIGTERM (Slurm's `--signal=TERM@60` before a preemption or
the time limit) checkpoints and exits 130, for the requeued task to resume to the same
metrics.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import shlex
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

from sharpcli.config import TrainConfig
from sharpcli.errors import SharpError
from sharpcli.formats.runs import is_run_dir, read_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SECTIONS = ("sweep", "train", "grid")
SWEEP_KEYS = ("name", "reports-dir", "checkpoints-dir")
# Set by the sweep itself, for every task: never a flag of [train] or [grid].
OWNED_BY_THE_SWEEP = ("run-name", "reports-dir", "checkpoints-dir", "resume")
# `sharp train` flags that are no setting of a run.
NOT_FLAGS = ("list-recipes",)
SLURM_TASK = "SLURM_ARRAY_TASK_ID"


@dataclass(frozen=True)
class Task:
    """Task `index` of a sweep: its run name and its `sharp train` flags (names without --)."""

    index: int
    run_name: str
    flags: dict

    def command_line(self) -> str:
        """The flags as `sharp train` takes them on a shell's command line."""
        return " ".join(_flag(key, value) for key, value in self.flags.items())


@dataclass(frozen=True)
class Sweep:
    """A parsed GRID file: its name, folders, fixed flags and grid, and so its tasks."""

    name: str
    reports_dir: str
    checkpoints_dir: str
    fixed: dict
    grid: dict

    @property
    def count(self) -> int:
        return math.prod(len(values) for values in self.grid.values())

    def tasks(self) -> list[Task]:
        keys = list(self.grid)
        tasks = [Task(i, "-".join([self.name] + [_name_part(k, v) for k, v in zip(keys, values)]),
                      {**self.fixed, **dict(zip(keys, values))})
                 for i, values in enumerate(itertools.product(*self.grid.values()))]
        names = [t.run_name for t in tasks]
        twins = sorted({n for n in names if names.count(n) > 1})
        if twins:
            raise SharpError(f"tasks of the sweep share the run name {twins[0]!r}: a [grid] list "
                             "repeats a value")
        return tasks

    def task(self, index: int) -> Task:
        if not 0 <= index < self.count:
            raise SharpError(f"task id {index} is not one of the sweep's tasks 0..{self.count - 1}")
        return self.tasks()[index]

    def config(self, task: Task) -> TrainConfig:
        """The TrainConfig of `task`: its flags, its run name in the sweep's folders, resuming."""
        from sharpcli.recipes import train_config

        values = {key.replace("-", "_"): value for key, value in task.flags.items()}
        values.update(run_name=task.run_name, reports_dir=self.reports_dir,
                      checkpoints_dir=self.checkpoints_dir, resume=True)
        try:
            return train_config(values, given=list(values))
        except (TypeError, ValueError) as err:
            raise SharpError(f"task {task.index} ({task.run_name}): {err}") from None


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a GRID file; every problem is one SharpError naming the key."""
    path = Path(path)
    doc = _read(path)
    _only(doc, SECTIONS, f"{path}: unknown section", "the sections are")
    sweep, fixed, grid = (doc.get(s, {}) for s in SECTIONS)
    for section, table in zip(SECTIONS, (sweep, fixed, grid)):
        if not isinstance(table, dict):
            raise SharpError(f"{path}: [{section}] must be a table")
    _only(sweep, SWEEP_KEYS, f"{path}: [sweep] has unknown key", "its keys are")
    for section, table in (("train", fixed), ("grid", grid)):
        for key in table:
            _check_flag(path, section, key)
    fixed = {key: _check_value(path, f"[train] {key}", key, value) for key, value in fixed.items()}
    for key, values in grid.items():
        if key in fixed:
            raise SharpError(f"{path}: {key!r} is in both [train] and [grid]: give it in one")
        if not isinstance(values, list) or not values:
            raise SharpError(f"{path}: [grid] {key} must be a non-empty list, got {values!r}")
        grid[key] = [_check_value(path, f"[grid] {key}", key, value) for value in values]
    return Sweep(*_names(path, sweep), dict(fixed), dict(grid))


def _read(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SharpError(f"grid file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SharpError(f"cannot read grid file {str(path)!r}: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise SharpError(f"{path}: not valid TOML: {err}") from None


def _names(path: Path, sweep: dict) -> tuple[str, str, str]:
    """[sweep]'s name (default: the file's), reports and checkpoints folders."""
    name = sweep.get("name", path.stem)
    if not isinstance(name, str) or not _safe(name):
        raise SharpError(f"{path}: [sweep] name {name!r} must be letters, digits, '.', '_' or '-'")
    dirs = [sweep.get(k, d) for k, d in (("reports-dir", "reports"), ("checkpoints-dir", "checkpoints"))]
    if not all(isinstance(d, str) and d for d in dirs):
        raise SharpError(f"{path}: [sweep] reports-dir and checkpoints-dir must be folder names")
    return name, dirs[0], dirs[1]


def _only(table: dict, allowed, what: str, listing: str) -> None:
    unknown = [k for k in table if k not in allowed]
    if unknown:
        raise SharpError(f"{what} {unknown[0]!r}; {listing} {', '.join(allowed)}")


def _check_flag(path: Path, section: str, key: str) -> None:
    """A key of [train] or [grid] is a `sharp train` flag without its --."""
    if key in OWNED_BY_THE_SWEEP:
        raise SharpError(f"{path}: [{section}] {key}: the sweep sets --{key} of every task "
                         "(name and folders go in [sweep])")
    field = key.replace("-", "_")
    if key.startswith("-") or key in NOT_FLAGS or field not in _FIELDS or "_" in key:
        raise SharpError(f"{path}: [{section}] {key!r} is not a flag of sharp train (names as "
                         "the flags, without --: train-size, lr, ...)")


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _check_value(path: Path, where: str, key: str, value):
    """A value of the flag's kind: true/false for a switch, a whole number for a count, a
    number for a real (returned as a float, as the command line gives it), a string for a
    choice or a name (TOML keeps 2 and 2.0 apart)."""
    hint = _HINTS[key.replace("-", "_")]
    kinds = [k for k in typing.get_args(hint) or [hint] if k is not type(None)]
    kind = kinds[0] if len(kinds) == 1 and kinds[0] in _KINDS else str  # enums: strings
    accepts, expected = _KINDS[kind]
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, accepts):
        raise SharpError(f"{path}: {where} = {value!r}: --{key} takes {expected}")
    return float(value) if kind is float else value


# a flag's kind → the TOML values it takes (bool aside: only a switch takes true/false)
_KINDS = {bool: (bool, "true or false"), int: (int, "a whole number"),
          float: ((int, float), "a number"), str: (str, "a string")}
_HINTS = typing.get_type_hints(TrainConfig)


def _safe(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9._-]+", text))


def _name_part(key: str, value) -> str:
    """A grid value in a run name: lr0.1, seed1, optimizer-sam, nesterov / no-nesterov;
    characters a folder name should not hold become _."""
    if isinstance(value, bool):
        part = key if value else f"no-{key}"
    elif isinstance(value, float):  # short (0.1, 1e-05) unless that would lose digits
        part = f"{key}{value:g}" if float(f"{value:g}") == value else f"{key}{value!r}"
    elif isinstance(value, int):
        part = f"{key}{value}"
    else:
        part = f"{key}-{value}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", part)


def _flag(key: str, value) -> str:
    if isinstance(value, bool):
        return f"--{key}" if value else f"--no-{key}"
    return f"--{key} {shlex.quote(str(value))}"  # a line a shell can run


# ---------------------------------------------------------------- running a task

def task_from_environment(task_id: int | None, environ: dict) -> int:
    """`--task-id`, else $SLURM_ARRAY_TASK_ID; neither is an error."""
    if task_id is not None:
        return task_id
    value = environ.get(SLURM_TASK)
    if value is None:
        raise SharpError(f"which task? give {{task_id}} I, or run inside a Slurm array "
                         f"(${SLURM_TASK}); {{all}} runs every task here", param=("task_id", "all"))
    try:
        return int(value)
    except ValueError:
        raise SharpError(f"${SLURM_TASK}={value!r} is not a task number") from None


def finished(config: TrainConfig) -> bool:
    """Whether the run of `config` has ended: its config.json was written for the same length
    (--steps, --epochs: a lengthened sweep continues its runs) and metrics.csv's last row is
    at its final step, or met the run's --stop-loss / --stop-acc (a run that stopped early
    has ended too: resuming it would only stop again)."""
    from sharpcli.training.loop import early_stop

    run_dir = Path(config.reports_dir) / config.run_name
    if not is_run_dir(run_dir):
        return False
    record = read_config(run_dir)
    if (record.get("steps"), record.get("epochs")) != (config.steps, config.epochs):
        return False
    row = _last_row(run_dir / "metrics.csv")
    if row is None or row.get("step") is None:
        return False
    return row["step"] == record.get("total_steps") or early_stop(config, row) is not None


def _last_row(path: Path) -> dict | None:
    """metrics.csv's last row, its numbers as floats (step an int); None without one."""
    import csv

    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("step")]
    if not rows:
        return None
    return {key: _number(value) for key, value in rows[-1].items()}


def _number(text: str | None):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return int(value) if value.is_integer() else value


@dataclass
class TaskOutcome:
    task: Task
    skipped: bool  # the run had ended already: nothing was done
    result: object = None  # sharpcli.training.loop.TrainResult of the run, when it ran


def run_task(sweep: Sweep, index: int, *, progress=None, dist=None) -> TaskOutcome:
    """Run task `index`: continue its run where it stopped, or do nothing when it has
    ended. Raises what `sharpcli.training.loop.train` raises (Interrupted on SIGTERM, after
    a checkpoint)."""
    from sharpcli.distributed import Dist
    from sharpcli.training.loop import train

    task = sweep.task(index)
    config = sweep.config(task)
    dist = dist or Dist.current()
    if dist.broadcast(finished(config)):  # rank 0 looks, before any process writes
        return TaskOutcome(task, True)
    return TaskOutcome(task, False, train(config, progress=progress, dist=dist))
