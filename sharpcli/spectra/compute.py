"""`sharp spectrum` as a library: top-k eigenvalues, trace and spectral density of the Hessian
of the mean loss (docs/reference/mathematics.md#mean-loss), as `Solve` results.

The solvers live in sharpcli.linalg and see only an operator with a matvec; this module
builds that operator from a problem (the whole network, or one parameter group for
`per_layer`), times each computation and counts its Hessian-vector products.
`--backend pyhessian` hands the same questions to the `pyhessian` package instead
(sharpcli.spectra.pyhessian).
"""

from __future__ import annotations

import time
from typing import Iterator

import torch

from sharpcli.config import Backend, Method, TraceMethod
from sharpcli.errors import SharpError
from sharpcli.hessian import HessianOperator
from sharpcli.hessian.ggn import GaussNewtonPart, gauss_newton_separable, gauss_newton_unavailable
from sharpcli.hessian.params import full_precision, num_params, trainable_params
from sharpcli.linalg import (block_lanczos, control_variate_trace, hutchinson_trace, lanczos,
                            lanczos_top_k, power_iteration, slq_density)
from sharpcli.spectra.config import SpectrumConfig
from sharpcli.spectra.problem import Problem, Solve, Stoppable, parameter_blocks


def compute_spectrum(problem: Problem, cfg: SpectrumConfig,
                     warm: dict[str, torch.Tensor] | None = None) -> Iterator[Solve]:
    """The requested quantities one at a time, so a caller can write each as soon as it is
    done: eigenvalues of the whole network first, then its trace and density, then per-layer
    eigenvalues (and traces) block by block.

    A top-k larger than the whole network's parameter count is an error; a per-layer block
    smaller than k gives all of its eigenvalues instead. `warm`, when given, maps a block's
    name to the eigenvectors of the last solve (the previous checkpoint of the same run):
    each eigenvalue solve starts from them, and leaves its own there for the next.
    """
    n = num_params(trainable_params(problem.model))
    if cfg.top_k > n:
        raise SharpError(f"--top-k {cfg.top_k} is more than the model's {n} parameters")
    if cfg.backend is Backend.pyhessian:
        if problem.dist.enabled:
            raise SharpError("--backend pyhessian runs in one process: its products cannot be "
                             "summed over torchrun's processes; use --backend native")
        from sharpcli.spectra.pyhessian import pyhessian_solves  # an optional package

        yield from pyhessian_solves(problem, cfg)
        return
    if cfg.trace and trace_method(problem, cfg) is TraceMethod.gauss_newton:
        if not gauss_newton_separable(problem.model, cfg.hessian_mode):
            raise SharpError("--trace-method gauss-newton needs each example's output to depend "
                             "on that example alone, and BatchNorm in --hessian-mode train "
                             "normalises by the batch; use --hessian-mode eval or --trace-method "
                             "hutchinson")
        why = gauss_newton_unavailable(problem.call, problem.data)
        if why is not None:
            raise SharpError(f"--trace-method gauss-newton needs per-example outputs, but {why}; "
                             "use --trace-method hutchinson")
    for block, params in parameter_blocks(problem.model, cfg.per_layer).items():
        def eigenvalues(op, block=block):
            result = _eigenvalues(op, cfg, None if warm is None else _warm_start(warm.get(block), op))
            if warm is not None:
                warm[block] = result.eigenvectors
            return result

        yield _timed(block, "eigenvalue", eigenvalues, problem, cfg, params)
        if cfg.trace:
            solve = _timed(block, "trace", lambda op: _trace(op, problem, cfg, params),
                           problem, cfg, params)
            solve.note = trace_note(problem, cfg)
            yield solve
        if cfg.density and block == "all":
            yield _timed(block, "density", lambda op: _density(op, cfg), problem, cfg, params)


def _timed(block: str, quantity: str, solve, problem: Problem, cfg: SpectrumConfig,
           params) -> Solve:
    """Run `solve(operator)` on the block's Hessian; its wall time includes building the
    operator (the gradient graph is part of the cost)."""
    start = time.perf_counter()
    with full_precision():  # the solver's own arithmetic too: fp32, TF32 off
        hessian = HessianOperator(problem.model, problem.call, problem.data, params=params,
                                  mode=cfg.hessian_mode,
                                  hvp="forward-over-reverse" if cfg.compile else "double-backward",
                                  compile=cfg.compile)
        op = Stoppable(problem.scaled(hessian, params), problem.should_stop, problem.dist)
        result = solve(op)
    return Solve(block, quantity, result, result.n_matvec, time.perf_counter() - start, op.size)


