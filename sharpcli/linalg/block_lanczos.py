"""Block Lanczos with full reorthogonalisation: top-k eigenpairs from products with blocks of
b vectors, one pass over the data per block.

From an orthonormal start block Q₁ (size × b) the process builds an orthonormal basis
V = [Q₁ … Q_j] of the block Krylov space span{Q₁, AQ₁, …, A^{j−1}Q₁} and the block
tridiagonal T = VᵀAV with diagonal blocks A_i = Q_iᵀAQ_i and couplings B_i:

    A Q_i = Q_{i−1} B_{i−1}ᵀ + Q_i A_i + Q_{i+1} B_i,     A V = V T + Q_{j+1} B_j E_jᵀ.

If T s = θ s, the Ritz pair (θ, Vs) has residual ‖AVs − θVs‖ = ‖B_j s_last‖, s_last the last
b entries of s: the certificate of docs/reference/mathematics.md#residuals comes from T alone, as in single-vector Lanczos
(Golub & Underwood 1977; Golub & Van Loan §10.3.6).

Why blocks: an eigenvalue of multiplicity m ≤ b is found m times, because the start block
has m independent directions in its eigenspace, where a single start vector has one; and a
cluster of up to b eigenvalues converges together at the rate set by the gap below the
cluster, not by the gaps inside it. So the top k come out counted with multiplicity without
the restarts of `lanczos_top_k`. The price is a Krylov space of lower degree for the same
number of products, which a warm start (the previous top vectors as Q₁) more than repays
along a training run or a checkpoint history.

A rank-deficient block (the Krylov space of some directions is exhausted: an invariant
subspace, or repeated eigenvalues beyond b) gets fresh random directions orthogonal to the
basis, with zero coupling: T stays block tridiagonal and the process goes on (as ARPACK's
restart does for one vector).
"""

from __future__ import annotations

import numpy as np
import torch

from sharpcli.linalg.budget import MemoryBudget, cannot_hold
from sharpcli.linalg.projection import float64_sums, project_out
from sharpcli.linalg.restart import restarted_lanczos
from sharpcli.linalg.results import (EigenResult, LinalgInputError, apply_block, check_count,
                                     check_eigensolver, converged_pairs, make_generator,
                                     random_vector, start_block, start_columns)

# A singular value below this many ε·‖A‖ means the block's direction is (numerically) in
# the span of the basis: the space it would add is exhausted.
_BREAKDOWN = 100.0


