"""The Gauss–Newton part of the Hessian: exact trace and quadratic forms.

For L = (1/N) Σₙ ℓ(f(xₙ; w), yₙ) the Hessian splits as H = G + R with

    G = (1/N) Σₙ Jₙᵀ Λₙ Jₙ,   Jₙ = ∂f(xₙ)/∂w (C × P),   Λₙ = ∂²ℓ/∂f² at f(xₙ) (C × C),

and R = (1/N) Σₙ Σ_c (∂ℓ/∂f_c) ∇²f_c(xₙ) the part weighted by the loss's first derivative.
On trained networks R is small: on the benchmark MLP (5,110 parameters, MSE) tr R is 2% of
tr H and ‖R‖_F is 3% of ‖H‖_F. That is what makes `control_variate_trace` (sharpcli.linalg)
work: tr G is computed exactly from per-example Jacobians, and only tr R is left to random
probes, whose variance 2‖R‖²_F is about a thousand times smaller than Hutchinson's on H.

Both pieces need each example's output to depend on that example alone: true in eval mode,
and in train mode for networks without BatchNorm (measurement_mode keeps Dropout off).
`gauss_newton_separable` says whether that holds.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vmap

from sharpcli.distributed import SINGLE, Dist
from sharpcli.interrupt import check_stop
from sharpcli.hessian.losses import LossFn
from sharpcli.hessian.objective import chunk_slices
from sharpcli.hessian.params import measurement_mode, trainable_params, unflatten

# Per-example Jacobians are held for one chunk at a time: at most this many numbers.
_JACOBIAN_BUDGET = 2**25  # 128 MiB in float32


def gauss_newton_separable(model: nn.Module, mode: str) -> bool:
    """Whether each example's output depends on that example only, as the exact G trace
    assumes: always in eval mode; in train mode unless BatchNorm normalises by the batch."""
    if mode == "eval":
        return True
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def output_hessians(loss_fn: LossFn, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Λₙ = ∂²ℓ(fₙ, yₙ)/∂fₙ² for every example, shape (n, C, C).

    The loss is a mean of per-example terms, so n·loss has no cross-example second
    derivatives: row c of every Λₙ is ∂/∂f of ∂(n·loss)/∂f_{·c}, all C rows in one batched
    backward pass."""
    f = outputs.detach().requires_grad_(True)
    with torch.enable_grad():
        g = torch.autograd.grad(len(f) * loss_fn(f, labels), f, create_graph=True)[0]
        n_out = f.shape[1]
        basis = torch.eye(n_out, dtype=f.dtype, device=f.device)[:, None, :].expand(n_out, len(f), n_out)
        rows = torch.autograd.grad(g, f, grad_outputs=basis, is_grads_batched=True)[0]
    return rows.permute(1, 0, 2).detach()  # (n, C, C); symmetric


