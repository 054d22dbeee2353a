"""The mean loss over a fixed set of examples, computed in chunks.

Every example carries weight 1/N whatever the chunk sizes: a chunk of n examples enters
with weight n/N (averaging per-chunk means would over-weight a short last chunk).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from sharpcli.hessian.losses import LossFn, accuracy
from sharpcli.hessian.params import flatten, measurement_mode, trainable_params


def chunk_slices(n: int, chunk_size: int) -> list[slice]:
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return [slice(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor,
             chunk_size: int = 4096) -> tuple[float, float]:
    """(mean loss, accuracy) in eval mode; the model's mode is restored."""
    n = len(x)
    loss = torch.zeros((), device=x.device, dtype=torch.float64)
    acc = torch.zeros((), device=x.device, dtype=torch.float64)
    with measurement_mode(model, "eval"):
        for sl in chunk_slices(n, chunk_size):
            out = model(x[sl])
            w = (sl.stop - sl.start) / n
            loss += w * loss_fn(out, y[sl]).double()
            acc += w * accuracy(out, y[sl]).double()
    return loss.item(), acc.item()


def accumulate_gradient(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor,
                        chunk_size: int = 4096) -> torch.Tensor:
    """Set each parameter's .grad to the gradient of the mean loss over (x, y).

    Runs in the model's current mode (train mode during training, so BatchNorm updates
    its statistics as in any training step). Returns the loss of the forward passes as a
    0-d tensor, still on the device (no host sync: this is the hot loop).
    """
    n = len(x)
    model.zero_grad(set_to_none=True)
    if n <= chunk_size:  # the common case, without the bookkeeping of a weighted sum
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss.detach()
    loss = torch.zeros((), device=x.device)
    for sl in chunk_slices(n, chunk_size):
        w = (sl.stop - sl.start) / n
        chunk_loss = loss_fn(model(x[sl]), y[sl])
        (w * chunk_loss).backward()
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
                        chunk_size: int = 4096, mode: str = "eval") -> tuple[float, torch.Tensor]:
    """(mean loss, flat gradient) at the current weights in a measurement mode; leaves
    .grad and the model's mode and buffers as they were."""
    params = trainable_params(model)
    n = len(x)
    grad = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=params[0].dtype)
    loss = torch.zeros((), device=x.device, dtype=torch.float64)
    with measurement_mode(model, mode):
        for sl in chunk_slices(n, chunk_size):
            w = (sl.stop - sl.start) / n
            chunk_loss = loss_fn(model(x[sl]), y[sl])
            grads = torch.autograd.grad(w * chunk_loss, params, allow_unused=True)
            grad += flatten([g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)])
            loss += w * chunk_loss.detach().double()
    return loss.item(), grad
