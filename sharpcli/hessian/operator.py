"""The Hessian of the mean training loss as a linear operator on flat parameter vectors.

H = ∇²L(w) with L = (1/N) Σᵢ ℓ(f(xᵢ; w), yᵢ). The product Hv is a double backward pass
(Pearlmutter 1994), chunk by chunk, each chunk weighted by its share n/N of the examples.
With `params` a subset of the weights, the operator is that diagonal block of H: the same
eigensolvers then give per-layer spectra.

`hvp="forward-over-reverse"` computes each chunk's Hv instead as the directional derivative
of the gradient, torch.func.jvp(torch.func.grad(L), w, v): the same product, exact, with no
graph kept between products. Double backward with a cached graph is the default, because
it was the faster on every model family we measured (benchmarks/RESULTS.md §2).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, jvp

from sharpcli.distributed import SINGLE, Dist
from sharpcli.hessian.losses import LossFn
from sharpcli.hessian.objective import chunk_slices
from sharpcli.hessian.params import (flatten, full_precision, measurement_mode, trainable_params,
                                     unflatten)


class HessianOperator:
    """Hessian-vector products of the mean loss over (x, y).

    A snapshot at the current weights: rebuild it after the weights change. When all
    examples fit in one chunk the gradient graph is built once and each product is then a
    single backward pass through it (half the work of recomputing the forward).
    The model's train/eval mode and buffers are left exactly as found, and every product
    is taken in fp32 with TF32 off (`full_precision`), whatever the training passes use.
    `hvp` picks how a product is computed (HVP_MODES; see the module docstring).
    Under torchrun (`dist`) each process takes its shard of (x, y) and computes its share
    of Hv (its examples' terms over the whole N); one all-reduce sums the shares.
    """

    HVP_MODES = ("double-backward", "forward-over-reverse")

    def __init__(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *,
                 chunk_size: int = 4096, params: Sequence[nn.Parameter] | None = None,
                 mode: str = "eval", cache_graph: bool = True, hvp: str = "double-backward",
                 dist: Dist = SINGLE):
        if len(x) == 0:
            raise ValueError("the Hessian needs at least one example")
        self.total = len(x)  # every example weighs 1/total, in whichever process it is
        self.dist = dist
        x, y = x[dist.shard(len(x))], y[dist.shard(len(y))]
        if hvp not in self.HVP_MODES:
            raise ValueError(f"hvp must be one of {self.HVP_MODES}, got {hvp!r}")
        self.hvp = hvp
        self.model, self.loss_fn, self.x, self.y = model, loss_fn, x, y
        self.params = list(params) if params is not None else trainable_params(model)
        self.size = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.mode = mode
        self.slices = chunk_slices(len(x), chunk_size)
        self.n_matvec = 0
        self._cached_grads = None
        if hvp == "forward-over-reverse":
            ids = {id(p): name for name, p in model.named_parameters()}
            self._names = [ids[id(p)] for p in self.params]
        elif cache_graph and len(self.slices) == 1:
            with measurement_mode(model, mode):
                self._cached_grads = self._chunk_gradient(self.slices[0])

    def _chunk_gradient(self, sl: slice) -> list[torch.Tensor]:
        w = (sl.stop - sl.start) / self.total
        loss = w * self.loss_fn(self.model(self.x[sl]), self.y[sl])
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        # A parameter the loss does not touch has a zero gradient; keep it differentiable.
        return [g if g is not None else torch.zeros_like(p, requires_grad=True)
                for g, p in zip(grads, self.params)]

    def _grad_dot(self, grads: list[torch.Tensor], vs: list[torch.Tensor], retain: bool) -> torch.Tensor:
        hv = torch.autograd.grad(grads, self.params, grad_outputs=vs, retain_graph=retain,
                                 allow_unused=True)
        return flatten([h if h is not None else torch.zeros_like(p) for h, p in zip(hv, self.params)])

    def _chunk_jvp(self, sl: slice, vs: list[torch.Tensor]) -> torch.Tensor:
        """Forward-over-reverse: d/dt ∇L_chunk(w + t v) at t = 0, by torch.func."""
        w = (sl.stop - sl.start) / self.total
        xs, ys = self.x[sl], self.y[sl]

        def chunk_loss(weights: dict) -> torch.Tensor:
            # Only self.params are replaced; other parameters and buffers are the module's own.
            return w * self.loss_fn(functional_call(self.model, weights, (xs,)), ys)

        primals = {n: p.detach() for n, p in zip(self._names, self.params)}
        _, hv = jvp(grad(chunk_loss), (primals,), (dict(zip(self._names, vs)),))
        return flatten([hv[n] for n in self._names])

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        if v.shape != (self.size,):
            raise ValueError(f"vector of shape {tuple(v.shape)} for an operator of size {self.size}")
        self.n_matvec += 1
        vs = unflatten(v.to(self.dtype), self.params)
        if self._cached_grads is not None:  # the backward pass of a graph built in fp32
            with full_precision():
                return self.dist.sum_(self._grad_dot(self._cached_grads, vs, retain=True))
        out = torch.zeros(self.size, dtype=self.dtype, device=self.device)
        with measurement_mode(self.model, self.mode):
            for sl in self.slices:
                if self.hvp == "forward-over-reverse":
                    out += self._chunk_jvp(sl, vs)
                else:
                    out += self._grad_dot(self._chunk_gradient(sl), vs, retain=False)
        return self.dist.sum_(out)  # each process's share of Hv, summed

    def dense(self) -> torch.Tensor:
        """The full matrix, one column per basis vector: for tests on small models only."""
        eye = torch.eye(self.size, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(e) for e in eye], dim=1)
