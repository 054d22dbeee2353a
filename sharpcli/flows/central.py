"""The central flow of gradient descent and the stable (gradient) flow, one unit of time (one
step of GD) at a time (Cohen, Damian, Talwalkar, Kolter & Lee, "Understanding Optimization in
Deep Learning with Central Flows", ICLR 2025; docs/guides/flow.md#what).

Time t is counted in steps of GD with step size η. The stable flow is gradient flow,
dw/dt = −η∇L(w). At the edge of stability GD oscillates along the top Hessian eigenvectors
with a covariance Σ, and its time-average w̄ follows the central flow

    dw/dt = −η [∇L(w) + ½ ∇⟨H(w), Σ(w)⟩],

where Σ is what keeps the eigenvalues of H at or below 2/η. Σ = U X Uᵀ lives on the critical
eigenvectors U = [u₁ … u_c], those with λᵢ > threshold (1.95/η by default), and X ⪰ 0 (c×c).
With Tᵢⱼ = ∇(uᵢᵀH(w)uⱼ) (HessianOperator.third_derivatives) and g = ∇L,

    ∇⟨H, Σ⟩ = Σᵢⱼ Xᵢⱼ Tᵢⱼ = D(X),    dw/dt = −η [g + ½ D(X)],
    d/dt (UᵀHU)ᵢⱼ = ⟨Tᵢⱼ, dw/dt⟩ = −η [⟨Tᵢⱼ, g⟩ + ½⟨Tᵢⱼ, D(X)⟩].

An Euler substep of length dt must leave UᵀHU ⪯ (2/η)I, with X nonzero only where the bound
is reached (X may not push an eigenvalue below 2/η, only stop it rising past it):

    Y = 𝒜X + B ⪰ 0,   X ⪰ 0,   ⟨X, Y⟩ = 0,
    (𝒜X)ᵢⱼ = ½⟨Tᵢⱼ, D(X)⟩,   Bᵢⱼ = ⟨Tᵢⱼ, g⟩ + δᵢⱼ (2/η − λᵢ)/(η dt),

Y being (2/η)I − (UᵀHU after the substep), divided by η dt. This is the complementarity
problem of sharpcli.flows.sdcp; 𝒜 is positive semidefinite (⟨X, 𝒜X⟩ = ½‖D(X)‖²). The
(2/η − λᵢ) term puts an eigenvalue that is below 2/η, or has overshot it, at 2/η after the
substep, to first order: near the edge the iteration is Newton's method on λᵢ(w) = 2/η.

Predicted time-averaged loss of GD: L(w) + ½⟨H, Σ⟩ = L(w) + ½ Σᵢ λᵢ Xᵢᵢ (U are
eigenvectors); tr Σ = tr X. A row at step t holds w(t), measured at the first substep.

The stable flow takes max(substeps, ⌈substeps·ηλ₁/2⌉) Euler substeps per step, λ₁ measured
at the step's start: as fine, relative to its curvature, as the central flow's substeps are
at the edge (ηλ₁·dt ≤ 2/substeps), since gradient flow's sharpness keeps rising.

Eigenpairs come from block Lanczos on the HessianOperator, warm-started from the previous
substep's vectors; at least two are tracked, and for the central flow one more than the
critical count, so that an eigenvalue reaching the threshold is seen (the block grows until
its last eigenvalue is below the threshold, up to MAX_TRACKED). The stable flow tracks two:
it has no critical directions, and its sharpness passes 2/η in many directions at once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from sharpcli.edges import gd_edge
from sharpcli.errors import SharpError
from sharpcli.flows.adaptive import Rule, adaptive_oscillation
from sharpcli.flows.config import FlowConfig
from sharpcli.flows.sdcp import pairs, solve_sdcp
from sharpcli.hessian.calls import Call
from sharpcli.hessian.objective import full_batch_gradient
from sharpcli.hessian.operator import HessianOperator
from sharpcli.hessian.params import flatten, full_precision, trainable_params, unflatten
from sharpcli.linalg import DiagonalScaled, EigenResult, block_lanczos
from sharpcli.linalg.results import apply_block
from sharpcli.sources.data import Data

MAX_TRACKED = 32  # eigenpairs tracked at most: more critical directions than this is an error


@dataclass(kw_only=True)
class FlowSettings(FlowConfig):
    """How a flow is integrated: `sharp flow`'s settings (FlowConfig, one place for their
    defaults: docs/guides/flow.md#running) at the run's step size."""

    lr: float                      # η of the run
    mode: str = "eval"             # BatchNorm running statistics, Dropout off
    rule: Rule | None = None       # RMSProp's preconditioner (sharpcli.flows.adaptive); None: GD
    refresh: bool = True           # Rayleigh–Ritz on the tracked vectors at substeps after the
                                   # first of a step (False: block Lanczos at every substep)

    @property
    def edge(self) -> float:
        return gd_edge(self.lr)  # plain GD: no momentum in a flow


