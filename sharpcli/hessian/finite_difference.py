"""Hessian-vector products from gradients alone: central differences of the gradient.

    Hv ≈ (∇L(w + εv) − ∇L(w − εv)) / 2ε                        (2 gradients, error O(ε²))
    Hv ≈ (8[∇L(w + εv) − ∇L(w − εv)] − [∇L(w + 2εv) − ∇L(w − 2εv)]) / 12ε
                                                               (Richardson, 4 gradients, O(ε⁴))

Why: double backward does not pass through FSDP2 (`fully_shard`): differentiating its
gradient fails ("appears to not have been used in the graph"), and a product through it
crashed the process. A gradient is what FSDP2 is built to give, so a product made of
gradients works on a sharded model, and on any model whose kernels have no double backward
(`hvp="finite-difference"`). The idea is that of Granziol & Juarev 2026 (arXiv 2602.00816),
shard-local finite differences under FSDP.

Sharded (FSDP2: parameters are DTensors). A vector is this process's local shards of the
parameters, concatenated (`ParamLayout`): process r perturbs only its own shard, FSDP2
all-gathers the perturbed weights in the forward and reduce-scatters the gradient in the
backward as in training, so the product arrives as this process's shard with no gather and
no sum left to do. FSDP2 averages the W processes' gradients; each process's loss is
therefore its share of the mean, Σ over its batches of (num_terms/T)·loss, times W: the
average of W such shares is the sum, every term weighted 1/T. Every process must run the
same number of forward and backward passes (their collectives pair up): one with fewer
batches adds passes of weight 0.

The step ε: the error of the central difference is truncation, ε²‖∇³L[v,v,·]‖/6, plus
rounding, about u·‖∇L‖/ε and u‖w‖‖H‖/(ε‖v‖) (u the unit roundoff of the dtype, the second
from rounding w ± εv). Balancing the two gives ε ∝ u^{1/3} (u^{1/5} for Richardson), scaled
by the size of the weights, per unit of v:

    ε‖v‖ = c · u^{1/p} · (√n + ‖w‖)

with n the number of parameters and p = 3 (central) or 5 (Richardson): the perturbation of
a typical coordinate is a small multiple of u^{1/p} times that coordinate's scale,
max(1, |w|). c = 0.003 (central) and 0.001 (Richardson) were measured on a tiny GPT-2 and an
MLP (benchmarks/RESULTS.md, "Sharded models (FSDP2)"): the GPT-2's third derivatives along
its top eigenvector are large, so a larger c biases its top eigenvalue (c = 0.03: 7e-3 low
in float32), and a smaller one lets rounding grow on the MLP. The central difference is the
default: Richardson costs twice the gradients for about 3× less error in float32.
The weights are copied before and copied back after each product: restored bit for bit,
and the random number generators too.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from sharpcli.distributed import Dist
from sharpcli.errors import SharpError
from sharpcli.hessian.fsdp_precision import mixed_precision, supported, weights_dtype
from sharpcli.hessian.params import measurement_mode

ORDERS = {2: 3, 4: 5}  # formula order → the root of u in the step rule
STEP_SCALE = {2: 0.003, 4: 0.001}  # c in the step rule, per order (measured: module docstring)


def is_fsdp2(model: nn.Module) -> bool:
    """Whether the model is sharded by FSDP2 (`fully_shard`): some parameter is a DTensor."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return False
    return any(isinstance(p, DTensor) for p in model.parameters())


def reshard(model: nn.Module) -> nn.Module:
    """Every FSDP2 module of `model` back to its shards. A forward pass without a backward
    one (torch.no_grad: an evaluation, a check) leaves the root's parameters gathered whole,
    and registered in place of the DTensors: a measurement that took those for the weights
    wrote into memory FSDP2 frees (the SIGSEGV that a sharded model's spectrum was)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return model
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    return model


FACTORY = "factory"  # `--fsdp factory`: the --model-factory shards the model itself


def require_processes(dist_: Dist | None) -> None:
    """`--fsdp` shards over torchrun's processes: one line when there are none."""
    if dist_ is None or not dist_.enabled:
        raise SharpError("{fsdp} shards the model over torchrun's processes: run under "
                         "torchrun --nproc-per-node N (N ≥ 2)", param="fsdp")


def shard_by_class(model: nn.Module, classes: str, dist_: Dist) -> nn.Module:
    """`sharp spectrum --fsdp CLASS[,CLASS]`: `fully_shard` on every module of those classes
    (by class name), then on the root, as torchtitan shards per transformer block. Each
    process held the whole model until now (its weights were loaded into it); afterwards
    only its shards."""
    from torch.distributed.fsdp import fully_shard

    names = {c.strip() for c in classes.split(",") if c.strip()}
    found = {type(m).__name__ for m in model.modules()}
    if names - found:
        raise SharpError(f"{{fsdp}} {classes}: no module of class {sorted(names - found)[0]} in "
                         f"the model (its classes: {', '.join(sorted(found)[:12])})", param="fsdp")
    require_processes(dist_)
    for module in list(model.modules())[1:]:
        if type(module).__name__ in names:
            fully_shard(module)
    fully_shard(model)
    return model


