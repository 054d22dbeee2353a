"""Batch sharpness (Andreyev & Beneventano 2024, "Edge of Stochastic Stability"): the mean over
minibatches B of the curvature of each batch's own loss along its own gradient,

    E_B[g_Bᵀ H_B g_B / ‖g_B‖²],   g_B = ∇L_B(w),  H_B = ∇²L_B(w),

the quantity that minibatch SGD holds at the GD edge 2/η (with momentum, the GD edge of its
momentum), where the full-batch λ₁ sits below it.

It is estimated by Monte Carlo over fresh batches of the training batch size: each batch
costs its gradient and one Hessian-vector product, H_B g_B; batches are drawn until the
standard error is below `tol` of the mean (after `min_batches`) or `max_batches` were drawn.
The batches come from a generator seeded by (seed, step) alone, apart from the training
loop's own random streams, so a resumed run draws the same ones. Measured as λ₁ is: eval
mode, .grad and the model left as they were; under torchrun every process takes its shard
of each batch and the sums make the numbers those of one process.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import nn

from sharpcli.distributed import SINGLE, Dist
from sharpcli.hessian.losses import LossFn
from sharpcli.hessian.objective import full_batch_gradient
from sharpcli.hessian.operator import HessianOperator

MAX_BATCHES = 200
MIN_BATCHES = 10  # a standard error from a handful of batches is itself too noisy to stop on
TOL = 0.01


@dataclass
class BatchSharpness:
    value: float    # the Monte-Carlo mean
    stderr: float   # its standard error (NaN with one batch)
    n_batches: int  # batches drawn, one HVP each


def batch_curvature(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *,
                    chunk_size: int = 4096, dist: Dist = SINGLE) -> float:
    """g_Bᵀ H_B g_B / ‖g_B‖² of the batch (x, y): its gradient, then one HVP along it."""
    _, g = full_batch_gradient(model, loss_fn, x, y, chunk_size, mode="eval", dist=dist)
    hg = HessianOperator(model, loss_fn, x, y, chunk_size=chunk_size, dist=dist).matvec(g)
    return float(g @ hg) / float(g @ g)


def random_batches(n: int, batch_size: int, seed: int, step: int,
                   device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
    """Endless batches of `batch_size` distinct indices of 0..n−1, each a fresh uniform draw,
    from a generator of their own seeded by (seed, step): the same on every process."""
    key = hashlib.sha256(f"batch-sharpness/{seed}/{step}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(key[:8], "little"))
    while True:
        yield torch.randperm(n, generator=gen)[:batch_size].to(device)


def batch_sharpness(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor,
                    batches: Iterable[torch.Tensor], *, tol: float = TOL,
                    max_batches: int = MAX_BATCHES, min_batches: int = MIN_BATCHES,
                    chunk_size: int = 4096, dist: Dist = SINGLE) -> BatchSharpness:
    """The mean of batch_curvature over `batches` (index tensors into x, y), drawn until the
    standard error is ≤ tol·|mean| (with at least `min_batches`) or `max_batches` ran out.
    A batch with a zero gradient has no curvature along it and is left out."""
    values: list[float] = []
    for drawn, idx in enumerate(batches, start=1):
        if drawn > max_batches:
            break
        xb, yb = x[idx], y[idx]
        try:
            values.append(batch_curvature(model, loss_fn, xb, yb, chunk_size=chunk_size, dist=dist))
        except ZeroDivisionError:
            continue
        mean, stderr = _mean_stderr(values)
        if len(values) >= min_batches and stderr <= tol * abs(mean):
            break
    return BatchSharpness(*_mean_stderr(values), len(values))


def _mean_stderr(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n == 1:
        return mean, math.nan
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)