@dataclass
class FlowState:
    """One flow where it stands: its weights, its last top eigenvectors (the next solve's
    warm start) and the seconds spent on it."""

    weights: torch.Tensor                 # flat, in the model's parameter order
    vectors: torch.Tensor | None = None   # (size, k)
    seconds: float = 0.0
    nu: torch.Tensor | None = None        # RMSProp's state ν (float64), set at the first step
    third: tuple | None = None            # (U, T) of the step's first substep (GD, refresh)


@dataclass
class FlowPoint:
    """What a flow.csv row records of one flow at step t (w(t), the step's first substep),
    and the products its whole step took."""

    train_loss: float
    predicted_loss: float
    eigenvalues: list[float]
    residuals: list[float]
    critical: int
    sigma_trace: float
    n_hvp: int = 0
    n_third: int = 0
    substeps: int = 0
    sigma: list[float] = field(default_factory=list)  # eigenvalues of Σ, descending
    sigma_vectors: torch.Tensor | None = None           # their unit eigenvectors (size, c)

    @property
    def sharpness(self) -> float:
        return self.eigenvalues[0]


@dataclass
class Objective:
    """The run's training loss as a function of flat weights: the model (whose trainable
    parameters are overwritten by `load`), its Call and its Data."""

    model: nn.Module
    call: Call
    data: Data
    params: list[nn.Parameter] = field(init=False)

    def __post_init__(self) -> None:
        self.params = trainable_params(self.model)

    def weights(self) -> torch.Tensor:
        return flatten([p.detach() for p in self.params]).clone()

    def load(self, weights: torch.Tensor) -> None:
        with torch.no_grad():
            for p, piece in zip(self.params, unflatten(weights, self.params)):
                p.copy_(piece)

    def gradient(self, mode: str) -> tuple[float, torch.Tensor]:
        return full_batch_gradient(self.model, self.call, self.data, mode=mode)

    def operator(self, mode: str) -> HessianOperator:
        return HessianOperator(self.model, self.call, self.data, mode=mode)


def top_eigenpairs(op: HessianOperator, state: FlowState, settings: FlowSettings,
                   least: int = 2, critical: bool = True) -> EigenResult:
    """The top eigenpairs by block Lanczos warm-started from (and leaving in) `state.vectors`:
    `least` of them, and with `critical` (the central flow) one more than those above the
    threshold, the block growing until its last eigenvalue is below it."""
    k = min(max(least, 0 if state.vectors is None or not critical else state.vectors.shape[1]),
            op.size)
    while True:
        with full_precision():
            result = block_lanczos(op, k, tol=settings.tol, max_iter=max(settings.max_iter, 2 * k),
                                   v0=state.vectors, seed=settings.seed, criterion="eigenvalue")
        state.vectors = result.eigenvectors
        above = int((result.eigenvalues > settings.threshold / settings.lr).sum()) if critical else 0
        if above < k or k == op.size:
            break
        if k == MAX_TRACKED:
            raise SharpError(f"more than {MAX_TRACKED} Hessian eigenvalues are above "
                             f"{settings.threshold}/η: the central flow tracks at most {MAX_TRACKED}")
        k += 1
    state.vectors = state.vectors[:, :max(least, above + 1)]
    return result


