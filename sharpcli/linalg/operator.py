"""The one abstraction the eigensolvers see: a symmetric linear operator with a matvec.

Lanczos, power iteration, Hutchinson and SLQ know nothing about models; the Hessian of a
network (sharpcli.hessian) and a dense test matrix both look like this. An operator may
also offer `matmat`, the products with a block of vectors at once (one pass over the data
for a Hessian); solvers reach it through `results.apply_block`, which loops over the
columns of operators that have none.
"""

from __future__ import annotations

from typing import Protocol

import torch

from sharpcli.linalg.results import apply_block


class LinearOperator(Protocol):
    """A symmetric operator on flat vectors of length `size`."""

    size: int
    dtype: torch.dtype
    device: torch.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Return A @ v for a 1-D tensor v of length `size`."""
        ...

    # Optional: def matmat(self, vs: torch.Tensor) -> torch.Tensor, A @ vs for vs of shape
    # (size, b), the same numbers as b matvecs. Not part of the protocol's required surface:
    # results.apply_block falls back to a loop of matvecs.


class DenseOperator:
    """A symmetric matrix held in memory: ground truth for tests, and quadratics."""

    def __init__(self, matrix: torch.Tensor):
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"need a square matrix, got shape {tuple(matrix.shape)}")
        self.matrix = matrix
        self.size = matrix.shape[0]
        self.dtype = matrix.dtype
        self.device = matrix.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matrix @ v

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        return self.matrix @ vs


class DiagonalScaled:
    """D A D with D = diag(d) for a symmetric operator A: symmetric again, one product of A
    per product. With d = P⁻¹ᐟ² for a positive diagonal P, D A D = P⁻¹ᐟ² A P⁻¹ᐟ² is
    similar to P⁻¹A (P¹ᐟ²·P⁻¹A·P⁻¹ᐟ²), so it has the eigenvalues of P⁻¹A — the
    preconditioned sharpness of an adaptive optimizer — as a symmetric problem that every
    solver here takes."""

    def __init__(self, op: LinearOperator, d: torch.Tensor):
        if d.shape != (op.size,):
            raise ValueError(f"diagonal of shape {tuple(d.shape)} for an operator of size {op.size}")
        self.op = op
        self.d = d.to(dtype=op.dtype, device=op.device)
        self.size, self.dtype, self.device = op.size, op.dtype, op.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.d * self.op.matvec(self.d * v)

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        """D A D V for the columns of V: A's own block product where it has one."""
        return self.d[:, None] * apply_block(self.op, self.d[:, None] * vs)


class Restricted:
    """R A Rᵀ for a symmetric operator A and R the rows of the identity at `coords` (sorted,
    distinct indices into A's vectors): the principal submatrix of A on those coordinates,
    symmetric again, one product of A per product. A Hessian block of part of a parameter —
    the query columns of a fused query-key-value weight — is this, around the Hessian block
    of the whole parameter. One vector of A's size is scratch (the embedded input); A's
    product is the product's own."""

    def __init__(self, op: LinearOperator, coords: torch.Tensor):
        coords = torch.as_tensor(coords, dtype=torch.long, device=op.device)
        if coords.ndim != 1 or len(coords) == 0:
            raise ValueError("coords must be a non-empty 1-D tensor of indices")
        if bool((coords[1:] <= coords[:-1]).any()) or int(coords[0]) < 0 or int(coords[-1]) >= op.size:
            raise ValueError(f"coords must be sorted, distinct and within [0, {op.size})")
        self.op, self.coords = op, coords
        self.size, self.dtype, self.device = len(coords), op.dtype, op.device

    def embed(self, vs: torch.Tensor) -> torch.Tensor:
        """Rᵀ v: v's entries at `coords`, zeros elsewhere (a vector or a block of columns)."""
        out = vs.new_zeros((self.op.size,) + tuple(vs.shape[1:]))
        out[self.coords] = vs
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.op.matvec(self.embed(v))[self.coords]

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        return apply_block(self.op, self.embed(vs))[self.coords]


def matrix_with_spectrum(eigenvalues, *, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Q diag(eigenvalues) Qᵀ with a random orthogonal Q: a test matrix whose spectrum we chose."""
    lam = torch.as_tensor(eigenvalues, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(lam), len(lam), generator=gen, dtype=dtype))
    return (q * lam) @ q.T


def to_scipy(op):
    """`op` as a scipy.sparse.linalg.LinearOperator on float64 numpy arrays, for users who
    bring their own solver (eigsh, cg, ...): each product moves its vector to the operator's
    device and dtype and the result back to the host as float64. Symmetric, so the adjoint
    product is the product itself."""
    import numpy as np
    from scipy.sparse.linalg import LinearOperator as ScipyOperator

    def matvec(x):
        v = torch.as_tensor(np.asarray(x).reshape(-1)).to(device=op.device, dtype=op.dtype)
        return op.matvec(v).detach().to("cpu", torch.float64).numpy()

    def matmat(x):
        vs = torch.as_tensor(np.asarray(x)).to(device=op.device, dtype=op.dtype)
        return apply_block(op, vs).detach().to("cpu", torch.float64).numpy()

    return ScipyOperator((op.size, op.size), matvec=matvec, rmatvec=matvec, matmat=matmat,
                         rmatmat=matmat, dtype=np.float64)


def matmul(op, v: torch.Tensor) -> torch.Tensor:
    """`op @ v`: the product with a vector (size,), or with each column of a block (size, m)."""
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"an operator multiplies a torch.Tensor, got {type(v).__name__}")
    if v.ndim == 1:
        return op.matvec(v)
    if v.ndim == 2:
        return apply_block(op, v)
    raise ValueError(f"an operator multiplies a vector (size,) or a block (size, m), got shape "
                     f"{tuple(v.shape)}")
