"""`sharp spectrum` on disk: which checkpoints the arguments name, where their rows go, and
the loop that measures each one and writes spectrum.csv / density.csv as it goes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from sharpcli.errors import Interrupted, SharpError
from sharpcli.hessian.params import num_params, trainable_params
from sharpcli.spectra.compute import Problem, compute_spectrum
from sharpcli.spectra.config import DENSITY_COLUMNS, SPECTRUM_COLUMNS, SpectrumConfig, SpectrumRow


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
    from sharpcli.formats.checkpoints import list_checkpoints
    from sharpcli.formats.runs import checkpoint_files, is_run_dir

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
    """Where a checkpoint's spectrum.csv goes by default: the run's report folder
    (<reports_dir>/<run_name> from its config, relative to the current folder or to the
    folder holding the checkpoints folder), else the folder that holds the checkpoint."""
    if target.report_dir is not None:
        return target.report_dir
    ckpt = target.checkpoint
    reports = Path(config.get("reports_dir") or "reports")
    name = config.get("run_name") or ckpt.parent.name
    bases = [reports]
    if not reports.is_absolute() and len(ckpt.resolve().parents) > 2:
        bases.append(ckpt.resolve().parents[2] / reports)  # <root>/checkpoints/<run>/step-….pt
    for base in bases:
        if (base / name).is_dir():
            return base / name
    return ckpt.parent


@dataclass
class CheckpointSpectrum:
    """What `run_spectrum` did for one checkpoint."""

    checkpoint: Path
    step: int
    rows: list[SpectrumRow]
    spectrum_csv: Path
    density_csv: Path | None
    n_examples: int
    n_params: int


def run_spectrum(args, cfg: SpectrumConfig, *, out: Path | None = None,
                 density_out: Path | None = None, should_stop: Callable[[], bool] | None = None,
                 on_start: Callable[[int, int, Path], None] | None = None,
                 on_done: Callable[[int, int, CheckpointSpectrum], None] | None = None,
                 ) -> list[CheckpointSpectrum]:
    """Measure every checkpoint the arguments name and write spectrum.csv (and density.csv)
    row by row: by default into each run's report folder, with `out` all into one file.
    Each file is rewritten by the call that first writes to it. Interrupted (exit 130) once
    `should_stop()` turns true, with every row finished so far on disk."""
    from sharpcli.formats.checkpoints import load_checkpoint, load_run_data
    from sharpcli.formats.csvlog import CsvLog
    from sharpcli.training.setup import resolve_device

    cfg.validate()
    targets = expand_targets(args)
    device = resolve_device(cfg.device)
    logs: dict[Path, CsvLog] = {}
    data_cache: dict[str, tuple] = {}

    def log(path: Path, columns) -> CsvLog:
        if path not in logs:
            logs[path] = CsvLog(path, columns).open(fresh=True)
        return logs[path]

    results = []
    try:
        for i, target in enumerate(targets):
            if should_stop is not None and should_stop():
                raise Interrupted("interrupted")
            if on_start is not None:
                on_start(i, len(targets), target.checkpoint)
            ckpt = load_checkpoint(target.checkpoint, device=device)
            key = repr([ckpt.config.get(k) for k in ("dataset", "data_dir", "train_size",
                                                      "test_size")])
            if key not in data_cache:
                data_cache[key] = load_run_data(ckpt.config, device)
            x, y = _examples(data_cache[key], cfg, target.checkpoint)
            folder = report_dir_for(target, ckpt.config)
            csv_path = out if out is not None else folder / "spectrum.csv"
            dens_path = (density_out or csv_path.parent / "density.csv") if cfg.density else None
            problem = Problem(ckpt.model, ckpt.loss_fn, x, y, checkpoint=str(target.checkpoint),
                              step=ckpt.step, should_stop=should_stop,
                              chunk_size=cfg.batch_size or ckpt.config.get("physical_batch_size") or 4096)
            rows: list[SpectrumRow] = []
            for spectrum_rows, density_rows in compute_spectrum(problem, cfg):
                log(csv_path, SPECTRUM_COLUMNS).write_many(r.as_dict() for r in spectrum_rows)
                if density_rows:
                    log(dens_path, DENSITY_COLUMNS).write_many(density_rows)
                rows += spectrum_rows
            results.append(CheckpointSpectrum(target.checkpoint, ckpt.step, rows, csv_path,
                                              dens_path, len(x),
                                              num_params(trainable_params(ckpt.model))))
            if on_done is not None:
                on_done(i, len(targets), results[-1])
    except Interrupted:
        written = ", ".join(str(p) for p in logs) or "nothing written"
        raise Interrupted(f"interrupted after {len(results)} of {len(targets)} checkpoints; "
                          f"rows done so far: {written}") from None
    finally:
        for csv_log in logs.values():
            csv_log.close()
    return results


def _examples(splits, cfg: SpectrumConfig, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `cfg.samples` examples of the chosen split (all of them by default)."""
    x, y = (splits.x_train, splits.y_train) if cfg.split == "train" else (splits.x_test, splits.y_test)
    if cfg.samples is not None:
        if cfg.samples > len(x):
            raise SharpError(f"--samples {cfg.samples}: the {cfg.split} split of {path} has only "
                             f"{len(x)} examples")
        x, y = x[:cfg.samples], y[:cfg.samples]
    return x, y