class BlockLanczosProcess:
    """The block recurrence plus full reorthogonalisation, one block product per `step()`.

    The basis is stored as rows of one (capacity, size) tensor on the operator's device and
    T as a float64 numpy matrix. Blocks have b columns, except that the last one is cut to
    the dimension left when the basis is about to fill the whole space."""

    def __init__(self, op, start: torch.Tensor, capacity: int, gen: torch.Generator):
        self.op, self.gen = op, gen
        self.capacity = min(capacity, op.size)
        self.basis = torch.empty(self.capacity, op.size, dtype=op.dtype, device=op.device)
        self.eps = torch.finfo(op.dtype).eps
        self.space = float64_sums(op.size, op.dtype)  # float64 sums for long float32 vectors
        self.anorm = 0.0      # running lower bound on ‖A‖: the largest ‖A Q_i‖₂
        self.T = np.zeros((self.capacity, self.capacity))
        width = min(start.shape[1], self.capacity)
        u, s, _ = torch.linalg.svd(start, full_matrices=False)
        good = s[:width] > self.eps * float(s.max()) * start.shape[1]
        self.basis[:width] = self._fill(u[:, :width], good, filled=0).T
        self.pending = (0, width)   # the block whose product comes next
        self.order = 0              # basis vectors whose products are in T
        self.coupling = np.zeros((0, width))  # B_j: the pending block × the last applied one
        self.n_matvec = 0
        self.n_blocks = 0

    def _inner(self, x: torch.Tensor, w: torch.Tensor) -> np.ndarray:
        """xᵀw (float64, on the host), with float64 sums for long vectors."""
        xw = self.space.inner(x, w) if self.space is not None else (x.T @ w).double()
        return xw.cpu().numpy()

    def _fill(self, q: torch.Tensor, good: torch.Tensor, filled: int) -> torch.Tensor:
        """q with its columns where `good` is false replaced by random unit vectors
        orthogonal to the first `filled` basis rows and to the other columns."""
        if bool(good.all()):
            return q
        q, good = q.clone(), good.clone()
        for i in torch.nonzero(~good).flatten().tolist():
            r = project_out(random_vector(self.op, self.gen, "gaussian"), self.basis[:filled],
                            self.space)
            r = project_out(r, q[:, good].T, self.space)
            q[:, i] = r / r.norm()
            good[i] = True
        return q

    @property
    def exhausted(self) -> bool:
        """The basis spans the whole space: T is A in that basis, its eigenpairs are A's."""
        return self.pending[1] == self.pending[0]

    def step(self) -> None:
        """Apply A to the pending block, extend T, and orthonormalise the next block."""
        lo, hi = self.pending
        q = self.basis[lo:hi].T                         # (size, b)
        w = apply_block(self.op, q)
        self.n_matvec += hi - lo
        self.n_blocks += 1
        a = self._inner(q, w)
        if not np.all(np.isfinite(a)):
            raise LinalgInputError("the operator returned non-finite values (NaN or inf)")
        a = (a + a.T) / 2
        self.T[lo:hi, lo:hi] = a
        self.anorm = max(self.anorm, float(torch.linalg.matrix_norm(w, ord=2)))
        w = w - q @ torch.as_tensor(a, dtype=w.dtype, device=w.device)
        if lo > 0:  # subtract Q_{j−1} B_{j−1}ᵀ; B_{j−1} sits below the diagonal block of j−1
            plo = self._previous_start
            b_prev = torch.as_tensor(self.T[lo:hi, plo:lo], dtype=w.dtype, device=w.device)
            w = w - self.basis[plo:lo].T @ b_prev.T
        w = project_out(w, self.basis[:hi], self.space)
        self.order, self._previous_start = hi, lo
        width = min(hi - lo, self.capacity - hi)
        if width == 0:
            self.pending, self.coupling = (hi, hi), np.zeros((0, hi - lo))
            return
        # W = U diag(s) Vᵀ: the next block is U, the coupling B_j = UᵀW = diag(s) Vᵀ.
        # Directions with s at rounding level are exhausted: fresh ones, coupled by zero.
        u, s, _ = torch.linalg.svd(w, full_matrices=False)
        good = s[:width] > _BREAKDOWN * self.eps * self.anorm
        nxt = u[:, :width]
        if bool(good.any()) and float(s[:width][good].min()) < self.eps ** 0.5 * float(s[0]):
            # W nearly rank-deficient: its small directions carry W's rounding-level
            # components along the basis, amplified; project them off again
            nxt = torch.linalg.qr(project_out(nxt, self.basis[:hi], self.space))[0]
        nxt = self._fill(nxt, good, filled=hi)
        if self.space is not None:  # float32 SVD/QR leave √n·ε of non-orthogonality: once more in float64
            lam, v = np.linalg.eigh(self._inner(nxt, nxt))
            nxt = nxt @ torch.as_tensor((v / np.sqrt(lam)) @ v.T, dtype=nxt.dtype, device=nxt.device)
        coupling = self._inner(nxt, w)
        coupling[~good.cpu().numpy()] = 0.0
        self.basis[hi:hi + width] = nxt.T
        self.T[hi:hi + width, lo:hi] = coupling
        self.T[lo:hi, hi:hi + width] = coupling.T
        self.pending, self.coupling = (hi, hi + width), coupling

    def ritz(self, k: int):
        """All Ritz values (descending), the top-k coordinate vectors (order, k) and all the
        residual norms ‖B_j s_last‖, float64 numpy."""
        n = self.order
        theta, s = np.linalg.eigh(self.T[:n, :n])
        theta, s = theta[::-1].copy(), s[:, ::-1].copy()
        residuals = np.linalg.norm(self.coupling @ s[self._previous_start:n], axis=0)
        return theta, s[:, :k], residuals


def unbudgeted_vectors(steps: int, k: int, b: int) -> int:
    """Vectors `block_lanczos` holds at its peak without a budget, the product included: a
    basis of (steps + 1)·b rows, the SVD of each block's residual, the k Ritz vectors and
    their normalised copies (measured in tests/linalg/test_restart.py)."""
    return (steps + 1) * b + max(2 * k + 2 * b + 2, 5 * b + 1) + 1


def block_width(op, k: int, block_size: int | None, v0) -> int:
    """The block size `block_lanczos` runs with: block_size (default k), widened to hold
    every warm-start column, at most the operator's size."""
    b = k if block_size is None else block_size
    check_count(b, "block_size")
    return min(max(b, start_columns(v0)), op.size)


