"""Sharpness-aware updates (docs/reference/mathematics.md#sam): SAM (Foret et al. 2021), ASAM (Kwon et al. 2021) and
Eigen-SAM (Luo et al., NeurIPS 2024).

The three differ only in the perturbation ε, so each rule is a small pure function on flat
vectors, and one step applies any of them around the base torch optimizer. A SAM step at
weights w on batch B, once the training loop has g = ∇L_B(w) (that first pass is the only
one that updates BatchNorm's running statistics):

  1. ε = rule(g, …);
  2. g̃ = ∇L_B(w + ε) on the same batch: BatchNorm normalises with the batch's statistics but
     its running statistics stay frozen; dropout is on, as in any training pass;
  3. w is restored exactly and the base optimizer steps with g̃ in place of g, so momentum,
     Nesterov and weight decay (applied to w, not w + ε) are the base SGD's own.

Choices (the papers leave them open):
- ASAM's T is |w| on weight matrices and convolution kernels (tensors of ≥ 2 dimensions)
  and the identity on biases and normalisation scales/shifts (1-D tensors): those sit near
  0 or 1 whatever the layer's scale, and |w| would freeze a zero-initialised bias. There is
  no additive offset in T.
- ASAM's ε is normalised by one global ‖Tg‖ over all parameters, so that ‖T⁻¹ε‖ = ρ exactly
  (the ellipsoid of the ASAM paper), not per layer.
- Eigen-SAM: s = +1 when gᵀv = 0; ε is not renormalised (the official code's choice). The
  estimate v is refreshed at steps that are multiples of --eig-every, and at the first
  SAM step when there is none yet (the start of a run or of the late phase); the first
  refresh starts from a Gaussian vector drawn from (seed, step) by a private generator.
  Its power iteration uses exactly --eig-iters Hessian-vector products on the batch's
  Hessian in --eig-mode's measurement mode: "eval" (the default, as the official code:
  BatchNorm's running statistics) or "train" (the batch's statistics, running statistics
  untouched); dropout off and the mode restored either way, and always in fp32.
- Late-phase SAM (--sam-start): the same base optimizer object continues at the switch,
  so momentum buffers carry over from the base phase.
- g = 0 gives ε = 0 for SAM and ASAM (no NaN).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn

from sharpcli.config import Phase
from sharpcli.linalg.power import power_iteration
from sharpcli.hessian.losses import LossFn
from sharpcli.hessian.objective import accumulate_gradient
from sharpcli.hessian.params import (flatten, full_precision, running_stats_frozen,
                                     trainable_params, unflatten)


def _unit(g: torch.Tensor) -> torch.Tensor:
    """g/‖g‖, and 0 for g = 0 (clamping the norm: no host sync)."""
    return g / g.norm().clamp_min(torch.finfo(g.dtype).tiny)


def sam_perturbation(g: torch.Tensor, rho: float) -> torch.Tensor:
    """SAM: ε = ρ g/‖g‖."""
    return rho * _unit(g)


def asam_perturbation(g: torch.Tensor, w: torch.Tensor, rho: float,
                      scaled: torch.Tensor | None = None) -> torch.Tensor:
    """ASAM: ε = ρ T²g/‖Tg‖ with T = diag(|w|) where `scaled` (a bool mask) is True and the
    identity elsewhere; `scaled=None` scales every entry. ‖T⁻¹ε‖ = ρ."""
    t = w.abs() if scaled is None else torch.where(scaled, w.abs(), torch.ones_like(w))
    return rho * t * _unit(t * g)


def eigen_sam_perturbation(g: torch.Tensor, v: torch.Tensor, rho: float, alpha: float) -> torch.Tensor:
    """Eigen-SAM: ε = ρ(ĝ + α s v⊥), s = sign(gᵀv), v⊥ = v − (ĝᵀv)ĝ; not renormalised."""
    g_hat = _unit(g)
    v = v.to(g.dtype)
    s = torch.where(g @ v >= 0, 1.0, -1.0).to(g.dtype)
    v_perp = v - (g_hat @ v) * g_hat
    return rho * (g_hat + alpha * s * v_perp)


def asam_mask(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Flat bool mask of the entries ASAM scales by |w|: weight matrices and kernels."""
    return flatten([torch.full_like(p, p.ndim >= 2, dtype=torch.bool) for p in params])


def perturbation(phase: str, g: torch.Tensor, params: Sequence[torch.Tensor], *, rho: float,
                 adaptive: bool = False, alpha: float = 0.0,
                 v: torch.Tensor | None = None) -> torch.Tensor:
    """ε for a step of `phase` ('sam' or 'eigen-sam') from g = ∇L_B(w) at the weights `params`."""
    if phase == Phase.eigen_sam:
        if v is None:
            raise ValueError("Eigen-SAM needs an eigenvector estimate v")
        return eigen_sam_perturbation(g, v, rho, alpha)
    if phase != Phase.sam:
        raise ValueError(f"no perturbation for phase {phase!r}")
    if adaptive:
        return asam_perturbation(g, flatten(params).detach(), rho, scaled=asam_mask(params))
    return sam_perturbation(g, rho)


def sam_step(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor,
             eps: torch.Tensor, optimizer: torch.optim.Optimizer, chunk_size: int = 4096, *,
             gradient: Callable[[], object] | None = None) -> None:
    """One SAM update: the base optimizer steps from w with g̃ = ∇L_B(w + ε).

    `eps` is flat, in the order of trainable_params(model). Leaves .grad = g̃. `gradient`,
    when given, computes .grad ← ∇L_B at the perturbed weights in place of the plain
    chunked pass over (x, y) (under torchrun: the data-parallel pass)."""
    params = trainable_params(model)
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
        for p, e in zip(params, unflatten(eps, params)):
            p.add_(e)
    with running_stats_frozen(model):  # .grad ← ∇L_B(w + ε)
        if gradient is None:
            accumulate_gradient(model, loss_fn, x, y, chunk_size)
        else:
            gradient()
    with torch.no_grad():
        for p, w in zip(params, saved):
            p.copy_(w)  # exactly w again: (w + ε) − ε would round
    optimizer.step()


class EigenState(NamedTuple):
    """Eigen-SAM's running estimate v of the top Hessian eigenvector v₁: explicit state,
    passed in and returned (None before the first refresh)."""

    v: torch.Tensor | None = None


def refresh_due(state: EigenState, step: int, every: int) -> bool:
    """At multiples of --eig-every, and whenever there is no estimate yet."""
    return state.v is None or step % every == 0


def refresh(state: EigenState, op, *, iters: int, seed: int) -> EigenState:
    """`iters` power-iteration steps on `op` (the current batch's Hessian), warm-started from
    the last v (the first start is Gaussian from `seed`): exactly `iters` products."""
    with full_precision():  # like every Hessian computation: fp32, TF32 off
        result = power_iteration(op, k=1, tol=0.0, max_iter=iters, v0=state.v, seed=seed,
                                 residuals=False)
    return EigenState(result.eigenvectors[:, 0].detach())
