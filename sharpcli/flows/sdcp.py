"""The small semidefinite complementarity problem of the central flow, and its solver.

The problem (docs/guides/flow.md#what). Given a symmetric k×k matrix B and a linear map 𝒜 on
symmetric k×k matrices that is positive semidefinite (⟨X, 𝒜X⟩ ≥ 0), find X with

    X ⪰ 0,    Y = 𝒜X + B ⪰ 0,    ⟨X, Y⟩ = 0.

It is the optimality condition of the convex program  min_{X ⪰ 0} ½⟨X, 𝒜X⟩ + ⟨B, X⟩  (Y is
the gradient, the multiplier of X ⪰ 0), so it has a solution whenever that program is bounded
below, and 𝒜X is the same for every solution. Here X lives in orthonormal coordinates:
x = svec(X) holds X_ii and √2·X_ij for i < j, in the order (0,0), (0,1), …, (0,k−1), (1,1), …,
so that ⟨X, Y⟩ = x·y; 𝒜 is an m×m PSD matrix Q on them (m = k(k+1)/2), b = svec(B).

k, the number of critical directions, is small next to the model (13 at most on the default
run), so the solver is a plain barrier method on the m unknowns: for μ decreasing twentyfold
from max|b|², Newton steps on ½xᵀQx + bᵀx − μ log det X, whose minimiser has Y = μX⁻¹ and so
⟨X, Y⟩ = kμ; it stops at kμ ≤ tol·max|b|² (Q scaled to a unit mean diagonal, so that x is on
the scale of b). The steps are damped by the Newton decrement λ of the self-concordant
barrier objective (a step of 1/(1 + λ) stays inside X ≻ 0; Nesterov & Nemirovski), so no
line search is needed. A ridge of 1e-12 of Q's mean diagonal keeps the Newton systems
regular when Q is singular. k = 1 is solved in closed form, x = max(0, −b/Q), and a B that
is already positive semidefinite has X = 0 without a solver call (every eigenvalue below the
edge and not rising past it).
`solve_sdcp(..., solver="cvxpy")` hands the same program to cvxpy (Clarabel) instead, as a
cross-check (the optional extra `flow`: pip install -e '.[flow]').
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from sharpcli.errors import SharpError

SOLVERS = ("native", "cvxpy")


@dataclass
class SdcpSolution:
    X: np.ndarray          # (k, k) symmetric positive semidefinite
    Y: np.ndarray          # (k, k) 𝒜X + B, positive semidefinite up to the tolerance
    gap: float             # ⟨X, Y⟩, ≥ 0, zero at an exact solution
    newton_steps: int      # 0 for the closed form and cvxpy


def pairs(k: int) -> list[tuple[int, int]]:
    """The index pairs i ≤ j in svec order."""
    return [(i, j) for i in range(k) for j in range(i, k)]


@functools.cache
def _index(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows I, columns J of the pairs i ≤ j in svec order and their scale (1 on the
    diagonal, √2 off it), read-only."""
    I, J = (np.array(side, dtype=np.intp).reshape(-1) for side in zip(*pairs(k))) if k else \
        (np.zeros(0, dtype=np.intp),) * 2
    scale = np.where(I == J, 1.0, math.sqrt(2))
    for a in (I, J, scale):
        a.flags.writeable = False
    return I, J, scale


def svec(m: np.ndarray) -> np.ndarray:
    """x with ⟨M, N⟩ = svec(M)·svec(N) for symmetric M, N (M's symmetric part otherwise)."""
    I, J, scale = _index(len(m))
    return (m[I, J] + m[J, I]) * (scale / 2)


def smat(x: np.ndarray, k: int) -> np.ndarray:
    I, J, scale = _index(k)
    m = np.empty((k, k))
    m[I, J] = m[J, I] = x / scale
    return m


def congruence(Z: np.ndarray) -> np.ndarray:
    """The map X ↦ ZXZ on svec coordinates, (m, m): entry (ij, kl) is ⟨Eᵢⱼ, Z Eₖₗ Z⟩ for the
    orthonormal basis Eᵢᵢ = eᵢeᵢᵀ, Eᵢⱼ = (eᵢeⱼᵀ + eⱼeᵢᵀ)/√2, that is
    (ZᵢₖZⱼₗ + ZᵢₗZⱼₖ)·sᵢⱼsₖₗ/2 with s = 1 on the diagonal and √2 off it: the Hessian of
    −log det X, written out (a kron of k² × k² costs far more at k = 13)."""
    I, J, scale = _index(len(Z))
    cross = Z[np.ix_(I, I)] * Z[np.ix_(J, J)] + Z[np.ix_(I, J)] * Z[np.ix_(J, I)]
    return 0.5 * np.outer(scale, scale) * cross


