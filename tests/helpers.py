"""Ground truth for the tests: dense Hessians of small models (the models themselves are in
tests/cases.py), and a dense operator that counts its products."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from sharpcli.linalg import DenseOperator


def dense_hessian(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇²L(w) of the mean loss over all of (x, y) at once, by torch.autograd.functional.hessian
    on the flattened trainable parameters — no chunking, an independent computation. Its rows
    are vectorised backward passes (vmap): the same numbers as one pass per row (to 1e-16 on
    the shared cases), several times faster on a few hundred parameters."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p.detach() for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in params]
    flat = torch.cat([p.reshape(-1) for p in params])

    def loss_of(w: torch.Tensor) -> torch.Tensor:
        tensors, i = {}, 0
        for name, shape in zip(names, shapes):
            k = shape.numel()
            tensors[name] = w[i:i + k].view(shape)
            i += k
        return loss_fn(functional_call(model, tensors, (x,)), y)

    return torch.autograd.functional.hessian(loss_of, flat, vectorize=True)


def dense_hessian_of(model: nn.Module, loss_of_outputs, *args, **kwargs) -> torch.Tensor:
    """∇²L(w) of `loss_of_outputs(model(*args, **kwargs))` at once, for models called with
    dicts or several inputs: the same independent computation as dense_hessian."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p.detach() for n, p in model.named_parameters() if p.requires_grad]
    flat = torch.cat([p.reshape(-1) for p in params])

    def loss_of(w: torch.Tensor) -> torch.Tensor:
        tensors = dict(zip(names, (piece.view_as(p) for piece, p in
                                   zip(torch.split(w, [p.numel() for p in params]), params))))
        return loss_of_outputs(functional_call(model, tensors, args, kwargs))

    return torch.autograd.functional.hessian(loss_of, flat, vectorize=True)


class CountingOperator(DenseOperator):
    """A dense symmetric operator that counts its matvecs (and checks what it is fed), so
    tests can compare a solver's own count and cost with the truth."""

    def __init__(self, matrix: torch.Tensor):
        super().__init__(matrix)
        self.calls = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        assert v.dtype == self.dtype and v.device == self.device
        self.calls += 1
        return super().matvec(v)

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        """A block counts one product per column; `blocks` counts the passes."""
        assert vs.dtype == self.dtype and vs.device == self.device and vs.ndim == 2
        self.calls += vs.shape[1]
        self.blocks = getattr(self, "blocks", 0) + 1
        return super().matmat(vs)