def _blocks(k: int, b: int, max_iter: int) -> int:
    """Whole blocks within max_iter products, enough for k pairs."""
    return max(max_iter // b, -(-k // b))


def restarts(op, k: int, b: int, max_iter: int, budget: MemoryBudget | None) -> bool:
    """Whether `block_lanczos` with blocks of b runs restarted: the budget cannot hold its
    basis of the whole blocks within max_iter."""
    return cannot_hold(budget, op, unbudgeted_vectors(_blocks(k, b, max_iter), k, b))


def block_lanczos(op, k: int = 1, *, block_size: int | None = None, tol: float = 1e-3,
                  max_iter: int = 100, v0: torch.Tensor | None = None, seed: int = 0,
                  criterion: str = "residual", max_memory=None) -> EigenResult:
    """Top-k eigenpairs (largest algebraic first) by block Lanczos with blocks of
    `block_size` vectors (default k), each block one `matmat` of the operator.

    Stops when the top k Ritz pairs meet `criterion`:
    - "residual": ‖Av − θv‖ ≤ tol·max(|θ₁|, √ε‖T‖) for each, as `lanczos` does;
    - "eigenvalue": the estimated error of each Ritz value, min(r, r²/gap), is ≤ tol·|θ| and
      the value moved by no more than that since the last block (`eigenvalues_settled`):
      tol is then a relative accuracy of the eigenvalues themselves;
    or after the whole blocks that fit in `max_iter` products, or when the basis spans the
    whole space (then the results are exact).

    `v0` (size,) or (size, c) warm-starts the process: its columns (the previous top
    eigenvectors, say) are the start block, filled up to `block_size` with Gaussian vectors
    drawn from `seed`; with more than `block_size` columns the block grows to hold them all.
    Each returned residual is ‖B_j s_last‖, equal to ‖Av − θv‖ up to rounding of order ε‖A‖;
    `iterations` counts blocks, `n_matvec` products (b per block).
    Memory: the basis holds up to about max_iter vectors of the operator's size.
    `max_memory` (bytes, "1.5GB", or a MemoryBudget; None: no bound): a budget that holds
    all of that (`unbudgeted_vectors`) changes nothing; a smaller one runs thick-restart
    block Lanczos in a basis that fits (restart.restarted_lanczos, blocks of the same b).
    """
    check_eigensolver(op, k, max_iter, tol, criterion, "block Lanczos")
    b = block_width(op, k, block_size, v0)
    steps = _blocks(k, b, max_iter)
    budget = MemoryBudget.of(max_memory)
    if restarts(op, k, b, max_iter, budget):
        return restarted_lanczos(op, k, max_memory=budget, block_size=b, tol=tol,
                                 max_iter=max_iter, v0=v0, seed=seed, criterion=criterion)
    gen = make_generator(seed, op.device)
    start = start_block(op, v0)
    if start.shape[1] < b:
        fill = torch.stack([random_vector(op, gen, "gaussian") for _ in range(b - start.shape[1])], dim=1)
        start = torch.cat([start, fill / fill.norm(dim=0)], dim=1)
    proc = BlockLanczosProcess(op, start, capacity=(steps + 1) * b, gen=gen)
    previous = None  # the top-k Ritz values one block earlier
    while True:
        proc.step()
        done = proc.exhausted or proc.n_matvec + b > steps * b
        if proc.order >= k:
            theta, s, res = proc.ritz(k)
            converged, previous = converged_pairs(theta, res, k, criterion=criterion, tol=tol,
                                                  tmax=float(np.abs(theta).max()), eps=proc.eps,
                                                  previous=previous)
            res = res[:k]
            if converged.all() or done:
                break
        if done:
            raise LinalgInputError(f"block Lanczos ran out of products before k={k} Ritz pairs")
    n = proc.order
    y = torch.as_tensor(s.copy(), dtype=op.dtype, device=op.device)
    vectors = proc.basis[:n].T @ y
    vectors = vectors / vectors.norm(dim=0, keepdim=True)
    return EigenResult(eigenvalues=torch.from_numpy(theta[:k].copy()), eigenvectors=vectors,
                       residuals=torch.from_numpy(res.copy()),
                       converged=torch.from_numpy(np.asarray(converged).copy()),
                       n_matvec=proc.n_matvec, iterations=proc.n_blocks)

