"""Sharpness: the top eigenvalue λ₁ of the training-loss Hessian (or, with an adaptive
optimizer's preconditioner P, of P⁻¹H), and the alignment of a direction with its
eigenvector v₁."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from sharpcli.distributed import SINGLE, Dist
from sharpcli.hessian.finite_difference import resolve_hvp
from sharpcli.hessian.operator import HessianOperator
from sharpcli.hessian.params import full_precision
from sharpcli.linalg import DiagonalScaled, block_lanczos, lanczos
from sharpcli.linalg.api import split_budget
from sharpcli.linalg.budget import MemoryBudget
from sharpcli.linalg.shard import dimension, shards_of
from sharpcli.hessian.losses import LossFn


@dataclass
class Sharpness:
    eigenvalues: torch.Tensor   # (k,) descending
    residuals: torch.Tensor     # (k,) ‖Hv − λv‖
    top_vectors: torch.Tensor   # (size, k) v₁…v_k, unit columns, on the model's device
    n_hvp: int
    converged: torch.Tensor     # (k,) bool: each pair met the tolerance within max_iter
    # sums over coordinates across processes, where the vectors are shards (FSDP2)
    sum_: Callable[[torch.Tensor], torch.Tensor] | None = None

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
    (docs/guides/large-models.md#memory-budget). A model sharded by FSDP2 is measured with
    finite-difference products on a basis sharded like its parameters, by Lanczos for any
    k; its eigenvectors are this process's shards, and `sum_` sums over the processes
    (docs/guides/large-models.md#fsdp2)."""
    with full_precision():
        # an FSDP2 model's products are finite differences, its vectors shards (spectrum's too)
        op = HessianOperator(model, loss_fn, x, y, chunk_size=chunk_size, mode=mode, dist=dist,
                             hvp=resolve_hvp("auto", model))
        if preconditioner is not None:
            op = DiagonalScaled(op, preconditioner.rsqrt())
        # FSDP2: only the restarted solver sums over processes; a budget just short of the
        # whole basis picks it, as sharpcli.eigs does (block Lanczos has no sharded form)
        split = split_budget(op, "lanczos", k, max_iter)
        if split is not None:
            budget = MemoryBudget.of(max_memory)
            max_memory = split if budget is None or budget.bytes > split.bytes else budget
        if k == 1 or split is not None:
            start = v0 if v0 is None or v0.ndim == 1 else (v0[:, 0] if k == 1 else v0.sum(dim=1))
            result = lanczos(op, k=k, tol=tol, max_iter=min(max_iter, dimension(op)), v0=start,
                             seed=seed, criterion=criterion, max_memory=max_memory)
        else:
            result = block_lanczos(op, k, tol=tol, max_iter=max(max_iter, k), v0=v0, seed=seed,
                                   criterion=criterion, max_memory=max_memory)
    shards = shards_of(op)
    return Sharpness(result.eigenvalues, result.residuals, result.eigenvectors.detach(),
                     result.n_matvec, result.converged,
                     shards.sum_ if shards is not None and shards.dim is not None else None)


def alignment(direction: torch.Tensor, top_vector: torch.Tensor,
              sum_: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """|cos(direction, v₁)|: the sign of an eigenvector is arbitrary. With `sum_` the two
    are this process's shards, and the products are summed over the processes."""
    d = direction.to(top_vector.dtype)
    sums = torch.stack([d @ top_vector, d @ d, top_vector @ top_vector]).double()
    if sum_ is not None:
        sums = sum_(sums)
    dot, dd, vv = sums.tolist()
    if dd * vv == 0:
        return float("nan")
    return abs(dot) / math.sqrt(dd * vv)