def oscillation(op: HessianOperator, grad: torch.Tensor, eig: EigenResult, critical: int,
                settings: FlowSettings, dt: float,
                stale: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[np.ndarray, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """X (critical × critical) and ∇⟨H, Σ⟩ = D(X) for Σ = U X Uᵀ on the critical eigenvectors
    (module docstring), and (U, T) for later substeps. With `stale`, the (U₀, T₀) of the
    step's first substep, 𝒜 and B are built from T₀ carried over to the current vectors
    (Tᵢⱼ is bilinear in uᵢ, uⱼ: `carried_pairs`) instead of c(c+1)/2 new products, and only
    D(X) is computed afresh: D(X) = Σₐ σₐ ∇(vₐᵀHvₐ) over X's eigenpairs (σₐ, qₐ), vₐ = Uqₐ,
    at most c products (none when X = 0)."""
    U = eig.eigenvectors[:, :critical]
    lam = eig.eigenvalues[:critical].numpy()
    T = op.third_derivatives(U) if stale is None else carried_pairs(*stale, U)
    index = pairs(critical)
    root2 = np.array([1.0 if i == j else math.sqrt(2) for i, j in index])
    gram = (T.T.double() @ T.double()).cpu().numpy()  # ⟨Tₚ, T_q⟩
    Q = 0.5 * root2[:, None] * gram * root2[None, :]  # 𝒜 on svec coordinates
    beta = (T.T.double() @ grad.double()).cpu().numpy()
    B = np.zeros((critical, critical))
    for p, (i, j) in enumerate(index):
        B[i, j] = B[j, i] = beta[p]
    B += np.diag((settings.edge - lam) / (settings.lr * dt))
    X = solve_sdcp(Q, B, solver=settings.sdcp).X
    if stale is None:
        # D(X) = Σ over ordered pairs: each off-diagonal pair twice
        weights = np.array([X[i, j] * (1.0 if i == j else 2.0) for i, j in index])
        direction = T @ torch.as_tensor(weights, dtype=T.dtype, device=T.device)
        return X, direction, (U, T)
    return X, fresh_direction(op, U, X, grad), stale


def carried_pairs(U0: torch.Tensor, T0: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """T for the vectors U from T₀ of U₀ spanning (nearly) the same space: with R = U₀ᵀU,
    u'ₐ ≈ Σᵢ Rᵢₐ uᵢ, so T'ₐᵦ = Σᵢⱼ RᵢₐRⱼᵦ Tᵢⱼ, a c(c+1)/2-square matrix on the pairs."""
    R = (U0.T.double() @ U.double()).cpu().numpy()
    index = pairs(U.shape[1])
    M = np.zeros((len(index), len(index)))
    for p, (i, j) in enumerate(index):
        for q, (a, b) in enumerate(index):
            M[p, q] = R[i, a] * R[j, b] + (R[j, a] * R[i, b] if i != j else 0.0)
    return T0 @ torch.as_tensor(M, dtype=T0.dtype, device=T0.device)


def fresh_direction(op: HessianOperator, U: torch.Tensor, X: np.ndarray,
                    grad: torch.Tensor) -> torch.Tensor:
    """D(X) = Σₐ σₐ ∇(vₐᵀHvₐ), vₐ = Uqₐ, over X's positive eigenpairs."""
    sigma, q = np.linalg.eigh(X)
    keep = sigma > 1e-12 * max(float(sigma.max()), 0.0) if len(sigma) else sigma > 0
    if not keep.any() or sigma.max() <= 0:
        return torch.zeros_like(grad)
    V = U @ torch.as_tensor(q[:, keep], dtype=U.dtype, device=U.device)
    T = op.third_derivatives(V, [(a, a) for a in range(V.shape[1])])
    return T @ torch.as_tensor(sigma[keep], dtype=T.dtype, device=T.device)


def central_step(objective: Objective, state: FlowState, settings: FlowSettings,
                 advance: bool = True) -> FlowPoint:
    """Measure the central flow at w(t) and, with `advance`, integrate it to w(t + 1) in
    `settings.substeps` Euler substeps; `state` is updated in place."""
    start, dt = time.perf_counter(), 1.0 / settings.substeps
    w, first = state.weights, None
    n_hvp = n_third = 0
    for substep in range(settings.substeps if advance else 1):
        objective.load(w)
        loss, grad = objective.gradient(settings.mode)
        op = objective.operator(settings.mode)
        nu = _start_nu(state, settings, grad)
        eig, U = _eigenpairs(op, state, settings, nu, refresh=settings.refresh and substep > 0)
        critical = int((eig.eigenvalues > settings.threshold / settings.lr).sum())
        stale = state.third if settings.refresh and substep > 0 else None
        X, direction, drift, state.third = _oscillation(op, grad, eig, U, critical, nu,
                                                         settings, dt, stale)
        n_hvp, n_third = n_hvp + op.n_matvec, n_third + op.n_third
        if first is None:
            lam = eig.eigenvalues[:critical].numpy()
            gram = (U[:, :critical].T.double() @ U[:, :critical].double()).cpu().numpy()
            first = FlowPoint(loss, loss + 0.5 * float(lam @ np.diag(X)), eig.eigenvalues.tolist(),
                              eig.residuals.tolist(), critical, float(np.sum(X * gram)))
            first.sigma, first.sigma_vectors = covariance_eigenpairs(U[:, :critical], X)
        if advance:
            w, state.nu = _euler(w, nu, grad, direction, drift, settings, dt)
    state.weights = w
    first.n_hvp, first.n_third, first.substeps = n_hvp, n_third, settings.substeps if advance else 0
    state.seconds += time.perf_counter() - start
    return first


def covariance_eigenpairs(U: torch.Tensor, X: np.ndarray) -> tuple[list[float], torch.Tensor]:
    """The nonzero spectrum of Σ = U X Uᵀ (U need not be orthonormal: RMSProp's UᵀPU = I):
    with U = QR, Σ = Q (R X Rᵀ) Qᵀ, so Σ's eigenpairs are those of the c×c R X Rᵀ, rotated
    by Q."""
    if U.shape[1] == 0:
        return [], U
    Q, R = torch.linalg.qr(U.double())
    R = R.cpu().numpy()
    values, vectors = np.linalg.eigh(R @ X @ R.T)
    order = np.argsort(values)[::-1]
    vectors = torch.as_tensor(vectors[:, order].copy(), dtype=torch.float64, device=Q.device)
    return np.clip(values[order], 0, None).tolist(), (Q @ vectors).to(U.dtype)


def _start_nu(state: FlowState, settings: FlowSettings, grad: torch.Tensor) -> torch.Tensor | None:
    """RMSProp's ν at this substep: ν(0) = (1 − β)g₀² at the flow's start."""
    if settings.rule is None:
        return None
    if state.nu is None:
        state.nu = settings.rule.initial(grad)
    return state.nu


def _eigenpairs(op: HessianOperator, state: FlowState, settings: FlowSettings,
                nu: torch.Tensor | None, critical: bool = True,
                refresh: bool = False) -> tuple[EigenResult, torch.Tensor]:
    """The top eigenpairs of H (GD) or of P^{-1/2}HP^{-1/2} (RMSProp), and the (generalized)
    eigenvectors U of H, P⁻¹H: uᵢ = P^{-1/2}sᵢ, UᵀPU = I. With `refresh`, Rayleigh–Ritz on
    the tracked vectors instead of a solve."""
    scale = None if nu is None else settings.rule.P(nu).rsqrt().expand(op.size).to(op.dtype)
    target = op if scale is None else DiagonalScaled(op, scale)
    solve = rayleigh_ritz if refresh and state.vectors is not None else top_eigenpairs
    eig = solve(target, state, settings, critical=critical)
    return eig, eig.eigenvectors if scale is None else eig.eigenvectors * scale[:, None]


def rayleigh_ritz(op, state: FlowState, settings: FlowSettings, critical: bool = True) -> EigenResult:
    """The tracked vectors V refreshed in k products: the eigenpairs of VᵀAV, rotated back
    (Ritz pairs, with their residuals ‖Au − λu‖). Between two substeps w moves by η·dt·‖ẇ‖,
    so the subspace of the top eigenvectors barely turns, and a Ritz value is within the
    square of the subspace's error of the eigenvalue (the reference code refreshes the same
    way between its once-a-step eigensolves)."""
    V = state.vectors
    with full_precision():
        AV = apply_block(op, V)
        values, rotation = torch.linalg.eigh(V.T.double() @ AV.double())
    order = torch.flip(torch.arange(len(values)), [0])
    values, rotation = values[order], rotation[:, order].to(V.dtype)
    U, AU = V @ rotation, AV @ rotation
    residuals = (AU - U * values.to(U.dtype)[None, :]).norm(dim=0)
    state.vectors = U
    k = V.shape[1]
    return EigenResult(values.cpu(), U, residuals.double().cpu(), torch.ones(k, dtype=torch.bool),
                       k, 0)


def _oscillation(op, grad, eig, U, critical, nu, settings, dt, stale=None):
    """X, D(X), the oscillation's part of dν/dt (None for GD) and the (U, T) later substeps
    of the step may carry over (`oscillation`; GD only: RMSProp computes T each substep); all
    zero with no critical direction."""
    if critical == 0:
        return np.zeros((0, 0)), torch.zeros_like(grad), None, None
    if nu is None:
        if stale is not None and stale[0].shape[1] != critical:
            stale = None  # the critical count changed within the step: new products
        X, direction, third = oscillation(op, grad, eig, critical, settings, dt, stale)
        return X, direction, None, third
    T = op.third_derivatives(U[:, :critical])
    return (*adaptive_oscillation(settings.rule, T, U[:, :critical],
                                  eig.eigenvalues[:critical].numpy(), grad, nu, settings.lr, dt,
                                  settings.sdcp), None)


def _euler(w, nu, grad, direction, drift, settings: FlowSettings, dt: float):
    """One Euler substep of (w, ν): dw/dt = −ηP⁻¹[g + ½D(X)], dν/dt = r[g² − ν] + drift."""
    if nu is None:
        return w - settings.lr * dt * (grad + 0.5 * direction), None
    rule = settings.rule
    step = (grad + 0.5 * direction).double() / rule.P(nu)
    nu_dot = rule.rate * (rule.squares(grad) - nu) + (0 if drift is None else drift)
    return w - (settings.lr * dt * step).to(w.dtype), nu + dt * nu_dot


def stable_substeps(sharpness: float, settings: FlowSettings) -> int:
    """max(substeps, ⌈substeps·ηλ₁/2⌉): ηλ₁·dt ≤ 2/substeps."""
    return max(settings.substeps, math.ceil(settings.substeps * settings.lr * sharpness / 2 - 1e-9))


def stable_step(objective: Objective, state: FlowState, settings: FlowSettings,
                advance: bool = True) -> FlowPoint:
    """Measure gradient flow (RMSProp's: its stable flow) at w(t) and, with `advance`,
    integrate it to w(t + 1)."""
    start = time.perf_counter()
    objective.load(state.weights)
    loss, grad = objective.gradient(settings.mode)
    op = objective.operator(settings.mode)
    nu = _start_nu(state, settings, grad)
    eig, _ = _eigenpairs(op, state, settings, nu, critical=False)
    n = stable_substeps(float(eig.eigenvalues[0]), settings) if advance else 0
    w = state.weights
    for i in range(n):
        if i > 0:
            objective.load(w)
            _, grad = objective.gradient(settings.mode)
        w, nu = _euler(w, nu, grad, 0.0, None, settings, 1.0 / n)
    state.weights, state.nu = w, nu
    state.seconds += time.perf_counter() - start
    return FlowPoint(loss, loss, eig.eigenvalues.tolist(), eig.residuals.tolist(), 0, 0.0,
                     n_hvp=op.n_matvec, substeps=n)


def integrate(objective: Objective, settings: FlowSettings, steps: int,
              central: FlowState, stable: FlowState, start: int = 0):
    """Both flows from step `start` (their states at w(start)) to `steps`: yields
    (t, central point, stable point) for t = start … steps, each state then at w(t + 1)
    (at w(steps) after the last, which is measured only)."""
    for t in range(start, steps + 1):
        advance = t < steps
        yield (t, central_step(objective, central, settings, advance),
               stable_step(objective, stable, settings, advance))
