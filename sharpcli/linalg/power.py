"""Power iteration with deflation, as PyHessian computes top Hessian eigenvalues.

Kept for comparison with PyHessian and for Eigen-SAM's few warm-started steps; Lanczos
(sharpcli.linalg.lanczos) reaches the same accuracy with far fewer matvecs and is the
default everywhere else.
"""

from __future__ import annotations

import math

import torch

from sharpcli.linalg.projection import project_out
from sharpcli.linalg.results import (EigenResult, LinalgInputError, apply, check_k,
                                     check_count, make_generator, random_vector,
                                     start_vector)


def power_iteration(op, k: int = 1, *, tol: float = 1e-3, max_iter: int = 100, v0=None,
                    seed: int = 0, residuals: bool = True) -> EigenResult:
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
    """
    check_k(op, k)
    check_count(max_iter, "max_iter")
    if not tol >= 0:
        raise LinalgInputError(f"tol must be non-negative, got {tol!r}")
    gen = make_generator(seed, op.device)
    tiny = torch.finfo(torch.float64).tiny
    found: list[torch.Tensor] = []
    values, res, conv = [], [], []
    n_matvec = iterations = 0
    for i in range(k):
        v = start_vector(op, v0, gen) if i == 0 else random_vector(op, gen, "gaussian")
        done = torch.stack(found) if found else None  # rows: the pairs found so far
        v = project_out(v, done)
        v = v / v.norm()
        theta_prev = None
        converged = False
        for _ in range(max_iter):
            w = apply(op, v)
            n_matvec += 1
            iterations += 1
            theta = float(torch.dot(v, w))
            residual = float((w - theta * v).norm())
            if theta_prev is not None and abs(theta - theta_prev) <= tol * max(abs(theta_prev), tiny):
                converged = True
                break
            theta_prev = theta
            w = project_out(w, done)  # deflation
            norm = w.norm()
            if norm == 0:  # A v lies in the span of the pairs found: θ is exact, stop here
                converged = True
                break
            v = w / norm
        else:
            if residuals:
                w = apply(op, v)
                n_matvec += 1
                theta = float(torch.dot(v, w))
                residual = float((w - theta * v).norm())
            else:
                residual = float("nan")
        if not math.isfinite(theta):
            raise LinalgInputError("the operator returned non-finite values (NaN or inf)")
        found.append(v)
        values.append(theta)
        res.append(residual)
        conv.append(converged)
    order = torch.tensor(values, dtype=torch.float64).argsort(descending=True)
    vectors = torch.stack(found, dim=1)[:, order.to(op.device)]
    return EigenResult(
        eigenvalues=torch.tensor(values, dtype=torch.float64)[order],
        eigenvectors=vectors,
        residuals=torch.tensor(res, dtype=torch.float64)[order],
        converged=torch.tensor(conv, dtype=torch.bool)[order],
        n_matvec=n_matvec,
        iterations=iterations,
    )
