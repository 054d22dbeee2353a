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
`gauss_newton_separable` says whether that holds. They also need the per-example pieces
themselves: batches of (tensor inputs, targets) called as model(x), a loss of the outputs
averaged over examples; `gauss_newton_unavailable` says why not, where it does not apply
(a closure loss, dict inputs, token counts), and the trace then falls back to Hutchinson.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vmap

from sharpcli.distributed import SINGLE, Dist
from sharpcli.interrupt import check_stop
from sharpcli.hessian.calls import Call
from sharpcli.hessian.losses import LossFn
from sharpcli.hessian.objective import objective_of
from sharpcli.hessian.params import measurement_mode, trainable_params, unflatten
from sharpcli.sources.data import Data, chunk_slices

# Per-example Jacobians are held for one chunk at a time: at most this many numbers.
_JACOBIAN_BUDGET = 2**25  # 128 MiB in float32


def gauss_newton_separable(model: nn.Module, mode: str) -> bool:
    """Whether each example's output depends on that example only, as the exact G trace
    assumes: always in eval mode; in train mode unless BatchNorm normalises by the batch."""
    if mode == "eval":
        return True
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def gauss_newton_unavailable(call: Call, data: Data) -> str | None:
    """Why the exact Gauss–Newton trace cannot be taken of this objective, or None: it needs
    model(x) on tensor inputs, a loss of the outputs, and terms that are examples."""
    if not call.plain:
        return "the loss is not loss_fn(model(x), y) (a batch_loss, forward or output_fn is given)"
    if data.num_terms is not None:
        return "num_terms counts other loss terms than examples"
    if data.in_memory and not isinstance(data.source.inputs, torch.Tensor):
        return "the inputs are not one tensor"
    return None


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
    """G for the same mean loss, data, parameter block and measurement mode as a
    HessianOperator built with the same arguments. `should_stop`, when given, is polled
    before each batch of the trace: Ctrl-C ends a long Jacobian pass (Interrupted)."""

    def __init__(self, model: nn.Module, loss_fn, x, y=None, *,
                 chunk_size: int = 4096, params: Sequence[nn.Parameter] | None = None,
                 mode: str = "eval", should_stop: Callable[[], bool] | None = None,
                 dist: Dist = SINGLE):
        if not gauss_newton_separable(model, mode):
            raise ValueError("the Gauss–Newton trace needs per-example outputs: BatchNorm in "
                             "train mode couples the examples of a batch")
        # each process sums over its share; every example weighs 1/total, then one all-reduce
        self.call, self.data = objective_of(model, loss_fn, x, y, chunk_size=chunk_size, dist=dist)
        why = gauss_newton_unavailable(self.call, self.data)
        if why is not None:
            raise ValueError(f"the Gauss–Newton trace needs per-example outputs: {why}")
        self.loss_fn: LossFn = self.call.loss_fn
        self.dist, self.model, self.mode = self.data.dist, model, mode
        self.params = list(params) if params is not None else trainable_params(model)
        ids = {id(p): name for name, p in model.named_parameters()}
        self.names = [ids[id(p)] for p in self.params]
        self.size = sum(p.numel() for p in self.params)
        self._lambdas: dict[int, torch.Tensor] = {}  # batch index → Λ of its examples
        self.should_stop = should_stop

    def _batches(self):
        """(x, y) of each of this process's batches, polling for a stop before each."""
        for _, batch in self.data:
            check_stop(self.should_stop)
            inputs, targets = Call.split(batch)
            if not isinstance(inputs, torch.Tensor):
                raise ValueError("the Gauss–Newton trace needs tensor inputs, got "
                                 f"{type(inputs).__name__}")
            yield inputs, targets

    def _primals(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in zip(self.names, self.params)}

    def trace(self) -> float:
        """tr G = (1/N) Σₙ tr(Λₙ Jₙ Jₙᵀ), exactly.

        Each example's Jacobian Gram Jₙ Jₙᵀ (C × C) comes, when every parameter of the block
        belongs to an nn.Linear fed one row per example (MLPs), from the layers' inputs aₙ
        and the backpropagated output signals bₙ: the weight's per-example gradient is
        bₙaₙᵀ, so ⟨∂f_c/∂W, ∂f_d/∂W⟩ = (b_c·b_d)‖aₙ‖² — C backward passes per batch and
        never a P-sized tensor per example (Goodfellow 2015, "Efficient per-example gradient
        computations"). Otherwise the Jacobians are formed with torch.func (vmap of jacrev,
        a chunk of examples at a time), which costs memory traffic of N·C·P numbers.
        """
        total = 0.0
        layers = self._linear_layers()
        with measurement_mode(self.model, self.mode):
            for xs, ys in self._batches():
                found = self._linear_gram(xs, layers) if layers is not None else None
                pieces = [(slice(None), *found)] if found is not None else self._jacobian_grams(xs)
                for sl, outputs, gram in pieces:
                    lam = output_hessians(self.loss_fn, outputs, ys[sl])
                    total += float((lam * gram).sum().double())
        return self.dist.sum(total / self.data.total)

    def _jacobian_rows(self, xs: torch.Tensor) -> int:
        with torch.no_grad():
            n_out = self.model(xs[:1]).shape[-1]
        return max(1, min(len(xs), _JACOBIAN_BUDGET // max(1, n_out * self.size)))

    def _jacobian_grams(self, xs: torch.Tensor):
        """(slice, outputs, Jₙ Jₙᵀ) per chunk of the batch from per-example Jacobians (the
        general path)."""
        primals = self._primals()

        def one_output(weights, xi):
            return functional_call(self.model, weights, (xi.unsqueeze(0),)).squeeze(0)

        per_example_jacobian = vmap(jacrev(one_output), in_dims=(None, 0))
        for sl in chunk_slices(len(xs), self._jacobian_rows(xs)):
            check_stop(self.should_stop)
            jac = per_example_jacobian(primals, xs[sl])
            gram = sum(torch.einsum("nck,ndk->ncd", j.flatten(2), j.flatten(2))
                       for j in (jac[n] for n in self.names))
            with torch.no_grad():
                outputs = self.model(xs[sl])
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
        """vᵀGv = (1/N) Σₙ (Jₙv)ᵀ Λₙ (Jₙv): one forward-mode pass (a JVP) per batch."""
        tangents = dict(zip(self.names, unflatten(v.to(self.params[0].dtype), self.params)))
        primals = self._primals()
        total = torch.zeros((), dtype=torch.float64, device=self.params[0].device)
        with measurement_mode(self.model, self.mode), warnings.catch_warnings():
            # torch.func's first forward-mode call scripts a helper and warns about it
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated")
            for i, (xs, ys) in enumerate(self._batches()):
                outputs, jv = jvp(lambda w: functional_call(self.model, w, (xs,)),
                                  (primals,), (tangents,))
                lam = self._lambdas.get(i)
                if lam is None:  # the weights are fixed, so each batch's Λ is computed once
                    lam = output_hessians(self.loss_fn, outputs, ys)
                    if lam.numel() * self.data.n_batches <= _JACOBIAN_BUDGET:
                        self._lambdas[i] = lam
                jv = jv.detach()  # weights outside the block still require grad
                total += torch.einsum("nc,ncd,nd->", jv, lam, jv).double()
        return self.dist.sum(float(total / self.data.total))
