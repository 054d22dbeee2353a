"""The mean loss over a fixed set of examples, computed in chunks (and, under torchrun, in
shards: sharpcli.distributed).

Every example carries weight 1/N whatever the chunk sizes: a chunk of n examples enters
with weight n/N (averaging per-chunk means would over-weight a short last chunk). A process
holding a shard of the examples passes `total=N`, the size of the whole set, so that what it
computes is its share of the mean, and one sum over processes gives the mean itself.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager, Sequence

import torch
from torch import nn

from sharpcli.distributed import SINGLE, Dist
from sharpcli.hessian.losses import LossFn, accuracy
from sharpcli.hessian.params import (flatten, measurement_mode, running_stats_frozen,
                                     trainable_params)


def chunk_slices(n: int, chunk_size: int) -> list[slice]:
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return [slice(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor,
             chunk_size: int = 4096, dist: Dist = SINGLE) -> tuple[float, float]:
    """(mean loss, accuracy) over all of (x, y) in eval mode, each process evaluating its
    shard; the model's mode is restored. The accuracy is None for float labels."""
    n = len(x)
    sl = dist.shard(n)
    x, y = x[sl], y[sl]
    sums = torch.zeros(2, device=x.device, dtype=torch.float64)
    with measurement_mode(model, "eval"):
        for c in chunk_slices(len(x), chunk_size):
            out = model(x[c])
            w = (c.stop - c.start) / n
            sums[0] += w * loss_fn(out, y[c]).double()
            acc = accuracy(out, y[c])
            if acc is not None:
                sums[1] += w * acc.double()
    loss, acc = dist.sum_(sums).tolist()
    return loss, (None if y.is_floating_point() else acc)


def accumulate_gradient(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor,
                        chunk_size: int = 4096, *, total: int | None = None, scale: float = 1.0,
                        no_sync: Callable[[], ContextManager] | None = None) -> torch.Tensor:
    """Set each parameter's .grad to `scale` times the gradient of this process's share of the
    mean loss, Σ over its examples of ℓᵢ/`total` (`total` defaults to len(x): the mean).

    Runs in the model's current mode (train mode during training, so BatchNorm updates its
    statistics as in any training step). `no_sync`, for a DistributedDataParallel model,
    keeps gradient synchronisation off for all chunks but the last, and `scale` = W undoes
    its averaging over W processes. Returns the share of the loss as a 0-d tensor, still on
    the device (no host sync: this is the hot loop).
    """
    n, total = len(x), total or len(x)
    model.zero_grad(set_to_none=True)
    if n == 0:  # an empty shard still takes part in the gradient's all-reduce, adding zeros
        with running_stats_frozen(model):
            (model(x).sum() * 0.0).backward()
        return torch.zeros((), device=x.device)
    if n <= chunk_size and n == total and scale == 1.0:  # the common case, no bookkeeping
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss.detach()
    loss = torch.zeros((), device=x.device)
    slices = chunk_slices(n, chunk_size)
    for i, sl in enumerate(slices):
        w = (sl.stop - sl.start) / total
        with no_sync() if (no_sync is not None and i < len(slices) - 1) else nullcontext():
            chunk_loss = loss_fn(model(x[sl]), y[sl])
            (w * scale * chunk_loss).backward()
        loss += w * chunk_loss.detach()
    return loss


def gradient_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """‖g‖ of the gradient held in .grad, without building the flat vector (0-d tensor)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads, 2.0)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def gradient_vector(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The flat gradient held in .grad (zeros where a parameter got none)."""
    return flatten([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])


def full_batch_gradient(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor,
                        chunk_size: int = 4096, mode: str = "eval",
                        dist: Dist = SINGLE) -> tuple[float, torch.Tensor]:
    """(mean loss, flat gradient) over all of (x, y) at the current weights in a measurement
    mode, each process taking its shard; leaves .grad and the model's mode and buffers as
    they were."""
    params = trainable_params(model)
    n = len(x)
    sl = dist.shard(n)
    x, y = x[sl], y[sl]
    grad = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=params[0].dtype)
    loss = torch.zeros((), device=x.device, dtype=torch.float64)
    with measurement_mode(model, mode):
        for c in chunk_slices(len(x), chunk_size):
            w = (c.stop - c.start) / n
            chunk_loss = loss_fn(model(x[c]), y[c])
            grads = torch.autograd.grad(w * chunk_loss, params, allow_unused=True)
            grad += flatten([g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)])
            loss += w * chunk_loss.detach().double()
    dist.sum_(grad)
    return dist.sum(float(loss)), grad
