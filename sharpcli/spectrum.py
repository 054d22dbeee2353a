"""`sharp spectrum` as a library: top-k eigenvalues, trace and spectral density of the Hessian
of the mean loss at saved checkpoints, as rows of spectrum.csv and density.csv (SPEC §3).

The solvers live in sharpcli.linalg and see only an operator with a matvec; this module
builds that operator from a model and its data (the whole network, or one parameter group
for `per_layer`), times each computation, counts its Hessian-vector products and turns the
results into rows. `--backend pyhessian` hands the same questions to the `pyhessian`
package instead (sharpcli.pyhessian_backend).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from sharpcli.errors import Interrupted, SharpError
from sharpcli.hessian import HessianOperator
from sharpcli.linalg import hutchinson_trace, lanczos_top_k, power_iteration, slq_density
from sharpcli.params import MEASUREMENT_MODES, named_param_groups, num_params, trainable_params

SPECTRUM_COLUMNS = ["checkpoint", "step", "block", "quantity", "index", "value", "residual",
                    "converged", "n_hvp", "seconds"]
DENSITY_COLUMNS = ["checkpoint", "step", "eigenvalue", "density"]
METHODS = ("lanczos", "power")
BACKENDS = ("native", "pyhessian")
TRACE_METHODS = ("hutchinson", "hutch++")
SPLITS = ("train", "test")


@dataclass
class SpectrumConfig:
    """What to compute at each checkpoint; the fields are the flags of `sharp spectrum`."""

    top_k: int = 5
    method: str | None = None      # None: lanczos (native); pyhessian has power iteration only
    tol: float = 1e-3              # lanczos: residual ≤ tol·|λ₁|; power: relative change of λ
    max_iter: int | None = None    # lanczos: per run (default max(100, 2k)); power: per pair (100)
    trace: bool = False
    trace_probes: int = 100
    trace_method: str = "hutchinson"
    trace_tol: float | None = None  # stop early once stderr ≤ tol·|trace| (None: all probes)
    density: bool = False
    density_runs: int = 5
    density_iters: int = 80
    density_grid: int = 1000
    density_sigma: float = 0.01    # Gaussian width relative to the spectrum's range
    per_layer: bool = False
    samples: int | None = None     # None: the whole split
    split: str = "train"
    batch_size: int | None = None  # HVP chunk; None: the run's physical_batch_size
    backend: str = "native"
    hessian_mode: str = "eval"
    device: str = "auto"
    seed: int = 0

    @property
    def eigen_method(self) -> str:
        return self.method or ("power" if self.backend == "pyhessian" else "lanczos")

    @property
    def iterations(self) -> int:
        """--max-iter as given, else 100 (PyHessian's default), and for Lanczos at least 2k."""
        if self.max_iter is not None:
            return self.max_iter
        return max(100, 2 * self.top_k) if self.eigen_method == "lanczos" else 100

    def validate(self) -> None:
        """A SharpError naming the flag for any value out of range or combination we refuse."""
        for flag, value, choices in [("--method", self.method, METHODS + (None,)),
                                     ("--backend", self.backend, BACKENDS),
                                     ("--trace-method", self.trace_method, TRACE_METHODS),
                                     ("--split", self.split, SPLITS),
                                     ("--hessian-mode", self.hessian_mode, MEASUREMENT_MODES)]:
            if value not in choices:
                raise SharpError(f"{flag} {value!r}: expected one of "
                                 f"{', '.join(c for c in choices if c)}")
        for flag, value in [("--top-k", self.top_k), ("--max-iter", self.max_iter),
                            ("--trace-probes", self.trace_probes),
                            ("--density-runs", self.density_runs),
                            ("--density-iters", self.density_iters),
                            ("--samples", self.samples), ("--batch-size", self.batch_size)]:
            if value is not None and value < 1:
                raise SharpError(f"{flag} must be a positive integer, got {value}")
        if self.density_grid < 2:
            raise SharpError(f"--density-grid must be at least 2, got {self.density_grid}")
        for flag, value in [("--tol", self.tol), ("--trace-tol", self.trace_tol),
                            ("--density-sigma", self.density_sigma)]:
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise SharpError(f"{flag} must be a finite non-negative number, got {value}")
        if not self.density_sigma > 0:
            raise SharpError(f"--density-sigma must be positive, got {self.density_sigma}")
        if self.eigen_method == "lanczos" and self.iterations < self.top_k:
            raise SharpError(f"--max-iter {self.max_iter} is below --top-k {self.top_k}: Lanczos "
                             "needs at least k iterations for k eigenvalues")
        if self.trace_method == "hutch++" and self.trace_probes < 3:
            raise SharpError(f"--trace-method hutch++ needs --trace-probes ≥ 3, got "
                             f"{self.trace_probes}")
        if self.backend == "pyhessian":
            from sharpcli.pyhessian_backend import check_supported

            check_supported(self)


@dataclass
class SpectrumRow:
    """One row of spectrum.csv."""

    checkpoint: str
    step: int | None
    block: str
    quantity: str          # eigenvalue, trace or density
    index: int             # eigenvalues: rank, 1 = largest; trace and density: 0
    value: float
    residual: float        # ‖Hv − λv‖ for eigenpairs; standard error for trace and density
    converged: bool | None
    n_hvp: int
    seconds: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Problem:
    """The Hessian to measure: the mean of `loss_fn` over (x, y) at the model's weights."""

    model: nn.Module
    loss_fn: Callable
    x: torch.Tensor
    y: torch.Tensor
    chunk_size: int = 4096
    checkpoint: str = ""
    step: int | None = None
    should_stop: Callable[[], bool] | None = None  # polled before every HVP


class _Stoppable:
    """An operator that raises Interrupted before a product once a stop was requested: Ctrl-C
    ends a long solve within one HVP, and the rows already written stay."""

    def __init__(self, op, should_stop):
        self.op, self.should_stop = op, should_stop
        self.size, self.dtype, self.device = op.size, op.dtype, op.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        if self.should_stop is not None and self.should_stop():
            raise Interrupted("interrupted")
        return self.op.matvec(v)


def parameter_blocks(model: nn.Module, per_layer: bool) -> dict[str, list[nn.Parameter]]:
    """{"all": every trainable parameter}, then with `per_layer` one block per module that
    owns parameters (named as in the model, e.g. "fc1", "layer1.0.conv1")."""
    blocks = {"all": trainable_params(model)}
    if per_layer:
        blocks.update(named_param_groups(model))
    return blocks


def compute_spectrum(problem: Problem, cfg: SpectrumConfig) -> Iterator[tuple[list[SpectrumRow], list[dict]]]:
    """The requested quantities one at a time, as (spectrum rows, density rows) pairs, so a
    caller can write each as soon as it is done. Eigenvalues of the whole network first,
    then its trace and density, then per-layer eigenvalues (and traces) block by block.

    A top-k larger than the whole network's parameter count is an error; a per-layer block
    smaller than k gives all of its eigenvalues instead.
    """
    n = num_params(trainable_params(problem.model))
    if cfg.top_k > n:
        raise SharpError(f"--top-k {cfg.top_k} is more than the model's {n} parameters")
    if cfg.backend == "pyhessian":
        from sharpcli.pyhessian_backend import pyhessian_quantities

        yield from pyhessian_quantities(problem, cfg)
        return
    for block, params in parameter_blocks(problem.model, cfg.per_layer).items():
        yield _eigen_rows(problem, cfg, block, params), []
        if cfg.trace:
            yield _trace_rows(problem, cfg, block, params), []
        if cfg.density and block == "all":
            yield _density_rows(problem, cfg, params)


def _operator(problem: Problem, cfg: SpectrumConfig, params) -> _Stoppable:
    op = HessianOperator(problem.model, problem.loss_fn, problem.x, problem.y,
                         chunk_size=problem.chunk_size, params=params, mode=cfg.hessian_mode)
    return _Stoppable(op, problem.should_stop)


def _row(problem: Problem, block: str, quantity: str, index: int, value: float,
         residual: float, converged, n_hvp: int, seconds: float) -> SpectrumRow:
    return SpectrumRow(problem.checkpoint, problem.step, block, quantity, index, float(value),
                       float(residual), converged, int(n_hvp), seconds)


def _eigen_rows(problem, cfg, block, params) -> list[SpectrumRow]:
    start = time.perf_counter()
    op = _operator(problem, cfg, params)  # timed too: building the gradient graph is part of it
    k = min(cfg.top_k, op.size)
    if cfg.eigen_method == "lanczos":
        res = lanczos_top_k(op, k, tol=cfg.tol, max_iter=cfg.iterations, seed=cfg.seed)
    else:
        res = power_iteration(op, k, tol=cfg.tol, max_iter=cfg.iterations, seed=cfg.seed)
    seconds = time.perf_counter() - start
    return [_row(problem, block, "eigenvalue", i + 1, res.eigenvalues[i], res.residuals[i],
                 bool(res.converged[i]), res.n_matvec, seconds) for i in range(k)]


def _trace_rows(problem, cfg, block, params) -> list[SpectrumRow]:
    start = time.perf_counter()
    op = _operator(problem, cfg, params)
    res = hutchinson_trace(op, n_probes=cfg.trace_probes, tol=cfg.trace_tol or None,
                           seed=cfg.seed, method=cfg.trace_method)
    seconds = time.perf_counter() - start
    return [_row(problem, block, "trace", 0, res.estimate, res.stderr, None, res.n_matvec,
                 seconds)]


def _density_rows(problem, cfg, params) -> tuple[list[SpectrumRow], list[dict]]:
    """density.csv rows on the grid, and one spectrum.csv row: the trace the density
    implies, n·∫tφ(t)dt = n·mean over runs of Σᵢwᵢθᵢ (each run's Σᵢwᵢθᵢ = vᵀHv for its unit
    probe v, so this is Hutchinson over the SLQ probes), with its standard error."""
    start = time.perf_counter()
    op = _operator(problem, cfg, params)
    res = slq_density(op, n_runs=cfg.density_runs, n_iter=cfg.density_iters,
                      grid_size=cfg.density_grid, sigma=cfg.density_sigma, seed=cfg.seed)
    seconds = time.perf_counter() - start
    per_run = op.size * (res.weights * res.nodes).sum(dim=1)
    runs = len(per_run)
    stderr = float(per_run.std() / math.sqrt(runs)) if runs > 1 else math.nan
    row = _row(problem, "all", "density", 0, per_run.mean(), stderr, None, res.n_matvec, seconds)
    curve = [{"checkpoint": problem.checkpoint, "step": problem.step, "eigenvalue": float(t),
              "density": float(d)} for t, d in zip(res.grid, res.density)]
    return [row], curve


# --- checkpoints on disk ---------------------------------------------------------------------

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
    from sharpcli.checkpoints import list_checkpoints
    from sharpcli.runs import checkpoint_files, is_run_dir

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
    from sharpcli.checkpoints import load_checkpoint, load_run_data
    from sharpcli.csvlog import CsvLog
    from sharpcli.train_setup import resolve_device

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