def _eigenvalues(op, cfg: SpectrumConfig, v0: torch.Tensor | None = None):
    """The top k by the chosen method, started from the columns of v0 when given: block
    Lanczos takes them all as its start block; single-vector Lanczos and power iteration
    start from their sum, a vector with a share in every one of them."""
    k = min(cfg.top_k, op.size)
    one = None if v0 is None else v0.sum(dim=1)
    if cfg.eigen_method is Method.block:
        return block_lanczos(op, k, block_size=cfg.block_size, tol=cfg.tol,
                             max_iter=cfg.iterations, seed=cfg.seed, v0=v0)
    if cfg.eigen_method is Method.lanczos and cfg.check_missed:
        return lanczos_top_k(op, k, tol=cfg.tol, max_iter=cfg.iterations, seed=cfg.seed, v0=one)
    if cfg.eigen_method is Method.lanczos:
        return lanczos(op, k, tol=cfg.tol, max_iter=min(cfg.iterations, op.size), seed=cfg.seed,
                       v0=one)
    return power_iteration(op, k, tol=cfg.tol, max_iter=cfg.iterations, seed=cfg.seed, v0=one)


def _warm_start(vectors: torch.Tensor | None, op) -> torch.Tensor | None:
    """The previous solve's eigenvectors if they fit this operator (same parameter count,
    finite, a sum that does not cancel), else None: a cold start."""
    if vectors is None or vectors.shape[0] != op.size or not bool(torch.isfinite(vectors).all()):
        return None
    vectors = vectors.to(device=op.device, dtype=op.dtype)
    return vectors if float(vectors.sum(dim=1).norm()) > 0 else None


def trace_method(problem: Problem, cfg: SpectrumConfig) -> TraceMethod:
    """--trace-method with `auto` resolved: the Gauss–Newton control variate wherever it
    applies (each example's output its own and available, and the operator H itself),
    Hutchinson where it does not."""
    if cfg.trace_method is not TraceMethod.auto:
        return cfg.trace_method
    applies = (gauss_newton_separable(problem.model, cfg.hessian_mode) and not cfg.preconditioned
               and gauss_newton_unavailable(problem.call, problem.data) is None)
    return TraceMethod.gauss_newton if applies else TraceMethod.hutchinson


def trace_note(problem: Problem, cfg: SpectrumConfig) -> str | None:
    """Why an `auto` trace fell back to Hutchinson where the Gauss–Newton control variate
    would be the default: the per-example outputs it needs are not available."""
    if cfg.trace_method is not TraceMethod.auto or cfg.preconditioned:
        return None
    why = gauss_newton_unavailable(problem.call, problem.data)
    return None if why is None else f"trace by Hutchinson (no Gauss–Newton control variate: {why})"


def _trace(op, problem: Problem, cfg: SpectrumConfig, params):
    method = trace_method(problem, cfg)
    if method is TraceMethod.gauss_newton:
        # tr H = tr G (exact) + E[zᵀHz − zᵀGz]: only the small remainder is left to chance
        part = GaussNewtonPart(problem.model, problem.call, problem.data, params=params,
                               mode=cfg.hessian_mode,
                               # a stop within the Jacobian pass would leave the other
                               # processes in its sum: they stop at the next product together
                               should_stop=None if problem.dist.enabled else problem.should_stop)
        return control_variate_trace(op, part.trace(), part.quadratic_form,
                                     n_probes=cfg.trace_probes, tol=cfg.native_trace_tol,
                                     seed=cfg.seed)
    return hutchinson_trace(op, n_probes=cfg.trace_probes, tol=cfg.native_trace_tol,
                            seed=cfg.seed, method=method.value)


def _density(op, cfg: SpectrumConfig):
    return slq_density(op, n_runs=cfg.density_runs, n_iter=cfg.density_iters,
                       grid_size=cfg.density_grid, sigma=cfg.density_sigma, seed=cfg.seed)
