"""`sharp spectrum` as a library: top-k eigenvalues, trace and spectral density of the Hessian
of the mean loss at saved checkpoints, as rows of spectrum.csv and density.csv (SPEC §3).

The solvers live in sharpcli.linalg and see only an operator with a matvec; this module
builds that operator from a model and its data (the whole network, or one parameter group
for `per_layer`), times each computation, counts its Hessian-vector products and turns the
results into rows. `--backend pyhessian` hands the same questions to the `pyhessian`
package instead (sharpcli.spectra.pyhessian).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from sharpcli.errors import Interrupted, SharpError
from sharpcli.hessian import HessianOperator
from sharpcli.hessian.ggn import GaussNewtonPart, gauss_newton_separable
from sharpcli.linalg import (control_variate_trace, hutchinson_trace, lanczos, lanczos_top_k,
                             power_iteration, slq_density)
from sharpcli.hessian.params import named_param_groups, num_params, trainable_params
from sharpcli.spectra.config import (DENSITY_COLUMNS, SPECTRUM_COLUMNS,  # noqa: F401 (re-exported)
                                      SpectrumConfig, SpectrumRow)

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
        from sharpcli.spectra.pyhessian import pyhessian_quantities

        yield from pyhessian_quantities(problem, cfg)
        return
    if cfg.trace and trace_method(problem.model, cfg) == "gauss-newton" \
            and not gauss_newton_separable(problem.model, cfg.hessian_mode):
        raise SharpError("--trace-method gauss-newton needs each example's output to depend on "
                         "that example alone, and BatchNorm in --hessian-mode train normalises by "
                         "the batch; use --hessian-mode eval or --trace-method hutchinson")
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
    if cfg.eigen_method == "lanczos" and cfg.check_missed:
        res = lanczos_top_k(op, k, tol=cfg.tol, max_iter=cfg.iterations, seed=cfg.seed)
    elif cfg.eigen_method == "lanczos":
        res = lanczos(op, k, tol=cfg.tol, max_iter=min(cfg.iterations, op.size), seed=cfg.seed)
    else:
        res = power_iteration(op, k, tol=cfg.tol, max_iter=cfg.iterations, seed=cfg.seed)
    seconds = time.perf_counter() - start
    return [_row(problem, block, "eigenvalue", i + 1, res.eigenvalues[i], res.residuals[i],
                 bool(res.converged[i]), res.n_matvec, seconds) for i in range(k)]


def trace_method(model: nn.Module, cfg: SpectrumConfig) -> str:
    """--trace-method with `auto` resolved: the Gauss–Newton control variate wherever it
    applies (each example's output its own), Hutchinson where it does not."""
    if cfg.trace_method != "auto":
        return cfg.trace_method
    return "gauss-newton" if gauss_newton_separable(model, cfg.hessian_mode) else "hutchinson"


def _trace_rows(problem, cfg, block, params) -> list[SpectrumRow]:
    start = time.perf_counter()
    op = _operator(problem, cfg, params)
    method = trace_method(problem.model, cfg)
    if method == "gauss-newton":
        # tr H = tr G (exact) + E[zᵀHz − zᵀGz]: only the small remainder is left to chance
        part = GaussNewtonPart(problem.model, problem.loss_fn, problem.x, problem.y,
                               chunk_size=problem.chunk_size, params=params,
                               mode=cfg.hessian_mode, should_stop=problem.should_stop)
        res = control_variate_trace(op, part.trace(), part.quadratic_form,
                                    n_probes=cfg.trace_probes, tol=cfg.native_trace_tol,
                                    seed=cfg.seed)
    else:
        res = hutchinson_trace(op, n_probes=cfg.trace_probes, tol=cfg.native_trace_tol,
                               seed=cfg.seed, method=method)
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
