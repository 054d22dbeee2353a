"""Sharpness: the top eigenvalue λ₁ of the training-loss Hessian (or, with an adaptive
optimizer's preconditioner P, of P⁻¹H), and the alignment of a direction with its
eigenvector v₁."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sharpcli.distributed import SINGLE, Dist
from sharpcli.hessian.operator import HessianOperator
from sharpcli.hessian.params import full_precision
from sharpcli.linalg import DiagonalScaled, block_lanczos, lanczos
from sharpcli.hessian.losses import LossFn


@dataclass
class Sharpness:
    eigenvalues: torch.Tensor   # (k,) descending
    residuals: torch.Tensor     # (k,) ‖Hv − λv‖
    top_vectors: torch.Tensor   # (size, k) v₁…v_k, unit columns, on the model's device
    n_hvp: int
    converged: torch.Tensor     # (k,) bool: each pair met the tolerance within max_iter

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    @property
    def value(self) -> float:
        return float(self.eigenvalues[0])

    @property
    def top_vector(self) -> torch.Tensor:
        """v₁."""
        return self.top_vectors[:, 0]


def measure_sharpness(model: nn.Module, loss_fn, x, y=None, *,
                      k: int = 1, tol: float = 1e-3, max_iter: int = 100,
                      v0: torch.Tensor | None = None, seed: int = 0, chunk_size: int = 4096,
                      mode: str = "eval", dist: Dist = SINGLE,
                      preconditioner: torch.Tensor | None = None,
                      criterion: str = "eigenvalue", max_memory=None) -> Sharpness:
    """λ₁..λ_k of the Hessian of the mean loss over (x, y), each to a relative accuracy `tol`
    (criterion "eigenvalue": the estimated error min(r, r²/gap) ≤ tol·λ and λ settled; see
    sharpcli.linalg.results.eigenvalues_settled), or with criterion "residual" to
    ‖Hv − λv‖ ≤ tol·λ₁.

    `v0` warm-starts it: the previous v₁ (size,), or the previous top vectors (size, k) as
    columns. k = 1 runs Lanczos from v₁; k > 1 runs block Lanczos with blocks of k from
    all of them, so that cluster members and repeated eigenvalues are counted (a single
    Lanczos run can miss them). Under torchrun every process runs the same solver on the
    summed products. With the flat diagonal of a `preconditioner` P: the eigenvalues of
    P^{-1/2} H P^{-1/2}, i.e. of P⁻¹H (docs/reference/mathematics.md#preconditioned-sharpness), and that operator's eigenvectors.
    Products and solver in fp32 with TF32 off, whatever autocast or TF32 setting encloses
    the call. `max_memory` (bytes, "1.5GB"; None: no bound) bounds what the solver keeps
    beyond the model and one product: a budget too small for max_iter basis vectors runs
    thick-restart Lanczos, where max_iter bounds the products
    (docs/guides/large-models.md#memory-budget)."""
    with full_precision():
        op = HessianOperator(model, loss_fn, x, y, chunk_size=chunk_size, mode=mode, dist=dist)
        if preconditioner is not None:
            op = DiagonalScaled(op, preconditioner.rsqrt())
        if k == 1:
            start = v0[:, 0] if v0 is not None and v0.ndim == 2 else v0
            result = lanczos(op, k=1, tol=tol, max_iter=min(max_iter, op.size), v0=start,
                             seed=seed, criterion=criterion, max_memory=max_memory)
        else:
            result = block_lanczos(op, k, tol=tol, max_iter=max(max_iter, k), v0=v0, seed=seed,
                                   criterion=criterion, max_memory=max_memory)
    return Sharpness(result.eigenvalues, result.residuals, result.eigenvectors.detach(),
                     result.n_matvec, result.converged)


def alignment(direction: torch.Tensor, top_vector: torch.Tensor) -> float:
    """|cos(direction, v₁)|: the sign of an eigenvector is arbitrary."""
    d = direction.to(top_vector.dtype)
    denom = d.norm() * top_vector.norm()
    if denom == 0:
        return float("nan")
    return float((d @ top_vector).abs() / denom)
