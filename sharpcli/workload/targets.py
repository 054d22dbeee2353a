"""Which checkpoints a command's arguments name (files, checkpoint folders, run folders, run
names), where each one's rows go by default, and each one loaded with its run's data:
checkpoint loading for `sharp spectrum`, `sharp eos --from-checkpoints` and `sharp flow`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from sharpcli.errors import SharpError
from sharpcli.formats.checkpoints import list_checkpoints
from sharpcli.formats.runs import checkpoint_files, is_run_dir
from sharpcli.interrupt import check_stop
from sharpcli.workload.data import DataSplits
from sharpcli.workload.rebuild import Checkpoint, load_checkpoint, load_run_data


@dataclass
class Target:
    """A checkpoint to measure, and the run's report folder when the argument named it."""

    checkpoint: Path
    report_dir: Path | None = None


def expand_targets(args: Iterable[str | os.PathLike]) -> list[Target]:
    """Checkpoint files named by the arguments, argument order kept, each run's in step order,
    duplicates dropped. An argument is a checkpoint file, a checkpoint folder
    (checkpoints/<run>), a run folder (reports/<run>, whose config.json says where its
    checkpoints are) or a run name under reports/. Anything else is a SharpError."""
    targets: list[Target] = []
    for arg in args:
        path = Path(arg)
        if not path.exists() and len(path.parts) == 1 and is_run_dir(Path("reports") / path):
            path = Path("reports") / path
        if path.is_file():
            found = [Target(path)]
        elif path.is_dir() and list_checkpoints(path):
            found = [Target(p) for p in list_checkpoints(path)]
        elif is_run_dir(path):
            found = [Target(p, path) for p in checkpoint_files(path)]
        elif path.is_dir():
            raise SharpError(f"{str(arg)!r} holds no checkpoints (step-XXXXXXXX.pt) and is not a "
                             "run directory (config.json)")
        else:
            raise SharpError(f"{str(arg)!r} does not exist (expected a checkpoint file, "
                             "checkpoints/<run> or reports/<run>)")
        seen = {t.checkpoint.resolve() for t in targets}
        targets += [t for t in found if t.checkpoint.resolve() not in seen]
    return targets


def report_dir_for(target: Target, config: dict) -> Path:
    """Where a checkpoint's spectrum.csv goes by default: the run's report folder — the run
    folder that holds it as its config's relative `checkpoint_dir` (a Tracker's run), or
    <reports_dir>/<run_name> from its config, relative to the current folder or to the
    folder holding the checkpoints folder — else the folder that holds the checkpoint."""
    if target.report_dir is not None:
        return target.report_dir
    ckpt = target.checkpoint
    inside = config.get("checkpoint_dir")
    if inside and not Path(inside).is_absolute():
        run = ckpt.resolve().parent
        for _ in Path(inside).parts:
            run = run.parent
        if is_run_dir(run):
            return run
    reports = Path(config.get("reports_dir") or "reports")
    name = config.get("run_name") or ckpt.parent.name
    bases = [reports]
    if not reports.is_absolute() and len(ckpt.resolve().parents) > 2:
        bases.append(ckpt.resolve().parents[2] / reports)  # <root>/checkpoints/<run>/step-….pt
    for base in bases:
        if (base / name).is_dir():
            return base / name
    return ckpt.parent


def load_targets(targets: list[Target], device, *, should_stop: Callable[[], bool] | None = None,
                 on_start: Callable[[int, int, Path], None] | None = None, dist=None,
                 ) -> Iterator[tuple[Target, Checkpoint, DataSplits]]:
    """Each target's checkpoint rebuilt on `device` with its run's data. Runs that share a
    data set and subset share one copy of it, loaded once. A stop request ends the loop
    (Interrupted) before the next checkpoint; `on_start(i, n, path)` runs before each."""
    cache: dict[tuple, DataSplits] = {}
    for i, target in enumerate(targets):
        check_stop(should_stop, dist)
        if on_start is not None:
            on_start(i, len(targets), target.checkpoint)
        ckpt = load_checkpoint(target.checkpoint, device=device)
        s = ckpt.settings
        key = (s.dataset, s.data_dir, s.train_size, s.test_size)
        if key not in cache:
            cache[key] = load_run_data(s, device)
        yield target, ckpt, cache[key]
