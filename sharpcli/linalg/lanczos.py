"""Lanczos with full reorthogonalisation: the default eigensolver for Hessian spectra.

After m steps from a unit vector v₁ the process has built an orthonormal basis V_m of the
Krylov space span{v₁, Av₁, …, A^{m−1}v₁} and a tridiagonal T_m = V_mᵀ A V_m with

    A V_m = V_m T_m + β_m v_{m+1} e_mᵀ.

If T_m s = θ s, the Ritz pair (θ, V_m s) has residual ‖A V_m s − θ V_m s‖ = |β_m s_m|, so
convergence is checked from T_m alone, without extra matvecs (Golub & Van Loan §10.1;
Parlett, "The Symmetric Eigenvalue Problem", ch. 13). Each step costs one matvec; T_m is
tiny and is diagonalised in float64 on the CPU.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from sharpcli.linalg.budget import MemoryBudget, cannot_hold
from sharpcli.linalg.projection import float64_sums, project_out, project_out_
from sharpcli.linalg.restart import restarted_lanczos
from sharpcli.linalg.shard import Sharded, dimension, draw, space_of
from sharpcli.linalg.results import (EigenResult, LinalgInputError, apply, apply_block,
                                     check_eigensolver, converged_pairs, make_generator,
                                     start_vector)

# β below this many ε·‖A‖ means the Krylov space is (numerically) invariant.
_BREAKDOWN = 100.0


class LanczosProcess:
    """The three-term recurrence plus full reorthogonalisation, one matvec per `step()`.

    The basis is stored as rows of one (max_steps, size) tensor on the operator's device, so
    reorthogonalising against it is two matrix-vector products ("twice is enough": classical
    Gram–Schmidt repeated once: linalg.projection). On an operator whose vectors are split
    over processes (shard.LocalShards: SLQ on FSDP2's shards) every sum over coordinates, the
    norms included, is summed over them too, so that all processes hold the same T and take
    the same decisions.
    """

    def __init__(self, op, v0: torch.Tensor, max_steps: int):
        self.op = op
        self.max_steps = max_steps
        self.basis = torch.empty(max_steps, op.size, dtype=op.dtype, device=op.device)
        self.basis[0] = v0
        self.alphas: list[float] = []
        self.betas: list[float] = []   # betas[j] couples step j to step j+1
        self.n_matvec = 0
        self.anorm = 0.0               # running lower bound on ‖A‖: max ‖A v_j‖
        self.eps = torch.finfo(op.dtype).eps
        self.broke_down = False        # the last step found an invariant subspace
        self.split = isinstance(op, Sharded)
        # float64 sums for long float32 vectors; over the processes for split ones
        self.space = space_of(op) if self.split else float64_sums(op.size, op.dtype)

    @property
    def m(self) -> int:
        return len(self.alphas)

    def step(self, w: torch.Tensor | None = None) -> None:
        """One Lanczos step; `w` = A v_j when the product was already taken (in a block
        with other processes' vectors: `step_together`)."""
        j = self.m
        v = self.basis[j]
        w = apply(self.op, v) if w is None else w
        self.n_matvec += 1
        # one host sync per step for α, ‖Av‖ and β: negligible next to a Hessian-vector product
        wide = self.space is not None
        alpha = self.space.inner(v[:, None], w)[0] if wide else torch.dot(v, w)
        self.anorm = max(self.anorm, self._norm(w))
        w = w - alpha.to(w.dtype) * v
        if j > 0:
            w = w - self.betas[-1] * self.basis[j - 1]
        w = project_out(w, self.basis[:j + 1], self.space)
        beta = float(self.space.inner(w[:, None], w)[0]) ** 0.5 if wide else self._norm(w)
        if self._record(float(alpha), beta):
            self.basis[j + 1] = w / beta

    def _norm(self, w: torch.Tensor) -> float:
        """‖w‖ over all of its coordinates (all processes' where it is split)."""
        return float(self.space.norms(w)) if self.split else float(torch.linalg.vector_norm(w))

    def _record(self, alpha: float, beta: float) -> bool:
        """Append α, β to T; whether the next Lanczos vector w/β is to be stored (not after a
        breakdown or the last step)."""
        if not (abs(alpha) < float("inf") and beta < float("inf")):
            raise LinalgInputError("the operator returned non-finite values (NaN or inf)")
        self.alphas.append(alpha)
        self.betas.append(beta)
        self.broke_down = beta <= _BREAKDOWN * self.eps * self.anorm
        return not self.broke_down and len(self.alphas) < self.max_steps

    @property
    def next_vector(self) -> torch.Tensor:
        """v_j, the vector the next step multiplies."""
        return self.basis[self.m]

    def restart(self, gen: torch.Generator) -> None:
        """Continue after an invariant subspace with a random vector orthogonal to the basis;
        the coupling β is set to zero, so T becomes block diagonal (as ARPACK does)."""
        j = self.m
        w = project_out(draw(self.op, gen, "gaussian"), self.basis[:j], self.space)
        self.basis[j] = w / self._norm(w)
        self.betas[-1] = 0.0
        self.broke_down = False

    def eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues (ascending) and eigenvectors of T_m, float64 CPU."""
        theta, s = self._eigh()
        return torch.from_numpy(theta), torch.from_numpy(s)

    def _eigh(self) -> tuple[np.ndarray, np.ndarray]:
        """`eigh` in numpy. LAPACK's tridiagonal solver (MRRR) is O(m²) and single-threaded,
        so calling it every step stays cheap."""
        if self.m == 1:
            return np.array(self.alphas, dtype=np.float64), np.ones((1, 1))
        return scipy.linalg.eigh_tridiagonal(np.array(self.alphas), np.array(self.betas[:-1]),
                                             lapack_driver="stemr")

    def ritz(self, k: int):
        """All Ritz values (descending), the top-k coordinate vectors s (m, k) and all the
        residual norms |β_m s_{m,i}|, float64 CPU. Reordered in numpy, where reversing is a
        view: this runs at every step, and torch's flips of tiny tensors cost more than the
        tridiagonal solve."""
        theta, s = self._eigh()
        theta, s = theta[::-1].copy(), s[:, ::-1]
        residuals = abs(self.betas[-1]) * np.abs(s[-1])
        return torch.from_numpy(theta), torch.from_numpy(s[:, :k].copy()), torch.from_numpy(residuals)


class WindowedLanczosProcess(LanczosProcess):
    """A LanczosProcess that keeps only its last `window` vectors (a ring of rows) and
    reorthogonalises against them: full reorthogonalisation when window ≥ max_steps, partial
    below (window 2: the three-term recurrence alone, as without any). All in place: no
    scratch of the operator's size beyond the product, α in float64 (projection.inner).

    Without full reorthogonalisation the basis loses orthogonality once Ritz values converge
    (Paige 1976), and copies ("ghosts") of converged extreme eigenvalues appear among the Ritz
    values; T_m is then the Lanczos matrix of a larger matrix whose eigenvalues cluster
    around A's (Greenbaum 1989), so the Gauss quadrature it gives stays accurate: a ghost
    cluster shares the weight of its eigenvalue (Knizhnerman 1996; Chen, Trogdon & Ubaru,
    ICML 2021)."""

    def __init__(self, op, v0: torch.Tensor, max_steps: int, window: int):
        self.op, self.max_steps = op, max_steps
        self.basis = torch.empty(min(max(2, window), max_steps), op.size, dtype=op.dtype,
                                 device=op.device)
        self.basis[0] = v0
        self.alphas, self.betas = [], []
        self.n_matvec, self.anorm = 0, 0.0
        self.eps = torch.finfo(op.dtype).eps
        self.broke_down = False
        self.split, self.space = isinstance(op, Sharded), space_of(op)

    def _row(self, j: int) -> torch.Tensor:
        return self.basis[j % len(self.basis)]

    def restart(self, gen: torch.Generator) -> None:
        # a fresh direction orthogonal to the basis needs all of it; SLQ stops the run instead
        raise NotImplementedError("a windowed Lanczos process cannot restart")

    @property
    def next_vector(self) -> torch.Tensor:
        return self._row(self.m)

    def step(self, w: torch.Tensor | None = None) -> None:
        j, v = self.m, self._row(self.m)
        w = apply(self.op, v) if w is None else w
        self.n_matvec += 1
        alpha = float(self.space.inner(v[:, None], w))
        self.anorm = max(self.anorm, self._norm(w))
        w.sub_(v, alpha=alpha)
        if j > 0:
            w.sub_(self._row(j - 1), alpha=self.betas[-1])
        project_out_(w, self.basis[:min(j + 1, len(self.basis))], self.space)
        beta = self._norm(w)
        if self._record(alpha, beta):
            self._row(j + 1).copy_(w).div_(beta)


def step_together(processes: list[LanczosProcess]) -> None:
    """One step of each of several independent processes on the same operator, their
    products taken as one block (apply_block): SLQ's probes in one pass over the data."""
    if not processes:
        return
    op = processes[0].op
    w = apply_block(op, torch.stack([p.next_vector for p in processes], dim=1))
    for p, col in zip(processes, w.T):
        p.step(col)


def unbudgeted_vectors(steps: int, k: int) -> int:
    """Vectors `lanczos` holds at its peak without a budget, the product included: the basis,
    the k Ritz vectors and their normalised copies, and the recurrence's temporaries
    (measured in tests/linalg/test_restart.py)."""
    return steps + 2 * k + 4


def restarts(op, k: int, max_iter: int, budget: MemoryBudget | None) -> bool:
    """Whether `lanczos` runs restarted: the budget cannot hold its basis of
    min(max_iter, size) steps."""
    return cannot_hold(budget, op, unbudgeted_vectors(min(max_iter, dimension(op)), k))


def lanczos(op, k: int = 1, *, tol: float = 1e-3, max_iter: int = 100, v0=None,
            seed: int = 0, criterion: str = "residual", max_memory=None) -> EigenResult:
    """Top-k eigenpairs of a symmetric operator, by algebraic value (largest first).

    Runs Lanczos with full reorthogonalisation, one matvec per iteration, and stops when all
    k top Ritz pairs meet `criterion` (checked every iteration from the tridiagonal matrix,
    at no matvec cost), after `max_iter` iterations, or when the basis spans the whole space
    (size ≤ max_iter: the results are then exact). Criteria:
    - "residual": ‖Av − θv‖ ≤ tol·max(|θ₁|, √ε‖T‖);
    - "eigenvalue": the estimated error of each Ritz value, min(r, r²/gap)
      (results.error_bounds), ≤ tol·|θ|, and the value moved by no more than that in the
      last step (results.eigenvalues_settled): tol is a relative accuracy of the
      eigenvalues themselves, the quantity people read, and is reached with fewer products
      than a residual of the same size.
    Large negative eigenvalues are never returned as "top": only the algebraic order counts.

    The reported residuals are |β_m s_{m,i}|, which equal ‖Av − θv‖ up to about ε‖A‖
    rounding. `converged[i]` says whether pair i meets the tolerance.

    `v0` warm-starts the process (e.g. the previous top eigenvector along a training run);
    otherwise a Gaussian vector from `seed`. If the Krylov space of the start vector is
    invariant before k pairs are found (e.g. v0 is an exact eigenvector), the process
    continues with a random vector orthogonal to the basis.

    Multiplicity: single-vector Lanczos sees each eigenspace through one direction, so an
    exactly repeated eigenvalue is found once (further copies only appear after a restart
    on an exhausted Krylov space, or through rounding). Close but distinct eigenvalues
    (clusters) are found, at the cost of more iterations.

    Memory: the basis holds up to min(max_iter, size) vectors of the operator's size.
    `max_memory` (bytes, "1.5GB", a MemoryBudget) bounds it: a budget that holds it changes
    nothing; a smaller one runs restart.restarted_lanczos (more products, same certificate).
    """
    check_eigensolver(op, k, max_iter, tol, criterion, "Lanczos")
    steps = min(max_iter, dimension(op))  # the space's, not this process's part (FSDP2)
    budget = MemoryBudget.of(max_memory)
    if restarts(op, k, max_iter, budget):
        return restarted_lanczos(op, k, max_memory=budget, tol=tol, max_iter=max_iter, seed=seed,
                                 v0=None if v0 is None else torch.as_tensor(v0).reshape(-1),
                                 criterion=criterion)
    gen = make_generator(seed, op.device)
    proc = LanczosProcess(op, start_vector(op, v0, gen), steps)
    previous = None  # the top-k Ritz values one step earlier
    while True:
        proc.step()
        done = proc.m == steps
        if proc.m >= k:
            theta, s, res = proc.ritz(k)
            converged, previous = converged_pairs(
                theta.numpy(), res.numpy(), k, criterion=criterion, tol=tol, previous=previous,
                tmax=max(map(abs, proc.alphas)) + max(proc.betas), eps=proc.eps)
            theta, res = theta[:k], res[:k]
            if converged.all() or done:
                break
        if done:
            break
        if proc.broke_down:
            proc.restart(gen)
    converged = torch.from_numpy(converged)
    y = s.to(dtype=op.dtype, device=op.device)
    vectors = proc.basis[: proc.m].T @ y
    vectors = vectors / vectors.norm(dim=0, keepdim=True)
    return EigenResult(eigenvalues=theta.clone(), eigenvectors=vectors, residuals=res.clone(),
                       converged=converged.clone(), n_matvec=proc.n_matvec, iterations=proc.m)
