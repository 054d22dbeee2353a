"""The public solvers: `sharpcli.eigs`, `sharpcli.trace` and `sharpcli.density`, functions of
any symmetric operator with a `matvec` (`sharpcli.hessian`'s, a DenseOperator, your own).

Each picks one of the algorithms of this package by name, decides once whether a memory
budget forces restarts, and returns the package's result object (values, vectors,
residuals, products; `.to_frame()` for a table). `sharpcli.spectrum` asks them its questions.
Every argument is honoured or refused, by its Python name.
"""

from __future__ import annotations

import torch

from sharpcli.linalg.block_lanczos import block_lanczos, block_width
from sharpcli.linalg.block_lanczos import restarts as block_restarts
from sharpcli.linalg.budget import MemoryBudget, vector_bytes
from sharpcli.linalg.deflation import lanczos_top_k, unbudgeted_top_k_vectors
from sharpcli.linalg.deflation import restarts as top_k_restarts
from sharpcli.linalg.density import slq_density
from sharpcli.linalg.lanczos import lanczos
from sharpcli.linalg.lanczos import restarts as lanczos_restarts
from sharpcli.linalg.lanczos import unbudgeted_vectors as lanczos_unbudgeted
from sharpcli.linalg.operator import LinearOperator
from sharpcli.linalg.power import power_iteration
from sharpcli.linalg.results import (DensityResult, EigenResult, LinalgInputError, TraceResult,
                                     check_k)
from sharpcli.linalg.shard import dimension, shards_of
from sharpcli.linalg.trace import hutchinson_trace

Memory = int | str | MemoryBudget | None  # a budget: bytes, a size such as "1.5GB", or None
EIGEN_METHODS = ("lanczos", "block", "power")
TRACE_METHODS = ("hutchinson", "hutch++")
# Products per Lanczos run by default when max_memory cannot hold the default run's basis:
# a restarted run needs more products than one that keeps every vector
# (docs/guides/large-models.md#memory-budget).
BUDGETED_MAX_ITER = 1000


def default_max_iter(method: str, k: int) -> int:
    """max_iter when not given: 100 (PyHessian's default), and for Lanczos at least 2k."""
    return 100 if method == "power" else max(100, 2 * k)


def eigs(op: LinearOperator, k: int = 5, *, tol: float = 1e-3, max_iter: int | None = None,
         method: str = "lanczos", check_missed: bool | None = None,
         block_size: int | None = None, max_memory: Memory = None, seed: int = 0,
         v0: torch.Tensor | None = None) -> EigenResult:
    """The k largest (algebraic) eigenvalues of a symmetric operator and their eigenvectors.

    Args:
        op: the operator: `size`, `dtype`, `device` and `matvec` (and optionally `matmat`).
        k: how many eigenpairs.
        tol: lanczos and block stop when every residual ‖Av − λv‖ ≤ tol·|λ₁|; power when
            each λ changes by at most tol relatively between iterations.
        max_iter: products per Lanczos run (block: per run, in blocks), or per pair for
            power. Default max(100, 2k) (power: 100); under a `max_memory` that forces
            restarts, 1000.
        method: "lanczos" (full reorthogonalisation), "block" (block Lanczos, the products
            of a block in one pass) or "power" (PyHessian's: largest magnitude first).
        check_missed: lanczos only: after convergence, look for eigenvalues the Krylov space
            missed on the deflated operator (default True; False saves those products).
        block_size: block only: vectors per block (default k).
        max_memory: bytes, a size such as "1.5GB", or a MemoryBudget: what the solver keeps
            beyond the operator and one product. A budget too small for the unbudgeted
            basis runs thick-restart Lanczos (more products, the same certificate).
        seed: the random start (and restarts) on the operator's device.
        v0: start vectors (size,) or (size, c): block Lanczos starts from the columns,
            lanczos and power from their sum.

    Returns:
        An EigenResult: `values` (k,) descending, `vectors` (size, k), `residuals` (k,)
        ‖Av − λv‖, `converged` (k,), `products`; `note` says what a budget cost.

    Raises:
        LinalgInputError (a SharpError and a ValueError): an argument out of range, or one
            that the chosen method would ignore.
    """
    if method not in EIGEN_METHODS:
        raise LinalgInputError(f"method must be one of {EIGEN_METHODS}, got {method!r}")
    if block_size is not None and method != "block":
        raise LinalgInputError(f"block_size applies to method='block', not method={method!r}")
    if check_missed is not None and method != "lanczos":
        raise LinalgInputError(f"check_missed applies to method='lanczos', not method={method!r}")
    check_k(op, k, dimension(op))  # FSDP2: the whole space, not this process's shards
    budget = MemoryBudget.of(max_memory)
    split = split_budget(op, method, k, max_iter)
    if split is not None and (budget is None or budget.bytes > split.bytes):
        budget = split
    check_missed = True if check_missed is None else check_missed
    restarted = restarts(op, k, method=method, check_missed=check_missed, block_size=block_size,
                         max_iter=max_iter, budget=budget, v0=v0)
    iters = max_iter if max_iter is not None else default_max_iter(method, k)
    if restarted and max_iter is None:
        iters = max(BUDGETED_MAX_ITER, iters)
    if method == "block":
        result = block_lanczos(op, k, block_size=block_size, tol=tol, max_iter=iters, seed=seed,
                               v0=v0, max_memory=budget)
    else:
        one = v0.sum(dim=1) if v0 is not None and v0.ndim == 2 else v0
        if method == "power":
            result = power_iteration(op, k, tol=tol, max_iter=iters, seed=seed, v0=one,
                                     max_memory=budget)
        elif check_missed:
            result = lanczos_top_k(op, k, tol=tol, max_iter=iters, seed=seed, v0=one,
                                   max_memory=budget)
        else:
            result = lanczos(op, k, tol=tol,
                             max_iter=iters if restarted else min(iters, dimension(op)),
                             seed=seed, v0=one, max_memory=budget)
    if restarted and split is budget and max_memory is None:
        world = shards_of(op).world
        result.note = (f"Lanczos basis sharded like the parameters over {world} "
                       f"process{'es' if world > 1 else ''}, {result.restarts} restarts")
    elif restarted:
        result.note = _restart_note(result, k, iters, op)
    return result


