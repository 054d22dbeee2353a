"""The Hessian of the mean training loss as a linear operator on flat parameter vectors.

H = ∇²L(w) with L = (1/T) Σ over the data's T loss terms (examples, or tokens). The product
Hv is a double backward pass (Pearlmutter 1994), batch by batch through the data layer
(sharpcli.sources), each batch weighted by its share n_b/T of the terms.
With `params` a subset of the weights, the operator is that diagonal block of H: the same
eigensolvers then give per-layer spectra.

`hvp="forward-over-reverse"` computes each chunk's Hv instead as the directional derivative
of the gradient, torch.func.jvp(torch.func.grad(L), w, v): the same product, exact, with no
graph kept between products. Double backward with a cached graph is the default, because
it was the faster on every model family we measured (benchmarks/RESULTS.md §2).

`matmat(V)` gives HV for a block of vectors in one pass over the data: one batched backward
through the (cached or per-chunk) gradient graph, `autograd.grad(..., is_grads_batched=True)`,
or torch.func.vmap over the forward-over-reverse product; at most `max_block` vectors at a
time, to bound memory. Where an operation has no batching rule (a custom autograd.Function
with data-dependent control flow in its backward, an in-place update of a buffer), the
batched pass raises; the operator then computes that block, and every later one, column by
column, says why in `fallback` and warns once (SharpWarning). A batched pass that runs out
of memory is split in halves (max_block halves too), also with a warning; out of memory
with a single vector is raised. Batching is a win where one product leaves the device
idle (a GPU); on the CPU one product already keeps the core busy and a batched pass was no
faster per vector (benchmarks/RESULTS.md §2), so `vectorize=None` batches on accelerators only.

`hvp="finite-difference"` takes each product from two gradients instead
(sharpcli.hessian.finite_difference): the only product a model sharded by FSDP2 allows, whose
vectors are then this process's shards of the parameters (`size` local, `dim` whole).

`third_derivatives(U, pairs)` gives ∇_w(uᵢᵀ H(w) uⱼ) = ∇³L(w)[uᵢ, uⱼ, ·] for pairs of columns
of U: the gradient of a Hessian entry, which the central flow needs
(docs/guides/flow.md#what). It is one more backward pass through the graph of an HVP: per
batch the gradient graph, then H uⱼ kept differentiable for each column j used, then one
backward pass of uᵢ·(H uⱼ) per pair.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
from torch import nn
from torch.func import grad, jvp, vmap

from sharpcli.distributed import SINGLE, Dist
from sharpcli.errors import SharpWarning
from sharpcli.hessian.finite_difference import FiniteDifferenceHVP, reshard
from sharpcli.hessian.objective import objective_of
from sharpcli.hessian.params import full_precision, measurement_mode, trainable_params, unflatten
from sharpcli.linalg.operator import matmul, to_scipy
from sharpcli.linalg.shard import Shards


class HessianOperator:
    """Hessian-vector products of the mean loss over the data: in-memory examples `x, y`,
    or `x` any source of batches (sharpcli.sources) with `y` left out.

    A snapshot at the current weights: rebuild it after the weights change. When this
    process's data is one batch the gradient graph is built once and each product is then a
    single backward pass through it (half the work of recomputing the forward).
    The model's train/eval mode and buffers are left exactly as found, and every product
    is taken in fp32 with TF32 off (`full_precision`), whatever the training passes use.
    `call` is a sharpcli.hessian.calls.Call (closures, forward conventions), or a loss
    (outputs, targets) → mean or its name; `data` is a sharpcli.sources Data, or what
    `as_data` takes (in-memory inputs with targets `y`, or a source of batches). `hvp` picks how a product is computed (HVP_MODES; see
    the module docstring). Under torchrun (`dist`) each process takes its share of the data
    and computes its share of Hv (its terms over the whole T); one all-reduce sums the
    shares (one for a whole block in `matmat`), and `shards` tells a budgeted solver to
    split its basis over the processes (linalg/shard.py). `vectorize` (None: on accelerators only) and
    `max_block` set how `matmat` computes a block (module docstring). `compile` runs the
    forward-over-reverse product through torch.compile (double backward cannot be compiled:
    aot_autograd has no double backward); it pays a compilation of tens of seconds on first use.
    """

    HVP_MODES = ("double-backward", "forward-over-reverse")  # the exact products
    # "exact": the default exact product; "finite-difference": from gradients alone
    HVP_CHOICES = ("exact", *HVP_MODES, "finite-difference")

    def __init__(self, model: nn.Module, call, data, y=None, *,
                 chunk_size: int = 4096, params: Sequence[nn.Parameter] | None = None,
                 mode: str = "eval", cache_graph: bool = True, hvp: str = "exact",
                 dist: Dist = SINGLE, vectorize: bool | None = None, max_block: int = 16,
                 compile: bool = False):
        if hvp not in self.HVP_CHOICES:
            raise ValueError(f"hvp must be one of {self.HVP_CHOICES}, got {hvp!r}")
        hvp = "double-backward" if hvp == "exact" else hvp
        if isinstance(data, torch.Tensor) and len(data) == 0:
            raise ValueError("the Hessian needs at least one example")
        self.call, self.data = objective_of(model, call, data, y, chunk_size=chunk_size, dist=dist)
        self.dist = self.data.dist
        self.total = self.data.total  # every term weighs 1/total, in whichever process it is
        self.hvp = hvp
        self.model = model
        if hvp == "finite-difference":
            reshard(model)  # the DTensors registered again after a forward without backward
        self.params = list(params) if params is not None else trainable_params(model)
        self.size = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.mode = mode
        # the processes whose summed products this is: a budgeted solver shards its basis
        self.shards = (Shards(self.dist.rank, self.dist.world_size, self.dist.sum_)
                       if self.dist.enabled else None)
        self.n_matvec = 0  # products, a block of b counting b
        self.n_third = 0   # third-derivative products ∇(uᵀHv), one per pair
        self._fd = None
        if hvp == "finite-difference":
            self._finite_differences(mode)
        self.vectorize = self.device.type != "cpu" if vectorize is None else vectorize
        if max_block < 1:
            raise ValueError(f"max_block must be at least 1, got {max_block}")
        self.max_block = max_block
        self.fallback: str | None = None  # why batched products were given up, if they were
        self._cached_grads = None
        if compile and hvp != "forward-over-reverse":
            raise ValueError("compile needs hvp='forward-over-reverse': torch.compile cannot "
                             "differentiate twice (aot_autograd has no double backward)")
        if hvp == "forward-over-reverse":
            ids = {id(p): name for name, p in model.named_parameters()}
            self._names = [ids[id(p)] for p in self.params]
            batched = vmap(self._product, in_dims=(None, None, None, 0))
            self._products = {False: self._product, True: batched}
            if compile:
                self._products = {k: torch.compile(f) for k, f in self._products.items()}
        elif hvp == "double-backward" and cache_graph and self.data.n_batches == 1:
            with measurement_mode(model, mode):
                for weight, batch in self.data:
                    self._cached_grads = self._batch_gradient(weight, batch)

    def _finite_differences(self, mode: str) -> None:
        """Products from gradients (finite_difference.py); on an FSDP2 model the vectors are
        this process's shards, and the solvers shard their bases alike (linalg/shard.py)."""
        self._fd = FiniteDifferenceHVP(self.model, self.call, self.data, self.params, mode=mode,
                                       dist_=self.dist)
        self.size, self.dim = self._fd.layout.size, self._fd.layout.dim
        if self._fd.sharded:  # FSDP2 has reduced each product already: no sum left to do
            group = self._fd.group
            self.shards = Shards(group.rank, group.world_size, group.sum_, dim=self.dim,
                                 draw=self._draw)

    def _draw(self, gen: torch.Generator, kind: str) -> torch.Tensor:
        return self._fd.layout.random(gen, kind, self.dtype, self.device)

    @property
    def note(self) -> str | None:
        """How the products were made, when not exactly: the finite differences' rule."""
        if self._fd is None:
            return None
        formula = "4-point Richardson" if self._fd.order == 4 else "central"
        low = self._fd.compute
        where = "" if low == self.dtype else f", the gradients in {str(low)[6:]} (mixed precision)"
        if self._fd.set_aside:  # fsdp_precision.py
            where = f", in {str(low)[6:]} with FSDP2's mixed-precision policy set aside"
        return (f"products by {formula} finite differences of the gradient{where} (estimated "
                f"relative error {self._fd.error_estimate():.0e})")

    def _batch_gradient(self, weight: float, batch) -> list[torch.Tensor]:
        loss = weight * self.call.loss(self.model, batch)
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        # A parameter the loss does not touch has a zero gradient; keep it differentiable.
        return [g if g is not None else torch.zeros_like(p, requires_grad=True)
                for g, p in zip(grads, self.params)]

    def _grad_dot(self, grads: list[torch.Tensor], vs: list[torch.Tensor], retain: bool,
                  batched: bool = False) -> torch.Tensor:
        """Σ (∂g/∂w)ᵀ v through the gradient graph: Hv, or with `batched` the rows of HV for
        vs shaped (b, *p.shape); a parameter the gradient does not reach gives zeros."""
        hv = torch.autograd.grad(grads, self.params, grad_outputs=vs, retain_graph=retain,
                                 allow_unused=True, is_grads_batched=batched)
        lead = (len(vs[0]),) if batched else ()
        return torch.cat([(h if h is not None else p.new_zeros(lead + p.shape)).reshape(*lead, -1)
                          for h, p in zip(hv, self.params)], dim=-1)

    def _batch_jvp(self, weight: float, batch, vs: list[torch.Tensor],
                   batched: bool = False) -> torch.Tensor:
        """Forward-over-reverse: d/dt ∇L_batch(w + t v) at t = 0, by torch.func (vmapped
        over the rows of vs with `batched`)."""
        primals = {n: p.detach() for n, p in zip(self._names, self.params)}
        tangents = dict(zip(self._names, vs))
        return self._products[batched](batch, weight, primals, tangents)

    def _product(self, batch, weight: float, primals: dict, tangents: dict) -> torch.Tensor:
        """The batch's share of Hv, a function of its inputs only (so that torch.compile
        traces it once per batch shape)."""
        def batch_loss(weights: dict) -> torch.Tensor:
            # Only self.params are replaced; other parameters and buffers are the module's own.
            return weight * self.call.functional_loss(self.model, weights, batch)

        _, hv = jvp(grad(batch_loss), (primals,), (tangents,))
        return torch.cat([hv[n].reshape(-1) for n in self._names])

    def _local(self, vs: list[torch.Tensor], batched: bool) -> torch.Tensor:
        """This process's share of Hv (or of the rows of HV with `batched`): no all-reduce."""
        if self._cached_grads is not None:  # the backward pass of a graph built in fp32
            with full_precision():
                return self._grad_dot(self._cached_grads, vs, retain=True, batched=batched)
        lead = (len(vs[0]),) if batched else ()
        out = torch.zeros(lead + (self.size,), dtype=self.dtype, device=self.device)
        with measurement_mode(self.model, self.mode):
            for weight, batch in self.data:
                if self.hvp == "forward-over-reverse":
                    out += self._batch_jvp(weight, batch, vs, batched)
                else:
                    out += self._grad_dot(self._batch_gradient(weight, batch), vs, retain=False,
                                          batched=batched)
        return out

    @property
    def n_products(self) -> int:
        """Hessian-vector products so far, a block of m counting m."""
        return self.n_matvec

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        """`op @ v` (size,) or `op @ V` (size, m): matvec or matmat."""
        return matmul(self, v)

    def to_scipy(self):
        """A scipy.sparse.linalg.LinearOperator on float64 numpy vectors (linalg.to_scipy)."""
        return to_scipy(self)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        if v.shape != (self.size,):
            raise ValueError(f"vector of shape {tuple(v.shape)} for an operator of size {self.size}")
        self.n_matvec += 1
        if self._fd is not None:
            out = self._fd.product(v)
            return out if self._fd.sharded else self.dist.sum_(out)
        out = self._local(unflatten(v.to(self.dtype), self.params), batched=False)
        return self.dist.sum_(out)  # each process's share of Hv, summed

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        """HV for the columns of vs (size, b): the same numbers as b matvecs (to rounding),
        in ⌈b/max_block⌉ batched passes, or column by column (see the module docstring);
        counted as b products; under torchrun one all-reduce for the whole block."""
        if vs.ndim != 2 or vs.shape[0] != self.size:
            raise ValueError(f"block of shape {tuple(vs.shape)} for an operator of size {self.size}")
        b = vs.shape[1]
        if self._fd is not None:  # gradients come one at a time
            return torch.stack([self.matvec(v) for v in vs.T], dim=1)
        self.n_matvec += b
        rows = vs.T.to(self.dtype)
        out = torch.empty(b, self.size, dtype=self.dtype, device=self.device)
        for start in range(0, b, self.max_block):
            block = rows[start:start + self.max_block]
            out[start:start + len(block)] = self._block(block)
        return self.dist.sum_(out).T

    def _block(self, rows: torch.Tensor) -> torch.Tensor:
        """This process's share of the products with the rows of `rows` (b, size). Out of
        memory, the block is halved (and max_block with it); without a batching rule, this
        block and every later one go column by column. Either is warned about once, with
        its reason; out of memory one column at a time is raised."""
        if self.vectorize and len(rows) > 1:
            sizes = [p.numel() for p in self.params]
            vs = [piece.reshape(len(rows), *p.shape)
                  for piece, p in zip(torch.split(rows, sizes, dim=1), self.params)]
            try:
                return self._local(vs, batched=True)
            except (RuntimeError, NotImplementedError) as err:
                reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
                out_of_memory = _out_of_memory(err)
            # here, outside the handler, the failed pass's tensors are freed
            if out_of_memory:
                half = len(rows) // 2
                self.max_block = min(self.max_block, half)
                _warn_once("out of memory", f"Hessian-vector products of {len(rows)} vectors in "
                           f"one pass ran out of memory; halving the blocks until they fit "
                           f"(max_block={half}) ({reason})")
                return torch.cat([self._block(rows[:half]), self._block(rows[half:])])
            self.vectorize = False  # no batching rule somewhere
            self.fallback = reason
            _warn_once("no batching rule", "batched Hessian-vector products are not possible "
                       f"for this model; computing them one vector at a time, which is slower "
                       f"({reason})")
        return torch.stack([self._local(unflatten(v, self.params), batched=False) for v in rows])

    def third_derivatives(self, us: torch.Tensor,
                          pairs: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
        """∇_w(uᵢᵀ H(w) uⱼ) for each pair (i, j) of columns of `us` (size, k), as the columns
        of a (size, len(pairs)) matrix; by default every pair i ≤ j, in the order (0, 0),
        (0, 1), …, (0, k−1), (1, 1), … . The vectors are held fixed: this is the third
        derivative ∇³L(w) contracted with uᵢ and uⱼ, symmetric in i and j. One pass over the
        data (see the module docstring); counted in `n_third`, one per pair; under torchrun
        one all-reduce for them all."""
        if self._fd is not None:
            raise ValueError("third derivatives need an exact product: hvp='finite-difference' "
                             "has none")
        if us.ndim == 1:
            us = us[:, None]
        if us.ndim != 2 or us.shape[0] != self.size:
            raise ValueError(f"vectors of shape {tuple(us.shape)} for an operator of size {self.size}")
        k = us.shape[1]
        pairs = [(i, j) for i in range(k) for j in range(i, k)] if pairs is None else list(pairs)
        if any(not (0 <= i < k and 0 <= j < k) for i, j in pairs):
            raise ValueError(f"pairs must index the {k} columns of us, got {pairs}")
        cols = [unflatten(u, self.params) for u in us.T.to(self.dtype)]
        out = torch.zeros(len(pairs), self.size, dtype=self.dtype, device=self.device)
        if self.hvp == "forward-over-reverse":
            with measurement_mode(self.model, self.mode):
                for weight, batch in self.data:
                    out += self._batch_third_functional(weight, batch, cols, pairs)
        elif self._cached_grads is not None:
            with full_precision():
                out += self._third_through(self._cached_grads, cols, pairs)
        else:
            with measurement_mode(self.model, self.mode):
                for weight, batch in self.data:
                    out += self._third_through(self._batch_gradient(weight, batch), cols, pairs)
        self.n_third += len(pairs)
        return self.dist.sum_(out).T

    def third_derivative(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """∇_w(uᵀ H(w) v) (size,): `third_derivatives` for one pair."""
        return self.third_derivatives(torch.stack([u, v], dim=1), [(0, 1)])[:, 0]

    def _third_through(self, grads: list[torch.Tensor], cols: list[list[torch.Tensor]],
                       pairs: list[tuple[int, int]]) -> torch.Tensor:
        """The rows ∇(uᵢ·H uⱼ) of one batch's share, from its gradient graph `grads`, which
        is kept (a cached graph serves later products)."""
        hv = {}
        for j in sorted({j for _, j in pairs}):
            hv[j] = torch.autograd.grad(grads, self.params, grad_outputs=cols[j],
                                        create_graph=True, allow_unused=True)
        rows = []
        for i, j in pairs:
            dot = sum((a * h).sum() for a, h in zip(cols[i], hv[j]) if h is not None)
            if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
                rows.append(torch.zeros(self.size, dtype=self.dtype, device=self.device))
                continue  # the Hessian does not depend on the weights along these (a quadratic)
            d = torch.autograd.grad(dot, self.params, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                                   for g, p in zip(d, self.params)]))
        return torch.stack(rows)

    def _batch_third_functional(self, weight: float, batch, cols, pairs) -> torch.Tensor:
        """Reverse over forward over reverse by torch.func: ∇_w ⟨uᵢ, d/dt ∇L_batch(w + t uⱼ)⟩."""
        primals = {n: p.detach() for n, p in zip(self._names, self.params)}

        def batch_loss(weights: dict) -> torch.Tensor:
            return weight * self.call.functional_loss(self.model, weights, batch)

        def entry(weights: dict, i: int, j: int) -> torch.Tensor:
            _, hv = jvp(grad(batch_loss), (weights,), (dict(zip(self._names, cols[j])),))
            return sum((hv[n] * u).sum() for n, u in zip(self._names, cols[i]))

        return torch.stack([torch.cat([g.reshape(-1) for g in grad(entry)(primals, i, j).values()])
                            for i, j in pairs])

    def dense(self) -> torch.Tensor:
        """The full matrix, one column per basis vector: for tests on small models only."""
        eye = torch.eye(self.size, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(e) for e in eye], dim=1)


def _out_of_memory(err: BaseException) -> bool:
    """An allocation failure: torch's OutOfMemoryError (CUDA and others), or the CPU
    allocator's and MPS's RuntimeError."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err)
    return "out of memory" in text or "can't allocate memory" in text


_WARNED: set[str] = set()  # the kinds of fallback this process has warned about


def _warn_once(kind: str, message: str) -> None:
    """Each kind of fallback said once per process: measurements build many operators."""
    if kind not in _WARNED:
        _WARNED.add(kind)
        warnings.warn(message, SharpWarning, stacklevel=4)
