"""Power iteration with deflation, as PyHessian computes top Hessian eigenvalues.

Kept for comparison with PyHessian and for Eigen-SAM's few warm-started steps; Lanczos
(sharpcli.linalg.lanczos) reaches the same accuracy with far fewer matvecs and is the
default everywhere else.
"""

from __future__ import annotations

import math

import torch

from sharpcli.linalg.budget import MemoryBudget
from sharpcli.linalg.projection import project_out_
from sharpcli.linalg.results import (EigenResult, LinalgInputError, apply, check_k,
                                     check_count, make_generator, start_vector)
from sharpcli.linalg.shard import Sharded, dimension, draw, own_shards, shards_note, space_of


def minimum_vectors(k: int) -> int:
    """What power iteration keeps within a budget: the k pairs, the iterate, its product's
    copy and one vector of scratch (the residual)."""
    return k + 3


def power_iteration(op, k: int = 1, *, tol: float = 1e-3, max_iter: int = 100, v0=None,
                    seed: int = 0, residuals: bool = True, max_memory=None) -> EigenResult:
    """k eigenpairs by power iteration, each orthogonalised against those already found.

    Power iteration converges to the eigenvalue of LARGEST MAGNITUDE, so on an indefinite
    operator with λ_min < −λ_max it returns the negative one first; that is PyHessian's
    behaviour and the reason Lanczos is the default. The pairs are returned sorted by
    algebraic value, descending, like every EigenResult.

    For each pair: v ← A v/‖A v‖ (projected off the earlier pairs) until the Rayleigh
    quotient θ = vᵀAv changes by at most tol·|θ_prev| between iterations (converged), or
    `max_iter` matvecs. Each matvec also gives the exact residual ‖Av − θv‖ of the vector
    it was applied to, so a converged pair costs nothing extra. A pair that ran out of
    iterations ends on a fresh iterate, one step past the last matvec: with
    `residuals=True` one more matvec (counted) gives its θ and residual; with
    `residuals=False` it is skipped, θ is the previous iterate's Rayleigh quotient and the
    residual is nan — exactly `max_iter` matvecs, as Eigen-SAM's refresh wants.

    `v0` warm-starts the first pair; the rest start from Gaussian vectors drawn from `seed`.

    Memory: the method's does not grow with the iterations: the pairs as rows of one
    tensor, projections in place and inner products in float64, k + 3 vectors in all.
    `max_memory` (bytes, "1.5GB", or a MemoryBudget; None: no bound) only checks that
    minimum: a smaller budget is an error naming it.

    An operator whose vectors are split over processes (FSDP2's shards) runs on them: the
    pairs and the iterate are this process's shards, every inner product and norm summed
    over the processes, the random starts cut from whole draws as for Lanczos.
    """
    op = own_shards(op)
    check_k(op, k, dimension(op))
    check_count(max_iter, "max_iter")
    if not tol >= 0:
        raise LinalgInputError(f"tol must be non-negative, got {tol!r}")
    budget = MemoryBudget.of(max_memory)
    if budget is not None:
        budget.require(minimum_vectors(k), op.size, op.dtype,
                       f"power iteration for k={k} keeps {k} pairs, the iterate, its product "
                       "and 1 vector of scratch")
    result = _power(op, k, tol=tol, max_iter=max_iter, v0=v0, seed=seed, residuals=residuals)
    result.basis_vectors = k if budget is not None else None
    result.note = shards_note(op, "vectors")
    return result


def _power(op, k: int, *, tol: float, max_iter: int, v0, seed: int,
           residuals: bool) -> EigenResult:
    """power_iteration in k + 3 vectors, with or without a budget: the pairs found are rows
    of one (k, size) tensor, the iterate is normalised and projected in place, θ = vᵀAv in
    float64."""
    gen = make_generator(seed, op.device)
    space = space_of(op)  # sums over coordinates: over the processes for split vectors
    tiny = torch.finfo(torch.float64).tiny
    found = torch.empty(k, op.size, dtype=op.dtype, device=op.device)
    values, res, conv = [], [], []
    n_matvec = iterations = 0

    def pair(v):  # Av, θ and ‖Av − θv‖: one product and one vector of scratch
        w = apply(op, v)
        theta = float(space.inner(v[:, None], w))
        return w, theta, float(space.norms(w - theta * v))

    for i in range(k):
        v = _start(op, v0, gen) if i == 0 else draw(op, gen, "gaussian")
        v = project_out_(v, found[:i], space)
        v.div_(space.norms(v))
        theta_prev, converged = None, False
        for _ in range(max_iter):
            w, theta, residual = pair(v)
            n_matvec += 1
            iterations += 1
            if theta_prev is not None and abs(theta - theta_prev) <= tol * max(abs(theta_prev), tiny):
                converged = True
                break
            theta_prev = theta
            project_out_(w, found[:i], space)  # deflation
            norm = space.norms(w)
            if norm == 0:
                converged = True
                break
            v, w = w.div_(norm), None
        else:
            w = None
            if residuals:
                _, theta, residual = pair(v)
                n_matvec += 1
            else:
                residual = float("nan")
        if not math.isfinite(theta):
            raise LinalgInputError("the operator returned non-finite values (NaN or inf)")
        found[i] = v
        values.append(theta)
        res.append(residual)
        conv.append(converged)
        v = w = None
    order = torch.tensor(values, dtype=torch.float64).argsort(descending=True)
    _permute_rows_(found, order.tolist())
    return EigenResult(eigenvalues=torch.tensor(values, dtype=torch.float64)[order],
                       eigenvectors=found.T,
                       residuals=torch.tensor(res, dtype=torch.float64)[order],
                       converged=torch.tensor(conv, dtype=torch.bool)[order],
                       n_matvec=n_matvec, iterations=iterations, basis_vectors=k)


def _start(op, v0, gen: torch.Generator) -> torch.Tensor:
    """The first start vector: v0 or a Gaussian draw (on split vectors, this process's part
    of it; `_power` normalises it over all)."""
    if isinstance(op, Sharded):
        return op.start(v0)[:, 0] if v0 is not None else draw(op, gen, "gaussian")
    return start_vector(op, v0, gen)


def _permute_rows_(rows: torch.Tensor, order: list[int]) -> None:
    """rows ← rows[order] in place, following each cycle of the permutation with one row
    of scratch."""
    done = [False] * len(order)
    for start in range(len(order)):
        if done[start] or order[start] == start:
            continue
        first, j = rows[start].clone(), start
        while True:
            done[j] = True
            if order[j] == start:
                rows[j] = first
                break
            rows[j] = rows[order[j]]
            j = order[j]
