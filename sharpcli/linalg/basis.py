"""The orthonormal basis of the memory-bounded solvers: a fixed number of rows, allocated once,
changed only in place.

It is held in two tensors: `head`, the first k rows, where the solver leaves the k
eigenvectors it returns, and `tail`, the rest. The result then keeps the head alone, without
a copy, and the tail is freed: the returned vectors are inside the budget, not on top of it.
Rows are addressed by one index 0…capacity−1 across both.

The basis may live on another device than the operator (the host, when the device is short:
budget.MemoryBudget.place); products then travel to it and the next vectors back, one block
each way per step, and all the work on the basis is done where the basis is.
"""

from __future__ import annotations

import numpy as np
import torch

from sharpcli.linalg.projection import LOCAL, Space, project_out_


class Basis:
    """`capacity` rows of `size` entries: rows [0, head_rows) in `head`, the others in `tail`."""

    def __init__(self, size: int, dtype: torch.dtype, capacity: int, head_rows: int,
                 device: torch.device, pin: bool = False):
        def empty(rows):
            return torch.empty(rows, size, dtype=dtype, device=device, pin_memory=pin)
        self.head, self.tail = empty(head_rows), empty(capacity - head_rows)
        self.size, self.capacity, self.device, self.dtype = size, capacity, device, dtype

    @property
    def nbytes(self) -> int:
        return (self.head.numel() + self.tail.numel()) * self.head.element_size()

    def pieces(self, lo: int, hi: int) -> list[torch.Tensor]:
        """Rows [lo, hi) as views, one per tensor they fall in."""
        k = len(self.head)
        out = []
        if lo < min(hi, k):
            out.append(self.head[lo:min(hi, k)])
        if hi > max(lo, k):
            out.append(self.tail[max(lo - k, 0):hi - k])
        return out

    def block(self, lo: int, hi: int) -> torch.Tensor:
        """Rows [lo, hi) as one (hi − lo, size) tensor: a view, or a copy where they span
        both tensors (only a block that straddles row k of a first cycle does)."""
        pieces = self.pieces(lo, hi)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def row(self, i: int) -> torch.Tensor:
        k = len(self.head)
        return self.head[i] if i < k else self.tail[i - k]

    def write(self, lo: int, rows: torch.Tensor) -> None:
        """Rows [lo, lo + len(rows)) ← rows."""
        i = 0
        for piece in self.pieces(lo, lo + len(rows)):
            piece.copy_(rows[i:i + len(piece)])
            i += len(piece)

    def move(self, src: int, dst: int, n: int) -> None:
        """Rows [dst, dst + n) ← rows [src, src + n), dst < src, one row at a time (the
        ranges may overlap)."""
        for i in range(n):
            self.row(dst + i).copy_(self.row(src + i))

    def mix_(self, s: torch.Tensor) -> None:
        """Rows [0, n_out) ← sᵀ rows [0, n_src) for s (n_src, n_out), n_out ≤ n_src: Ritz
        vectors from their coordinates, in place. Done in column chunks so that the scratch
        (a chunk of the inputs and of the outputs) stays within one vector."""
        n_src, n_out = s.shape
        chunk = max(1, self.size // (n_src + n_out))
        src, dst = self.pieces(0, n_src), self.pieces(0, n_out)
        for c0 in range(0, self.size, chunk):
            cols = slice(c0, c0 + chunk)
            y = s.T @ torch.cat([p[:, cols] for p in src])
            i = 0
            for p in dst:
                p[:, cols] = y[i:i + len(p)]
                i += len(p)

    def release(self) -> torch.Tensor:
        """The head (k, size); the tail is freed (a view of it would keep its storage)."""
        self.tail = self.tail.new_empty((0, self.size))
        return self.head


def right_multiply_(w: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """w[:, :n] ← w m for w (size, b) and m (b, n), n ≤ b, in place: row chunks, so that the
    scratch stays within one vector of `size`. Returns the view w[:, :n]."""
    n = m.shape[1]
    if w.shape[1] == 1:
        return w.mul_(m[0, 0]) if n else w[:, :0]
    chunk = max(1, w.shape[0] // w.shape[1])
    for r0 in range(0, w.shape[0], chunk):
        w[r0:r0 + chunk, :n] = w[r0:r0 + chunk] @ m
    return w[:, :n]


def orthonormalize_(w: torch.Tensor, against: list[torch.Tensor], width: int,
                    threshold: float | None, space: Space = LOCAL) -> tuple[int, np.ndarray]:
    """In place: w (size, c) ← [U | rest], U (size, good) orthonormal and orthogonal to the
    rows of `against` (a list of (m, size) pieces), spanning w's range after projection but
    for directions with singular value ≤ `threshold` (None: ε·s₁·c); good ≤ width. Returns
    good and the coupling B (width × c, zero rows from good on) with w_projected ≈ U B.

    From the Gram matrix WᵀW = V diag(s²) Vᵀ, taken in float64 (projection.inner):
    U = W V diag(1/s), B = diag(s) Vᵀ (Cholesky–QR by eigendecomposition). Its rounding is
    ε·s₁/s_min, so when W is nearly rank-deficient (s_min < √ε s₁) U is projected and
    orthonormalised once more (CholQR2: Fukaya et al. 2014), which also removes the
    components along `against` that rounding amplified in the small directions. `space`:
    where sums over coordinates happen (projection.project_out_)."""
    project_out_(w, against, space)
    eps = torch.finfo(w.dtype).eps
    lam, v = np.linalg.eigh(space.inner(w, w).cpu().numpy())
    lam, v = lam[::-1], v[:, ::-1]
    s = np.sqrt(np.clip(lam, 0.0, None))
    limit = eps * s[0] * w.shape[1] if threshold is None else threshold
    good = int(np.sum(s[:width] > limit))           # s descending: a prefix
    coupling = np.zeros((width, w.shape[1]))
    coupling[:good] = s[:good, None] * v[:, :good].T
    u = right_multiply_(w, _like(w, v[:, :good] / s[:good]))
    if good and s[good - 1] < eps ** 0.5 * s[0]:
        project_out_(u, against, space)
        lam2, v2 = np.linalg.eigh(space.inner(u, u).cpu().numpy())
        inv_sqrt = (v2 / np.sqrt(lam2)) @ v2.T
        right_multiply_(u, _like(w, inv_sqrt))
        coupling[:good] = inv_sqrt.T @ coupling[:good]
    return good, coupling


def _like(w: torch.Tensor, x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x), dtype=w.dtype, device=w.device)
