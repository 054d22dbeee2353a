"""Thick-restart Lanczos, single-vector and block, in a basis that never exceeds a memory budget.

Lanczos (lanczos.py, block_lanczos.py) keeps every vector it builds: up to max_iter × size
numbers. Thick restart keeps C of them. The state is an orthonormal V (size × m), a pending
block Q (size × p, p ≤ b) orthogonal to it, a symmetric T (m × m) and a coupling E (p × m):

    A V = V T + Q E.                                                        (1)

A step applies A to Q. With A_Q = QᵀAQ and W = AQ − V Eᵀ − Q A_Q (then reorthogonalised
against all of V and Q, twice where needed, as without a budget) written W = Q' B with Q'
orthonormal, (1) holds for [V Q] with T' = [[T, Eᵀ], [E, A_Q]] and E' = [0 B]: block Lanczos,
and plain Lanczos for b = 1 (B = β).

Restart, when the basis is full: with T = S Θ Sᵀ (Θ descending), keep the top l Ritz vectors
Y = V S_l. Then (1) holds for Y with T = Θ_l and E S_l, and the recurrence goes on from Q: T
becomes an arrowhead bordered by a new (block) tridiagonal part. This is the thick restart of
Wu & Simon (SIMAX 22, 2000), for blocks the block Krylov–Schur method of Zhou & Saad (Numer.
Algorithms 47, 2008); it keeps the same space as ARPACK's implicit restart (Morgan, Math.
Comp. 65, 1996) without the shifted QR steps.

Certificate: for T s = θ s, ‖A V s − θ V s‖ = ‖E s‖ by (1), the |β s_m| (‖B s_last‖ for
blocks) of the unbudgeted solvers, from the small matrices at no product's cost. Restarts
add rounding of order ε‖A‖ per restart to (1), so the certificate stays honest to that
level (tests compare it with ‖Av − θv‖).

Multiplicity, as without a budget: blocks of b find an eigenvalue of multiplicity ≤ b that
many times; one vector sees each eigenspace once (lanczos_top_k's deflation adds the copies).
"""

from __future__ import annotations

import numpy as np
import torch

from sharpcli.linalg.basis import Basis, orthonormalize_
from sharpcli.linalg.budget import MemoryBudget, vector_bytes
from sharpcli.linalg.projection import inner, project_out_
from sharpcli.linalg.results import (EigenResult, LinalgInputError, apply, apply_block,
                                     check_count, check_eigensolver, converged_pairs,
                                     make_generator, start_columns)
from sharpcli.linalg.shard import Sharded, dimension, draw, sharded, space_of, start

# β (a singular value of W) below this many ε·‖A‖ means the Krylov space is invariant.
_BREAKDOWN = 100.0