def solve_sdcp(Q: np.ndarray, B: np.ndarray, *, tol: float = 1e-10,
               solver: str = "native") -> SdcpSolution:
    """X ⪰ 0 with 𝒜X + B ⪰ 0 and ⟨X, 𝒜X + B⟩ = 0, 𝒜 given by Q on svec coordinates (module
    docstring). `tol` bounds the gap ⟨X, Y⟩ relative to the problem's scale."""
    Q, B = np.asarray(Q, dtype=np.float64), np.asarray(B, dtype=np.float64)
    k = len(B)
    m = k * (k + 1) // 2
    if B.shape != (k, k) or Q.shape != (m, m):
        raise ValueError(f"B must be k×k and Q m×m with m = k(k+1)/2; got {B.shape}, {Q.shape}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    Q, B = (Q + Q.T) / 2, (B + B.T) / 2
    if np.linalg.eigvalsh(B)[0] >= 0:  # X = 0 solves it: Y = B ⪰ 0, ⟨X, Y⟩ = 0
        return SdcpSolution(np.zeros((k, k)), B, 0.0, 0)
    b = svec(B)
    scale = float(np.trace(Q)) / m
    if scale <= 0:  # 𝒜 = 0: X = 0 unless B has a negative direction, then nothing holds
        if np.linalg.eigvalsh(B)[0] < 0:
            raise SharpError("no X ⪰ 0 satisfies the complementarity problem: 𝒜 is zero and B "
                             "has a negative eigenvalue")
        return SdcpSolution(np.zeros((k, k)), B, 0.0, 0)
    if solver == "cvxpy":
        x, steps = _cvxpy(Q, b, k), 0
    elif k == 1:
        x, steps = np.array([max(0.0, -b[0] / Q[0, 0])]), 0
    else:
        try:
            x, steps = _barrier(Q / scale + 1e-12 * np.eye(m), b / scale, k, tol)
        except np.linalg.LinAlgError:
            x = np.full(m, np.nan)
    X = _psd_part(smat(x, k))
    Y = smat(Q @ svec(X) + b, k)
    # Unbounded (the ridge alone held x): Y then keeps a clearly negative eigenvalue.
    if not (np.isfinite(x).all() and np.linalg.eigvalsh(Y)[0] >= -1e-6 * (1 + np.abs(B).max())):
        raise SharpError("the complementarity problem has no bounded solution: 𝒜 vanishes "
                         "along a direction X ⪰ 0 on which ⟨B, X⟩ < 0")
    return SdcpSolution(X, Y, float(np.sum(X * Y)), steps)


def _psd_part(X: np.ndarray) -> np.ndarray:
    """X with its (rounding-size) negative eigenvalues set to zero."""
    vals, vecs = np.linalg.eigh((X + X.T) / 2)
    return (vecs * np.clip(vals, 0, None)) @ vecs.T


def _barrier(Q: np.ndarray, b: np.ndarray, k: int, tol: float) -> tuple[np.ndarray, int]:
    """Minimise ½xᵀQx + bᵀx over X ⪰ 0 along the central path (module docstring); Q is
    normalised to a unit mean diagonal, so x and μ are on the scale of b, and tol is relative
    to it."""
    size = float(np.abs(b).max())
    if size == 0:  # B = 0: X = 0 is a solution
        return np.zeros_like(b), 0
    x = size * svec(np.eye(k))
    # x and Y scale with b, so μ (Y = μX⁻¹) with its square: the last μ has ⟨X, Y⟩ = kμ
    # = tol·max|b|², an error of about tol·max|b| in X where Y is not zero
    mu, steps = size ** 2, 0
    floor = tol * size ** 2 / k
    while True:
        final, previous = mu <= floor, math.inf
        for _ in range(100):  # Newton on the barrier problem at this μ
            Z = np.linalg.inv(smat(x, k))
            grad = Q @ x + b - mu * svec(Z)
            hess = Q + mu * congruence(Z)
            step = -np.linalg.solve(hess, grad)
            # λ² = gᵀH⁻¹g/μ, the Newton decrement of the self-concordant (objective)/μ: a step
            # of 1/(1 + λ) stays inside X ≻ 0 and decreases it, a full step once λ < 1/4
            decrement = max(float(-grad @ step) / mu, 0.0)
            steps += 1
            x = _feasible(x, step / (1 + math.sqrt(decrement)) if decrement >= 1 / 16 else step, k)
            if decrement <= (1e-16 if final else 1e-2):
                break
            # at the last μ, Newton's quadratic convergence ends at rounding (λ² near 1e-9
            # at k = 13, where 100 more steps changed nothing): stop once it stalls there
            if final and decrement < 1e-6 and decrement > previous / 2:
                break
            previous = decrement
        if final:
            return x, steps
        mu = max(mu / 20, floor)


def _feasible(x: np.ndarray, step: np.ndarray, k: int) -> np.ndarray:
    """x + step, halving the step while X would not be positive definite (rounding only)."""
    for _ in range(60):
        try:
            np.linalg.cholesky(smat(x + step, k))
            return x + step
        except np.linalg.LinAlgError:
            step = step / 2
    return x


def _cvxpy(Q: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """The convex program by cvxpy (Clarabel): for cross-checks."""
    try:
        import cvxpy as cp
    except ImportError:
        raise SharpError("solver='cvxpy' needs cvxpy: pip install -e '.[flow]' in sharpcli's clone") from None
    X = cp.Variable((k, k), PSD=True)
    x = cp.hstack([X[i, j] if i == j else math.sqrt(2) * X[i, j] for i, j in pairs(k)])
    objective = 0.5 * cp.quad_form(x, cp.psd_wrap(Q)) + b @ x
    cp.Problem(cp.Minimize(objective)).solve(solver=cp.CLARABEL)
    if X.value is None:
        raise SharpError("cvxpy found no solution of the complementarity problem")
    return svec(X.value)