class GaussNewtonPart:
    """G for the same mean loss, examples, parameter block and measurement mode as a
    HessianOperator built with the same arguments. `should_stop`, when given, is polled
    before each chunk of the trace: Ctrl-C ends a long Jacobian pass (Interrupted)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *,
                 chunk_size: int = 4096, params: Sequence[nn.Parameter] | None = None,
                 mode: str = "eval", should_stop: Callable[[], bool] | None = None,
                 dist: Dist = SINGLE):
        if not gauss_newton_separable(model, mode):
            raise ValueError("the Gauss–Newton trace needs per-example outputs: BatchNorm in "
                             "train mode couples the examples of a batch")
        # each process sums over its shard; every example weighs 1/total, then one all-reduce
        self.total, self.dist = len(x), dist
        x, y = x[dist.shard(len(x))], y[dist.shard(len(y))]
        self.model, self.loss_fn, self.x, self.y, self.mode = model, loss_fn, x, y, mode
        self.params = list(params) if params is not None else trainable_params(model)
        ids = {id(p): name for name, p in model.named_parameters()}
        self.names = [ids[id(p)] for p in self.params]
        self.size = sum(p.numel() for p in self.params)
        self.chunk_size = chunk_size
        self._lambdas: dict[int, torch.Tensor] = {}  # chunk start → Λ of its examples
        self.should_stop = should_stop

    def _poll(self) -> None:
        check_stop(self.should_stop)

    def _primals(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in zip(self.names, self.params)}

    def trace(self) -> float:
        """tr G = (1/N) Σₙ tr(Λₙ Jₙ Jₙᵀ), exactly.

        Each example's Jacobian Gram Jₙ Jₙᵀ (C × C) comes, when every parameter of the block
        belongs to an nn.Linear fed one row per example (MLPs), from the layers' inputs aₙ
        and the backpropagated output signals bₙ: the weight's per-example gradient is
        bₙaₙᵀ, so ⟨∂f_c/∂W, ∂f_d/∂W⟩ = (b_c·b_d)‖aₙ‖² — C backward passes per chunk and
        never a P-sized tensor per example (Goodfellow 2015, "Efficient per-example gradient
        computations"). Otherwise the Jacobians are formed with torch.func (vmap of jacrev,
        a chunk of examples at a time), which costs memory traffic of N·C·P numbers.
        """
        total = 0.0
        with measurement_mode(self.model, self.mode):
            grams = self._linear_grams()
            for sl, outputs, gram in grams if grams is not None else self._jacobian_grams():
                lam = output_hessians(self.loss_fn, outputs, self.y[sl])
                total += float((lam * gram).sum().double())
        return self.dist.sum(total / self.total)

    def _linear_grams(self) -> list | None:
        """[(slice, outputs, Jₙ Jₙᵀ)] per chunk by the nn.Linear shortcut, or None where
        it does not apply."""
        layers = self._linear_layers()
        if layers is None:
            return None
        grams = []
        for sl in chunk_slices(len(self.x), self.chunk_size):
            self._poll()
            found = self._linear_gram(self.x[sl], layers)
            if found is None:
                return None
            grams.append((sl, *found))
        return grams

    def _jacobian_rows(self) -> int:
        with torch.no_grad():
            n_out = self.model(self.x[:1]).shape[-1]
        return max(1, min(self.chunk_size, _JACOBIAN_BUDGET // max(1, n_out * self.size)))

    def _jacobian_grams(self):
        """(slice, outputs, Jₙ Jₙᵀ) per chunk from per-example Jacobians (the general path)."""
        primals = self._primals()

        def one_output(weights, xi):
            return functional_call(self.model, weights, (xi.unsqueeze(0),)).squeeze(0)

        per_example_jacobian = vmap(jacrev(one_output), in_dims=(None, 0))
        for sl in chunk_slices(len(self.x), self._jacobian_rows()):
            self._poll()
            xs = self.x[sl]
            jac = per_example_jacobian(primals, xs)
            gram = sum(torch.einsum("nck,ndk->ncd", j.flatten(2), j.flatten(2))
                       for j in (jac[n] for n in self.names))
            with torch.no_grad():
                outputs = self.model(xs)
            yield sl, outputs, gram.detach()  # weights outside the block still require grad

    def _linear_layers(self) -> list[tuple[nn.Linear, bool, bool]] | None:
        """[(layer, weight in block, bias in block)] if every parameter of the block is the
        weight or bias of exactly one nn.Linear, else None. (A parameter the forward also
        uses outside its module, as in F.linear(x, self.fc.weight), cannot be seen here:
        the shortcut assumes modules own their weights, as every sharpcli model does.)"""
        owner: dict[int, nn.Module] = {}
        owners: dict[int, int] = {}
        for module in self.model.modules():
            for p in module.parameters(recurse=False):
                owners[id(p)] = owners.get(id(p), 0) + 1
            if isinstance(module, nn.Linear):
                owner[id(module.weight)] = module
                if module.bias is not None:
                    owner[id(module.bias)] = module
        if not all(id(p) in owner and owners[id(p)] == 1 for p in self.params):
            return None
        ids = {id(p) for p in self.params}
        layers = list(dict.fromkeys(owner[id(p)] for p in self.params))
        return [(m, id(m.weight) in ids, m.bias is not None and id(m.bias) in ids) for m in layers]

    def _linear_gram(self, xs: torch.Tensor, layers) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(outputs, Jₙ Jₙᵀ) for a chunk from layer inputs and output signals; None when a
        layer is called other than once on a (chunk, features) input."""
        seen: dict[nn.Module, list] = {}

        def keep(module, inputs, output):
            seen.setdefault(module, []).append((inputs[0], output))

        handles = [m.register_forward_hook(keep) for m, _, _ in layers]
        try:
            with torch.enable_grad():
                outputs = self.model(xs)
        finally:
            for h in handles:
                h.remove()
        n = len(xs)
        for m, _, _ in layers:
            calls = seen.get(m, [])
            if len(calls) != 1 or calls[0][0].dim() != 2 or calls[0][0].shape[0] != n:
                return None
        if outputs.dim() != 2 or not outputs.requires_grad:
            return None
        signals_at = [seen[m][0][1] for m, _, _ in layers]
        per_output = [torch.autograd.grad(outputs[:, c].sum(), signals_at, retain_graph=True,
                                          allow_unused=True)
                      for c in range(outputs.shape[1])]
        gram = outputs.new_zeros(n, outputs.shape[1], outputs.shape[1])
        for i, (m, has_weight, has_bias) in enumerate(layers):
            b = torch.stack([g[i] if g[i] is not None else torch.zeros_like(signals_at[i])
                             for g in per_output], dim=1)  # (n, C, out_features)
            a = seen[m][0][0].detach()
            scale = a.pow(2).sum(dim=1) if has_weight else torch.zeros(n, dtype=a.dtype, device=a.device)
            if has_bias:
                scale = scale + 1
            gram += torch.einsum("ncj,ndj->ncd", b, b) * scale[:, None, None]
        return outputs.detach(), gram

    def quadratic_form(self, v: torch.Tensor) -> float:
        """vᵀGv = (1/N) Σₙ (Jₙv)ᵀ Λₙ (Jₙv): one forward-mode pass (a JVP) per chunk."""
        tangents = dict(zip(self.names, unflatten(v.to(self.params[0].dtype), self.params)))
        primals = self._primals()
        total = torch.zeros((), dtype=torch.float64, device=self.x.device)
        with measurement_mode(self.model, self.mode), warnings.catch_warnings():
            # torch.func's first forward-mode call scripts a helper and warns about it
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated")
            for sl in chunk_slices(len(self.x), self.chunk_size):
                xs, ys = self.x[sl], self.y[sl]
                outputs, jv = jvp(lambda w: functional_call(self.model, w, (xs,)),
                                  (primals,), (tangents,))
                lam = self._lambdas.get(sl.start)
                if lam is None:  # the weights are fixed, so each chunk's Λ is computed once
                    lam = output_hessians(self.loss_fn, outputs, ys)
                    if lam.numel() * (len(self.x) // len(xs)) <= _JACOBIAN_BUDGET:
                        self._lambdas[sl.start] = lam
                jv = jv.detach()  # weights outside the block still require grad
                total += torch.einsum("nc,ncd,nd->", jv, lam, jv).double()
        return self.dist.sum(float(total / self.total))