class ThickRestartLanczos:
    """The recurrence (1) in a Basis of `capacity` rows, one block product per `step()`; the
    first k rows are the head, where `vectors` leaves the result. `lock`: rows (n, size) on
    the basis's device that the basis stays orthogonal to (a deflation's found vectors)."""

    def __init__(self, op, v0, *, k: int, b: int, capacity: int, storage: torch.device,
                 gen: torch.Generator, lock: torch.Tensor | None = None):
        self.op, self.gen, self.b, self.capacity = op, gen, b, capacity
        self.space = space_of(op)  # sums over coordinates: across processes when sharded
        pin = storage.type == "cpu" and torch.device(op.device).type == "cuda"
        self.basis = Basis(op.size, op.dtype, capacity, k, storage, pin)
        self.lock = [] if lock is None else [lock]
        self.eps = torch.finfo(op.dtype).eps
        self.anorm = 0.0     # running lower bound on ‖A‖: the largest ‖A Q‖₂
        self.m, self.T = 0, np.zeros((0, 0))
        self.n_matvec = self.n_blocks = self.restarts = 0
        self._orthonormalize(self._start(v0), 0, b, threshold=None)
        self.p, self.E = b, np.zeros((b, 0))

    def _start(self, v0) -> torch.Tensor:
        """The start block (size, b): v0's columns, then unit Gaussian ones (as block_lanczos
        draws them; for b = 1 without v0, lanczos's start vector)."""
        cols = start(self.op, v0)
        w = torch.empty(self.op.size, self.b, dtype=self.op.dtype, device=self.basis.device)
        w[:, :cols.shape[1]] = cols
        for i in range(cols.shape[1], self.b):
            r = draw(self.op, self.gen)
            w[:, i] = r.div_(self.space.norms(r))
        return w

    def _small(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(x), dtype=self.op.dtype, device=self.basis.device)

    def step(self) -> None:
        """Apply A to the pending block, extend T, and orthonormalise the next block."""
        lo, hi = self.m, self.m + self.p
        x = self.basis.block(lo, hi).T.to(self.op.device)   # a copy only across head/tail
        w = apply(self.op, x[:, 0]).unsqueeze(1) if self.b == 1 else apply_block(self.op, x)
        del x
        w = w.to(self.basis.device)
        self.n_matvec += self.p
        self.n_blocks += 1
        a = self.space.sum_(torch.cat([inner(q.T, w) for q in self.basis.pieces(lo, hi)]))
        a = a.cpu().numpy()
        if not np.all(np.isfinite(a)):
            raise LinalgInputError("the operator returned non-finite values (NaN or inf)")
        a = (a + a.T) / 2
        gram = self.space.inner(w, w).cpu().numpy()
        self.anorm = max(self.anorm, float(np.sqrt(max(np.linalg.eigvalsh(gram)[-1], 0.0))))
        # W − V Eᵀ − Q A_Q: the recurrence (the arrow and β_{j−1} are in Eᵀ)
        i, coef = 0, self._small(np.vstack([self.E.T, a]))
        for piece in self.basis.pieces(0, hi):
            w.addmm_(piece.T, coef[i:i + len(piece)], alpha=-1)
            i += len(piece)
        self.T = np.block([[self.T, self.E.T], [self.E, a]])
        self.m = hi
        width = min(self.b, self.capacity - hi)
        if width == 0:  # the basis spans the whole space: T is A in that basis
            self.p, self.E = 0, np.zeros((0, hi))
            return
        coupling = self._orthonormalize(w, hi, width, _BREAKDOWN * self.eps * self.anorm)
        self.p, self.E = width, np.zeros((width, hi))
        self.E[:, lo:] = coupling

    def _orthonormalize(self, w: torch.Tensor, hi: int, width: int, threshold) -> np.ndarray:
        """Rows [hi, hi + width) ← an orthonormal basis of w (size, c) ⊥ rows [0, hi) and
        the lock (basis.orthonormalize_); returns the coupling B (width × c) with w = [those
        rows]ᵀ B. Directions with a singular value at or below `threshold` are exhausted (an
        invariant subspace): fresh random ones, coupled by zero."""
        against = self.lock + self.basis.pieces(0, hi)
        good, coupling = orthonormalize_(w, against, width, threshold, self.space)
        for i in range(good, width):
            r = draw(self.op, self.gen).to(self.basis.device)
            project_out_(r, against + [w[:, :i].T], self.space)
            w[:, i] = r.div_(self.space.norms(r))
        self.basis.write(hi, w[:, :width].T)
        return coupling

    def ritz(self):
        """All Ritz values (descending), their coordinates S (m, m) and residuals ‖E s‖."""
        theta, s = np.linalg.eigh(self.T)
        theta, s = theta[::-1].copy(), s[:, ::-1].copy()
        return theta, s, np.linalg.norm(self.E @ s, axis=0)

    def restart(self, theta: np.ndarray, s: np.ndarray, keep: int) -> None:
        """Keep the top `keep` Ritz vectors and the pending block, as (1) says."""
        self.basis.mix_(self._small(s[:, :keep]))
        self.basis.move(self.m, keep, self.p)
        self.T, self.E = np.diag(theta[:keep]), self.E @ s[:, :keep]
        self.m = keep
        self.restarts += 1

    def vectors(self, s: np.ndarray, k: int) -> torch.Tensor:
        """The top-k Ritz vectors as the head (k, size), unit rows; the rest is freed."""
        self.basis.mix_(self._small(s[:, :k]))
        head = self.basis.release()
        return head.div_(self.space.norms(head.T)[:, None])


def _whole(op, head: torch.Tensor) -> torch.Tensor:
    """The eigenvectors (size, k) on the operator's device from the head rows (k, size): as
    they are on one process; on several, gathered one at a time after the basis's tail is
    freed, so that the k whole vectors fit where the basis was."""
    if not isinstance(op, Sharded) or not op.gathered:  # whole, or split already (FSDP2)
        return head.T.to(op.device)
    out = torch.empty(op.dim, len(head), dtype=op.dtype, device=op.device)
    for i in range(len(head)):
        out[:, i] = op.gather(head[i].to(op.device))
    return out


