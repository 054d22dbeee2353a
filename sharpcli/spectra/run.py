"""`sharp spectrum` on disk: the loop that measures each checkpoint the arguments name and
writes spectrum.csv / density.csv row by row as each computation finishes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.data import Dataset as TorchDataset

from sharpcli.config import Split
from sharpcli.device import resolve_device
from sharpcli.distributed import SINGLE, Dist, process_device
from sharpcli.errors import Interrupted, SharpError
from sharpcli.formats.csvlog import CsvLog
from sharpcli.formats.schema import (DENSITY_COLUMNS, DENSITY_FILE,
                                     PRECONDITIONED_DENSITY_FILE, PRECONDITIONED_SPECTRUM_FILE,
                                     SPECTRUM_COLUMNS, SPECTRUM_FILE)
from sharpcli.hessian.check import check_objective
from sharpcli.hessian.params import num_params, trainable_params
from sharpcli.sources.data import Data, as_data
from sharpcli.spectra.compute import compute_spectrum
from sharpcli.spectra.config import ModelSource, SpectrumConfig
from sharpcli.spectra.problem import Problem, Solve
from sharpcli.spectra.targets import subjects
from sharpcli.workload.targets import expand_targets
from sharpcli.workload.user_data import UserSource

DEFAULT_STREAM_BATCH = 32  # a Dataset from --data MODULE:CALLABLE, batched without --batch-size


@dataclass
class CheckpointSpectrum:
    """What `run_spectrum` did for one checkpoint."""

    checkpoint: Path
    step: int
    solves: list[Solve]
    spectrum_csv: Path
    density_csv: Path | None
    n_examples: int
    n_params: int


def run_spectrum(args, cfg: SpectrumConfig, *, out: Path | None = None,
                 density_out: Path | None = None, should_stop: Callable[[], bool] | None = None,
                 on_start: Callable[[int, int, Path], None] | None = None,
                 on_done: Callable[[int, int, CheckpointSpectrum], None] | None = None,
                 on_skip: Callable[[Path, str], None] | None = None,
                 dist: Dist = SINGLE, source: ModelSource | None = None,
                 note_words: Callable[[str], str] | None = None) -> list[CheckpointSpectrum]:
    """Measure every checkpoint the arguments name and write spectrum.csv (and density.csv)
    row by row: by default into each run's report folder, with `out` all into one file.
    Each file is rewritten by the call that first writes to it. With `cfg.warm_start` the
    eigenvalue solves of a run's checkpoints start from the previous checkpoint's
    eigenvectors. Interrupted (exit 130) once
    `should_stop()` turns true, with every row finished so far on disk. Under torchrun
    every process measures its shard of the examples and rank 0 writes. `source` names a
    model sharpcli did not build (--model-factory), its examples and loss.

    `cfg.preconditioned`: the spectrum of P^{-1/2} H P^{-1/2} with P from each checkpoint's
    optimizer state, into spectrum-preconditioned.csv (density-preconditioned.csv); a
    checkpoint saved before the first update has no P and is skipped (`on_skip(path, why)`).
    The solves' notes name the arguments they are about by their Python names;
    `note_words(note)` rewords each one before it is written (`sharp spectrum`: its flags)."""
    cfg.validate()
    source = source or ModelSource()
    targets = expand_targets(args)
    source.validate(len(targets))
    if source.weights is not None:
        targets += expand_targets([source.weights])
    device = resolve_device(process_device(cfg.device, dist))
    logs = _Logs(dist)
    results, skipped = [], []
    names = ((PRECONDITIONED_SPECTRUM_FILE, PRECONDITIONED_DENSITY_FILE) if cfg.preconditioned
             else (SPECTRUM_FILE, DENSITY_FILE))
    warm: dict[tuple, dict] = {}  # per run and example set: each block's last eigenvectors
    # a run's checkpoints still to come: the last one's eigenvectors are not kept for nothing
    later = Counter(str(t.checkpoint.parent) for t in targets)
    datas: dict[int, Data] = {}
    try:
        for subject in subjects(targets, device, source, should_stop=should_stop,
                                on_start=on_start, dist=dist):
            run = str(subject.target.checkpoint.parent)
            later[run] -= 1
            if id(subject.splits) not in datas:  # a stream is counted and checked once
                datas[id(subject.splits)] = subject_data(subject, cfg, device, dist, source)
            data = datas[id(subject.splits)]
            check_objective(subject.model, subject.call, data)
            p = subject.preconditioner() if cfg.preconditioned else None
            if cfg.preconditioned and p is None:
                skipped.append(subject.target.checkpoint)
                if on_skip is not None:
                    on_skip(subject.target.checkpoint,
                            "no optimizer state before the first update, so no P")
                continue
            csv_path = out if out is not None else subject.report_dir / names[0]
            dens_path = (density_out or csv_path.parent / names[1]) if cfg.density else None
            problem = Problem(subject.model, subject.call, data,
                              checkpoint=str(subject.target.checkpoint), step=subject.step,
                              should_stop=should_stop, dist=dist, preconditioner=p)
            # checkpoints of one run, in step order: each starts from the one before
            previous = warm.setdefault((run, id(subject.splits)), {}) if cfg.warm_start else None
            solves = _measure(problem, cfg, previous, later[run] > 0, logs, csv_path, dens_path,
                              note_words)
            results.append(CheckpointSpectrum(subject.target.checkpoint, subject.step, solves,
                                              csv_path, dens_path, data.total,
                                              num_params(trainable_params(subject.model))))
            if on_done is not None:
                on_done(len(results) - 1, len(targets), results[-1])
    except Interrupted:
        raise Interrupted(f"interrupted after {len(results)} of {len(targets)} checkpoints; "
                          f"rows done so far: {logs.written()}") from None
    finally:
        logs.close()
    if skipped and not results:
        raise SharpError(f"{{preconditioned}}: {', '.join(map(str, skipped))} hold no optimizer "
                         "state yet (saved before the first update): P exists from step 1 on",
                         param="preconditioned")
    return results


class _Logs:
    """The CSV files of one `run_spectrum` call, written by rank 0 alone; each file is
    rewritten by its first write."""

    def __init__(self, dist: Dist):
        self.dist, self.files = dist, {}

    def write(self, path: Path, columns, rows) -> None:
        if not self.dist.is_main:
            return
        if path not in self.files:
            self.files[path] = CsvLog(path, columns).open(fresh=True)
        self.files[path].write_many(rows)

    def written(self) -> str:
        return ", ".join(str(p) for p in self.files) or "nothing written"

    def close(self) -> None:
        for csv_log in self.files.values():
            csv_log.close()


def _measure(problem: Problem, cfg: SpectrumConfig, previous: dict | None, keep_warm: bool,
             logs: _Logs, csv_path: Path, dens_path: Path | None,
             note_words: Callable[[str], str] | None) -> list[Solve]:
    """One checkpoint's solves, each written as it finishes; the eigenvectors are dropped
    once written (`previous` keeps the warm start's)."""
    solves = []
    for solve in compute_spectrum(problem, cfg, previous, keep_warm=keep_warm):
        if solve.note and note_words is not None:
            solve.note = note_words(solve.note)
        logs.write(csv_path, SPECTRUM_COLUMNS,
                   [r.as_dict() for r in solve.rows(problem.checkpoint, problem.step)])
        if solve.quantity == "density":
            logs.write(dens_path, DENSITY_COLUMNS, solve.curve(problem.checkpoint, problem.step))
        _drop_vectors(solve)
        solves.append(solve)
    return solves


def _drop_vectors(solve: Solve) -> None:
    """Free a written solve's eigenvectors (k vectors of its block's size, on the device):
    the table needs its numbers only, and the warm start keeps its own reference."""
    if solve.quantity == "eigenvalue":
        vectors = solve.result.eigenvectors
        solve.result.eigenvectors = vectors.new_empty((vectors.shape[0], 0))


def subject_data(subject, cfg: SpectrumConfig, device, dist: Dist, source: ModelSource) -> Data:
    """The examples a checkpoint is measured on: the first `cfg.samples` of the chosen split
    of in-memory data, or all of a --data MODULE:CALLABLE source, batched by --batch-size."""
    chunk = cfg.batch_size or subject.chunk_size
    if isinstance(subject.splits, UserSource):
        if cfg.samples is not None or cfg.split is not Split.train:
            raise SharpError("{samples} and {split} apply to in-memory examples; {data} "
                             f"{subject.splits.spec} is measured whole",
                             param=("samples", "split", "data"))
        data = subject.splits.data
        if isinstance(data, TorchDataset) and not isinstance(data, (IterableDataset, DataLoader)):
            data = DataLoader(data, batch_size=cfg.batch_size or DEFAULT_STREAM_BATCH)
        return as_data(data, num_terms=subject.num_terms, chunk_size=chunk, dist=dist,
                       device=device, check_deterministic=source.check_deterministic)
    x, y = _examples(subject.splits, cfg, subject.target.checkpoint)
    return as_data(x, y, num_terms=subject.num_terms, chunk_size=chunk, dist=dist, device=device)


def _examples(splits, cfg: SpectrumConfig, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `cfg.samples` examples of the chosen split (all of them by default)."""
    x, y = (splits.x_train, splits.y_train) if cfg.split is Split.train else (splits.x_test, splits.y_test)
    if x is None:
        raise SharpError(f"{{split={cfg.split}}}: the data of {path} has no x_test and y_test",
                         param="split")
    if cfg.samples is not None:
        if cfg.samples > len(x):
            raise SharpError(f"{{samples}} {cfg.samples}: the {cfg.split} split of {path} has "
                             f"only {len(x)} examples", param="samples")
        x, y = x[:cfg.samples], y[:cfg.samples]
    return x, y
