"""Sharpness: the top eigenvalue λ₁ of the training-loss Hessian (or, with an adaptive
optimizer's preconditioner P, of P⁻¹H), and the alignment of a direction with its
eigenvector v₁."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from sharpcli.distributed import SINGLE, Dist
from sharpcli.hessian.finite_difference import resolve_hvp
from sharpcli.hessian.operator import HessianOperator
from sharpcli.hessian.params import full_precision
from sharpcli.linalg import DiagonalScaled, block_lanczos, lanczos
from sharpcli.linalg.api import split_budget
from sharpcli.linalg.budget import MemoryBudget
from sharpcli.linalg.projection import LOCAL, Space
from sharpcli.linalg.restart import restarted_lanczos
from sharpcli.linalg.shard import dimension, own_space


@dataclass
class Sharpness:
    eigenvalues: torch.Tensor   # (k,) descending
    residuals: torch.Tensor     # (k,) ‖Hv − λv‖
    top_vectors: torch.Tensor   # (size, k) v₁…v_k, unit columns, on the model's device
    n_hvp: int
    converged: torch.Tensor     # (k,) bool: each pair met the tolerance within max_iter
    # where sums over the vectors' coordinates happen: over processes for FSDP2's shards
    space: Space = field(default=LOCAL, repr=False)

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

    def alignment(self, direction: torch.Tensor) -> float:
        """|cos(direction, v₁)|, `direction` in the coordinates of the vectors (FSDP2: this
        process's shards, as `gradient_vector` gives them)."""
        return alignment(direction, self.top_vector, self.space)


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
    (docs/guides/large-models.md#memory-budget).

    A model sharded by FSDP2 is measured with finite-difference products, each process
    reading its share of the data (`dist` the process group), and its own shards of every
    vector: the top vectors (and `preconditioner`, and `Sharpness.alignment`'s direction) are
    this process's shards (docs/guides/large-models.md#tracker)."""
    with full_precision():
        op = HessianOperator(model, loss_fn, x, y, chunk_size=chunk_size, mode=mode, dist=dist,
                             hvp=resolve_hvp("auto", model))
        if preconditioner is not None:
            op = DiagonalScaled(op, preconditioner.rsqrt())
        split = split_budget(op, "lanczos", k, max_iter)
        if split is not None:
            result = _sharded(op, k, tol, max_iter, v0, seed, criterion, max_memory, split)
        elif k == 1:
            start = v0[:, 0] if v0 is not None and v0.ndim == 2 else v0
            result = lanczos(op, k=1, tol=tol, max_iter=min(max_iter, op.size), v0=start,
                             seed=seed, criterion=criterion, max_memory=max_memory)
        else:
            result = block_lanczos(op, k, tol=tol, max_iter=max(max_iter, k), v0=v0, seed=seed,
                                   criterion=criterion, max_memory=max_memory)
    return Sharpness(result.eigenvalues, result.residuals, result.eigenvectors.detach(),
                     result.n_matvec, result.converged, own_space(op))


def _sharded(op, k: int, tol: float, max_iter: int, v0, seed: int, criterion: str, max_memory,
             split: MemoryBudget):
    """λ₁..λ_k of an operator on FSDP2's shards: the restarted Lanczos whose basis is sharded
    like the parameters (linalg/shard.py), within the budget that makes it run
    (linalg.api.split_budget) or a smaller max_memory. Single-vector, from the sum of the
    warm-start columns (block Lanczos has no sharded solver): a repeated eigenvalue is then
    seen once, as by sharpcli.eigs's Lanczos."""
    budget = MemoryBudget.of(max_memory)
    budget = split if budget is None or budget.bytes > split.bytes else budget
    start = v0.sum(dim=1) if v0 is not None and v0.ndim == 2 else v0
    return restarted_lanczos(op, k, max_memory=budget, tol=tol, seed=seed, v0=start,
                             max_iter=max(k, min(max_iter, dimension(op))), criterion=criterion)


def alignment(direction: torch.Tensor, top_vector: torch.Tensor, space: Space = LOCAL) -> float:
    """|cos(direction, v₁)|: the sign of an eigenvector is arbitrary. `space`: where the sums
    over coordinates happen (over processes for FSDP2's shards)."""
    d = direction.to(top_vector.dtype)
    if space is LOCAL:
        denom, dot = d.norm() * top_vector.norm(), d @ top_vector
    else:
        norms = space.norms(torch.stack([d, top_vector], dim=1))
        denom, dot = norms[0] * norms[1], space.inner(d[:, None], top_vector)[0].to(d.dtype)
    if denom == 0:
        return float("nan")
    return float(dot.abs() / denom)