def kept(k: int, room: int) -> int:
    """Ritz vectors kept at a restart: k plus half of the rows beyond them that may be kept
    and still leave room for a step. Keeping more carries more of what was found (the next
    few wanted Ritz vectors converge with the top k); keeping fewer makes room for new
    Krylov vectors: half and half is the usual middle (Wu & Simon §4)."""
    return max(k, k + (room - k) // 2)


def minimum_vectors(k: int, b: int, size: int) -> int:
    """The smallest budget of a restarted run, in vectors: k Ritz vectors and two blocks
    (the one multiplied and the next), or the whole space if smaller, and b of scratch."""
    return min(k + 2 * b, size) + b


def plan(op, k: int, b: int, budget: MemoryBudget, max_iter: int) -> tuple[int, torch.device]:
    """Basis rows and their device for the top k with blocks of b under `budget`: at least
    `minimum_vectors`; at most what max_iter products can fill, or the whole space. A
    sharded operator's vectors are its slice: the budget holds more of them, less the whole
    input block that each product gathers (b whole vectors: b·W slices)."""
    dim = dimension(op)
    gathered = b * op.gathered if isinstance(op, Sharded) else 0
    minimum = min(k + 2 * b, dim)
    have = budget.require(minimum_vectors(k, b, dim) + gathered, op.size, op.dtype,
                          f"restarted Lanczos for k={k} with blocks of {b} keeps {k} Ritz "
                          f"vectors, 2×{b} Lanczos vectors and {b} of scratch"
                          + (f", and gathers {b} whole vectors for each product" if gathered else ""))
    capacity = max(minimum, min(have - b - gathered, dim, max_iter + b))
    return capacity, budget.place(op.device, (capacity + b) * vector_bytes(op.size, op.dtype))


def restarted_lanczos(op, k: int = 1, *, max_memory, block_size: int = 1, tol: float = 1e-3,
                      max_iter: int = 100, v0=None, seed: int = 0,
                      criterion: str = "residual") -> EigenResult:
    """Top-k eigenpairs (largest algebraic first) by thick-restart (block) Lanczos whose basis,
    scratch included, fits in `max_memory` (bytes, "1.5GB", or a MemoryBudget).

    Memory, in vectors of the operator's size: C basis rows + b of scratch ≤ the budget, with
    C ≥ k + 2b (the minimum: a smaller budget is an error naming it). The product itself
    (b vectors) and the operator's working memory are outside the budget. The k returned
    eigenvectors are the basis's first k rows: the rest is freed, nothing is copied.

    What a small budget costs: products, not accuracy. Each restart throws away all but
    l ≈ k + (C − k)/2 Ritz vectors, so convergence slows from Lanczos's rate toward that of
    a block method on l vectors; at the minimum (C = k + 2b) each cycle adds one block, and
    the method is a block steepest ascent on the Rayleigh quotient: it converges, slowly.
    `max_iter` bounds the products (a budgeted run needs more than an unbudgeted one); the
    certificate and criteria (`tol`, `criterion`) are those of `lanczos`, and `converged`
    says which pairs met them.

    Where: the basis lives on the operator's device, or on the host (pinned memory) when a
    CUDA device's free memory is short or `MemoryBudget(..., where="host")` asks
    (MemoryBudget.place). Each product then travels to the host and the next block back,
    and the reorthogonalisation runs on the host's CPU, between products (not overlapped).

    `block_size` b (default 1, single-vector): as in block_lanczos, blocks of b find an
    eigenvalue of multiplicity ≤ b that many times; v0 (size,) or (size, c) warm-starts, and
    a v0 with c > b columns widens the block to c. `iterations` counts blocks,
    `basis_vectors` the rows C held, `restarts` the thick restarts.

    An operator that lives on several processes (`op.shards`, a torchrun Hessian) gets a
    sharded basis (shard.py): each process keeps 1/W of every vector's coordinates, so the
    budget, per process, holds W times the vectors; the eigenvectors returned are whole.
    """
    check_eigensolver(op, k, max_iter, tol, criterion, "Lanczos")
    check_count(block_size, "block_size")
    budget = MemoryBudget.of(max_memory)
    b = min(max(block_size, start_columns(v0)), op.size)
    op = sharded(op)
    capacity, storage = plan(op, k, b, budget, max_iter)
    gen = make_generator(seed, op.device)
    proc = ThickRestartLanczos(op, v0, k=k, b=b, capacity=capacity, storage=storage, gen=gen)
    return solve(proc, k, tol=tol, max_iter=max_iter, criterion=criterion)


def solve(proc: ThickRestartLanczos, k: int, *, tol: float, max_iter: int,
          criterion: str) -> EigenResult:
    """Step and restart until the top k Ritz pairs meet `criterion`, the basis spans the whole
    space (exact), or the next block would exceed max_iter products."""
    op, previous = proc.op, None
    while True:
        proc.step()
        done = proc.p == 0 or proc.n_matvec + proc.p > max_iter
        if proc.m >= k:
            theta, s, res = proc.ritz()
            converged, previous = converged_pairs(theta, res, k, criterion=criterion, tol=tol,
                                                  tmax=float(np.abs(theta).max()), eps=proc.eps,
                                                  previous=previous)
            if converged.all() or done:
                break
        elif done:
            raise LinalgInputError(f"restarted Lanczos ran out of products before k={k} Ritz pairs")
        if proc.m + proc.p + proc.b > proc.capacity and proc.capacity < dimension(op):
            proc.restart(theta, s, kept(k, proc.capacity - proc.p - proc.b))
    head = proc.vectors(s, k)
    return EigenResult(eigenvalues=torch.from_numpy(theta[:k].copy()),
                       eigenvectors=_whole(op, head),
                       residuals=torch.from_numpy(res[:k].copy()),
                       converged=torch.from_numpy(np.asarray(converged).copy()),
                       n_matvec=proc.n_matvec, iterations=proc.n_blocks,
                       basis_vectors=proc.capacity, restarts=proc.restarts)
