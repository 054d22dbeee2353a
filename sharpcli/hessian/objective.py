"""The mean loss over a data set's loss terms and its gradient, batch by batch (and, under
torchrun, in shards: sharpcli.distributed), through the one data layer (sharpcli.sources).

Every loss term carries weight 1/T whatever the batches: a batch of n terms enters with
weight n/T (averaging per-batch means would over-weight a short last batch). A process
holding a shard of the data computes its share of the mean, and one sum over processes
gives the mean itself.

`objective_of` turns what a caller holds — tensors x, y or any source, and a loss or a Call
— into the (Call, Data) pair every measurement iterates.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, ContextManager, Sequence

import torch
from torch import nn

from sharpcli.distributed import SINGLE, Dist
from sharpcli.hessian.calls import Call
from sharpcli.hessian.finite_difference import local
from sharpcli.hessian.losses import LossFn
from sharpcli.hessian.params import (flatten, measurement_mode, running_stats_frozen,
                                     trainable_params)
from sharpcli.sources.data import Data, as_data, chunk_slices

__all__ = ["accumulate_gradient", "chunk_slices", "evaluate", "full_batch_gradient",
           "gradient_norm", "gradient_vector", "objective_of"]


def objective_of(model: nn.Module, loss_fn, x, y=None, *, chunk_size: int = 4096,
                 dist: Dist = SINGLE) -> tuple[Call, Data]:
    """The Call and the Data of a measurement: `x, y` in-memory examples (chunked by
    `chunk_size`, sharded by `dist`), or `x` any source (a Data as it is). Batches go to the
    model's device."""
    device = next(iter(model.parameters())).device
    if isinstance(x, Data) and dist is not SINGLE and dist != x.dist:
        raise ValueError("dist differs from the Data's own: give it to the Data")
    return Call.of(loss_fn), as_data(x, y, chunk_size=chunk_size, dist=dist, device=device)


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn, x, y=None, chunk_size: int = 4096,
             dist: Dist = SINGLE) -> tuple[float, float | None]:
    """(mean loss, accuracy) over all of the data in eval mode, each process evaluating its
    share; the model's mode is restored. The accuracy is None where there is none (float
    targets, a batch_loss closure); padding targets (-100) do not count."""
    call, data = objective_of(model, loss_fn, x, y, chunk_size=chunk_size, dist=dist)
    sums = torch.zeros(2, device=data.device, dtype=torch.float64)
    has_accuracy = False
    with measurement_mode(model, "eval"):
        for w, batch in data:
            loss, acc = call.loss_and_accuracy(model, batch)
            sums[0] += w * loss.double()
            if acc is not None:
                sums[1] += w * acc.double()
                has_accuracy = True
    loss, acc = data.dist.sum_(sums).tolist()
    return loss, (acc if data.dist.any(has_accuracy) else None)


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
        norm = torch.nn.utils.get_total_norm(grads, 2.0)
    else:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    # FSDP2's gradients are DTensors, and so is their norm: the whole one, on every process
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def gradient_vector(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The flat gradient held in .grad (zeros where a parameter got none); under FSDP2 this
    process's shards of it, as the sharded solvers' vectors are (finite_difference.py)."""
    return flatten([local(p.grad if p.grad is not None else torch.zeros_like(p)) for p in params])


def full_batch_gradient(model: nn.Module, loss_fn, x, y=None, chunk_size: int = 4096,
                        mode: str = "eval", dist: Dist = SINGLE) -> tuple[float, torch.Tensor]:
    """(mean loss, flat gradient) over all of the data at the current weights in a
    measurement mode, each process taking its share; leaves .grad and the model's mode and
    buffers as they were."""
    call, data = objective_of(model, loss_fn, x, y, chunk_size=chunk_size, dist=dist)
    params = trainable_params(model)
    grad = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=params[0].dtype)
    loss = torch.zeros((), device=params[0].device, dtype=torch.float64)
    with measurement_mode(model, mode):
        for w, batch in data:
            batch_loss = call.loss(model, batch)
            grads = torch.autograd.grad(w * batch_loss, params, allow_unused=True)
            grad += flatten([g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)])
            loss += w * batch_loss.detach().double()
    data.dist.sum_(grad)
    return data.dist.sum(float(loss)), grad