def compute_dtype(model: nn.Module, dtype: torch.dtype) -> torch.dtype:
    """The dtype FSDP2 computes in: a MixedPrecisionPolicy's param_dtype (bf16) where one is
    set, else the weights' own `dtype`. Finite differences are only as precise as the
    gradient, so the step and the error estimate follow this one where the policy cannot be
    set aside for the product (fsdp_precision.py: a torch whose FSDP2 keeps it elsewhere)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return dtype
    lowest = dtype
    for module in model.modules():
        if not isinstance(module, FSDPModule):
            continue
        group = module._get_fsdp_state()._fsdp_param_group  # FSDP2's own record of it
        for param in group.fsdp_params if group is not None else []:
            low = getattr(param, "param_dtype", None)
            if low is not None and torch.finfo(low).eps > torch.finfo(lowest).eps:
                lowest = low
    return lowest


def resolve_hvp(hvp: str, model: nn.Module) -> str:
    """`hvp="auto"`: finite differences for an FSDP2 model, the exact product otherwise."""
    if hvp == "auto":
        return "finite-difference" if is_fsdp2(model) else "exact"
    return hvp


def local(p: torch.Tensor) -> torch.Tensor:
    """This process's part of a parameter (its DTensor shard), or the parameter itself. A
    view: writing into it writes the parameter."""
    return p.to_local() if hasattr(p, "to_local") else p


class ParamLayout:
    """Flat vectors as this process's local shards of `params`, concatenated in order."""

    def __init__(self, params: Sequence[torch.Tensor]):
        self.params = list(params)
        self.sizes = [local(p).numel() for p in self.params]
        self.size = sum(self.sizes)          # this process's coordinates
        self.dim = sum(p.numel() for p in self.params)  # the whole space's
        self.sharded = any(hasattr(p, "to_local") for p in self.params)

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        return [piece.view_as(local(p)) for piece, p in zip(torch.split(v, self.sizes), self.params)]

    def flat(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        return torch.cat([(local(t) if t is not None else local(p).new_zeros(())
                           .expand_as(local(p))).reshape(-1) for t, p in zip(tensors, self.params)])

    def random(self, gen: torch.Generator, kind: str, dtype, device) -> torch.Tensor:
        """A random vector, this process's shards of it: each parameter's whole draw (from the
        generator every process seeds alike) cut as FSDP2 cuts it, so the vector does not
        depend on the number of processes and no process holds more than one parameter whole."""
        pieces = []
        for p in self.params:
            whole = torch.randn(p.shape, generator=gen, dtype=dtype, device=device)
            if kind == "rademacher":
                whole = whole.sign_()
            pieces.append(_shard_of(whole, p).reshape(-1))
        return torch.cat(pieces)


def _shard_of(whole: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """`whole` (p's global shape) cut as p is: torch.chunk along the sharded dimension."""
    if not hasattr(p, "to_local"):
        return whole
    for mesh_dim, placement in enumerate(p.placements):
        if placement.is_shard():
            world, rank = p.device_mesh.size(mesh_dim), p.device_mesh.get_local_rank(mesh_dim)
            chunks = torch.chunk(whole, world, dim=placement.dim)
            whole = chunks[rank] if rank < len(chunks) else whole.narrow(placement.dim, 0, 0)
    return whole


class FiniteDifferenceHVP:
    """Hv by differences of the gradient of the mean loss over `data` (a sources Data, with
    `call` its loss) with respect to `params`, at the weights as they are."""

    def __init__(self, model: nn.Module, call, data, params: Sequence[nn.Parameter], *,
                 mode: str = "eval", dist_: Dist, order: int = 2, scale: float | None = None):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {sorted(ORDERS)}, got {order!r}")
        self.model, self.call, self.data, self.mode = model, call, data, mode
        self.layout = ParamLayout(params)
        self.dist, self.order = dist_, order
        self.scale = STEP_SCALE[order] if scale is None else scale
        self.sharded = self.layout.sharded
        # sums over coordinates: over FSDP2's processes, whatever the data's split (`dist_`)
        self.group = Dist.current() if self.sharded else dist_
        self.dtype = self.layout.params[0].dtype
        # a MixedPrecisionPolicy (bf16) is set aside for each product where this torch allows
        # (fsdp_precision.py); else the gradients, and the unit roundoff, are bf16's
        self.set_aside = self.sharded and mixed_precision(model) and supported(model)
        plain = not self.sharded or self.set_aside
        self.compute = self.dtype if plain else compute_dtype(model, self.dtype)
        self.unit = torch.finfo(self.compute).eps / 2
        self.w_norm = math.sqrt(self._sum(sum(float(local(p).detach().double().pow(2).sum())
                                              for p in self.layout.params)))
        self.last_step: float | None = None

    def _sum(self, value: float) -> float:
        """A sum over the coordinates of all processes: only sharded vectors are split."""
        return self.group.sum(value) if self.sharded else value

    def step(self, v_norm: float) -> float:
        """ε for a vector of norm ‖v‖ (the rule of the module docstring)."""
        root = ORDERS[self.order]
        return self.scale * self.unit ** (1 / root) * (math.sqrt(self.layout.dim) + self.w_norm) / v_norm

    def error_estimate(self) -> float:
        """The relative error of one product expected at the rule's step: 10·u^{2/3} for the
        central difference, 10·u^{4/5} for Richardson (truncation and rounding balanced; the
        measured errors lie within 10× of it, benchmarks/RESULTS.md)."""
        root = ORDERS[self.order]
        return 10 * self.unit ** ((root - 1) / root)

    def product(self, v: torch.Tensor) -> torch.Tensor:
        """H v for this process's coordinates v; on one unsharded process under torchrun,
        this process's share of Hv (the caller sums the shares)."""
        v_norm = math.sqrt(self._sum(float(v.double().pow(2).sum())))
        if v_norm == 0:
            return torch.zeros_like(v)
        eps = self.step(v_norm)
        self.last_step = eps
        pieces = self.layout.split(v.to(self.dtype))
        taps = [(1, 8.0), (2, -1.0)] if self.order == 4 else [(1, 1.0)]
        denominator = 12 * eps if self.order == 4 else 2 * eps
        out = torch.zeros(self.layout.size, dtype=self.dtype, device=v.device)
        with self._restored(), weights_dtype(self.model) if self.set_aside else nullcontext():
            for multiple, coefficient in taps:
                for sign in (1, -1):
                    self._shift(pieces, sign * multiple * eps)
                    out.add_(self.gradient(), alpha=sign * coefficient)
                    self._reset()
        return out.div_(denominator)

    @contextmanager
    def _restored(self) -> Iterator[None]:
        """Weights, gradients and random number generators exactly as found afterwards."""
        params = self.layout.params
        self._saved = [local(p).detach().clone() for p in params]
        grads = [p.grad for p in params]
        cpu = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        try:
            yield
        finally:
            self._reset()
            for p, g in zip(params, grads):
                p.grad = g
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)
            del self._saved

    def _shift(self, pieces: list[torch.Tensor], t: float) -> None:
        with torch.no_grad():
            for p, s, piece in zip(self.layout.params, self._saved, pieces):
                torch.add(s, piece, alpha=t, out=local(p))

    def _reset(self) -> None:
        with torch.no_grad():
            for p, s in zip(self.layout.params, self._saved):
                local(p).copy_(s)

    def gradient(self) -> torch.Tensor:
        """∇L at the current weights, flat over this process's coordinates."""
        with measurement_mode(self.model, self.mode):
            return self._sharded_gradient() if self.sharded else self._plain_gradient()

    def _plain_gradient(self) -> torch.Tensor:
        # torch.autograd.grad: nothing is accumulated into .grad
        total = None
        params = self.layout.params
        for weight, batch in self.data:
            loss = weight * self.call.loss(self.model, batch)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            flat = self.layout.flat(grads)
            total = flat if total is None else total.add_(flat)
        return total if total is not None else torch.zeros(self.layout.size, dtype=self.dtype)

    def _sharded_gradient(self) -> torch.Tensor:
        # FSDP2 reduces gradients in the hooks of .backward(); it averages over processes,
        # so each process's loss is its share times W (module docstring). Data that every
        # process reads whole (dist_ one process) is already the mean: W = 1.
        params = self.layout.params
        for p in params:
            p.grad = None
        passes = aligned_passes(self.data, self.dist)
        for weight, batch in passes:
            (weight * self.dist.world_size * self.call.loss(self.model, batch)).backward()
        return self.layout.flat([p.grad for p in params])


def aligned_passes(data, dist_: Dist) -> list[tuple[float, object]]:
    """This process's (weight, batch) pairs of `data`, padded with passes of weight 0 to the
    most any process has: FSDP2's collectives (a gradient's, an evaluation's forward) need
    the same passes on every process."""
    passes = list(data)
    count = torch.tensor([len(passes)], dtype=torch.int64, device=dist_.device)
    if dist_.enabled:
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
    if len(passes) < int(count):
        if not passes:
            passes = [(0.0, data.first_batch())]
        passes += [(0.0, passes[0][1])] * (int(count) - len(passes))
    if not passes:
        raise SharpError("the data yields no batches")
    return passes