def split_budget(op, method: str, k: int, max_iter: int | None) -> MemoryBudget | None:
    """For vectors split over processes already (FSDP2's shards), where only the restarted
    solvers sum over processes: a budget one vector short of what the unbudgeted Lanczos
    keeps, so that the restarted solver runs, in practice without a restart (a larger
    max_memory is cut to it). None for any other operator."""
    shards = shards_of(op)
    if shards is None or shards.dim is None:
        return None
    if method != "lanczos":
        raise LinalgInputError(f"method={method!r}: an operator sharded like FSDP2's "
                               "parameters is solved by Lanczos only (method='lanczos')")
    iters = max_iter if max_iter is not None else default_max_iter(method, k)
    steps = max(k, min(iters, shards.dim))
    held = min(lanczos_unbudgeted(steps, k), unbudgeted_top_k_vectors(steps, k))
    return MemoryBudget((held - 1) * vector_bytes(op.size, op.dtype))


def restarts(op, k: int, *, method: str, check_missed: bool, block_size: int | None,
             max_iter: int | None, budget: MemoryBudget | None, v0=None) -> bool:
    """Whether the eigensolver runs restarted within the budget, asked of the solver itself
    at max_iter's default (or given) products."""
    if budget is None or method == "power":
        return False
    iters = max_iter if max_iter is not None else default_max_iter(method, k)
    if method == "block":
        return block_restarts(op, k, block_width(op, k, block_size, v0), iters, budget)
    return (top_k_restarts if check_missed else lanczos_restarts)(op, k, iters, budget)


def _restart_note(result: EigenResult, k: int, max_iter: int, op) -> str:
    """What a restarted solve did, and what to do when it did not converge."""
    shards = shards_of(op)
    split = f" split over {shards.world} processes" if shards and shards.world > 1 else ""
    note = (f"max_memory: thick-restart Lanczos in {result.basis_vectors} vectors{split}, "
            f"{result.restarts} restarts (the same residual certificate, more products)")
    missed = k - int(result.converged.sum())
    if missed:
        note += (f"; {missed} of {k} not converged within max_iter {max_iter} products per "
                 "run: raise max_iter")
    return note


def trace(op: LinearOperator, *, method: str = "hutchinson", probes: int = 100,
          tol: float | None = None, seed: int = 0, max_memory: Memory = None) -> TraceResult:
    """A stochastic estimate of tr(A) with its standard error.

    Args:
        op: the operator: `size`, `dtype`, `device` and `matvec`.
        method: "hutchinson" (Rademacher probes) or "hutch++" (a sketch of the top of the
            spectrum taken exactly, Hutchinson on the rest; Meyer et al. 2021).
        probes: the most products: Hutchinson's probes, or hutch++'s whole budget (≥ 3).
        tol: stop once stderr ≤ tol·|estimate| (after at least 10 probes); None: all probes.
        seed: the probes, drawn on the operator's device.
        max_memory: bytes, a size or a MemoryBudget: what the estimator keeps (hutch++'s
            sketch is capped to fit; `note` says so).

    Returns:
        A TraceResult: `value`, `stderr`, `products`, `probes`, `note`.

    Raises:
        LinalgInputError: an argument out of range.
    """
    if method not in TRACE_METHODS:
        raise LinalgInputError(f"method must be one of {TRACE_METHODS}, got {method!r}")
    return hutchinson_trace(op, n_probes=probes, tol=tol, seed=seed, method=method,
                            max_memory=max_memory)


def density(op: LinearOperator, *, runs: int = 5, iters: int = 80, grid: int = 1000,
            sigma: float = 0.01, seed: int = 0, max_memory: Memory = None) -> DensityResult:
    """The smoothed spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    Args:
        op: the operator: `size`, `dtype`, `device` and `matvec` (and optionally `matmat`).
        runs: Rademacher probes, each a Lanczos run.
        iters: Lanczos steps per run (at most the operator's size).
        grid: points of the eigenvalue grid.
        sigma: the Gaussian width relative to the range of the Ritz values.
        seed: the probes, drawn on the operator's device.
        max_memory: bytes, a size or a MemoryBudget: a budget too small for every run's
            basis reorthogonalises partially (`note` says so).

    Returns:
        A DensityResult: `grid`, `density` (trapezoid integral 1 over the grid), the
        quadrature `nodes` and `weights`, `products`.

    Raises:
        LinalgInputError: an argument out of range.
    """
    return slq_density(op, n_runs=runs, n_iter=iters, grid_size=grid, sigma=sigma, seed=seed,
                       max_memory=max_memory)
