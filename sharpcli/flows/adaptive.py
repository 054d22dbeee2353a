"""The central flows of RMSProp and Scalar RMSProp (Cohen, Damian, Talwalkar, Kolter & Lee,
ICLR 2025, §5; docs/guides/flow.md#adaptive): the preconditioner's state ν evolves along the
flow, and Σ holds the eigenvalues of P⁻¹H at 2/η.

The runs. torch's RMSProp (no momentum, not centred) does, at step t,

    ν_t = βν_{t−1} + (1 − β) g_t²,    w_{t+1} = w_t − η g_t / P_t,    P_t = √ν_t + ε,

elementwise (β is torch's `alpha`, sharp train's --beta2); Scalar RMSProp keeps one ν, the
average of ‖g‖², and P = (√ν + ε)·I. Written with ν_t on both sides, ν_t − ν_{t−1} =
r (g_t² − ν_t) with r = (1 − β)/β exactly, so time t (in steps) carries ν(t) = ν_t, the state
update t uses, and the flows start from ν(0) = (1 − β) g₀², the state after the first
update. Stable flow: dw/dt = −ηP⁻¹g, dν/dt = r (g² − ν).

The central flow. Σ = U X Uᵀ on the critical generalized eigenvectors, H uᵢ = λᵢ P uᵢ with
UᵀPU = I (uᵢ = P^{-1/2}sᵢ for the eigenvectors sᵢ of P^{-1/2}HP^{-1/2}), and

    dw/dt = −η P⁻¹ [g + ½ D(X)],      D(X) = ∇⟨H, Σ⟩ = Σᵢⱼ Xᵢⱼ Tᵢⱼ,
    dν/dt = r [g² + diag(HΣH) − ν],    (Scalar: ‖g‖² + tr(HΣH))

the second because GD's gradient at w̄ + δ is g + Hδ, whose square averages to g² + diag(HΣH).
At the edge HU = (2/η)PU (λᵢ = 2/η), so diag(HΣH) = (4/η²) P² ⊙ Σᵢⱼ Xᵢⱼ (uᵢ ⊙ uⱼ); using the
edge rather than λᵢ keeps the complementarity map symmetric (the reference code's note on
this). Stability is 2P/η − H ⪰ 0 on span U, and Uᵀ(2P/η − H)U = diag(2/η − λᵢ). Along a substep
P changes too: dP/dt = diag(ν̇ / 2√ν), and uᵢᵀṖuⱼ = ⟨zᵢⱼ/2√ν, ν̇⟩ with zᵢⱼ = uᵢ ⊙ uⱼ (Scalar:
the sum uᵢᵀuⱼ). Dividing the substep's change by η·dt as for GD gives the same problem,
Y = 𝒜X + B ⪰ 0, X ⪰ 0, ⟨X, Y⟩ = 0, with

    (𝒜X)ᵢⱼ = ½⟨Tᵢⱼ, P⁻¹D(X)⟩ + (4r/η⁴) ⟨zᵢⱼ P²/√ν, Σₖₗ Xₖₗ zₖₗ⟩,
    Bᵢⱼ = ⟨Tᵢⱼ, P⁻¹g⟩ + (r/η²) ⟨zᵢⱼ/√ν, g² − ν⟩ + δᵢⱼ (2/η − λᵢ)/(η dt),

𝒜 positive semidefinite (both terms are Gram forms). The second term of each is the
preconditioner adapting: a larger ν raises the edge 2P/η, so that the oscillation, by feeding
ν, stabilises itself as well as through ∇⟨H, Σ⟩. Gradient descent is P = I, r = 0.

Adam is not covered: its first moment makes the update a second-order system in time, which
the paper's derivation (and so this module) does not treat; run_flow refuses it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from sharpcli.flows.sdcp import pairs, solve_sdcp

KINDS = ("rmsprop", "scalar-rmsprop")


@dataclass(frozen=True)
class Rule:
    """RMSProp's preconditioner: `kind` rmsprop (elementwise ν) or scalar-rmsprop (one ν),
    smoothing constant β (torch's alpha) and ε."""

    kind: str
    beta2: float = 0.99
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not 0 < self.beta2 < 1:
            raise ValueError(f"beta2 must lie strictly between 0 and 1, got {self.beta2}")

    @property
    def rate(self) -> float:
        """r = (1 − β)/β: dν/dt = r (E[g²] − ν)."""
        return (1 - self.beta2) / self.beta2

    def squares(self, grad: torch.Tensor) -> torch.Tensor:
        """What ν averages: g² (shape (n,)) or ‖g‖² (shape (1,))."""
        sq = grad.double().square()
        return sq if self.kind == "rmsprop" else sq.sum().reshape(1)

    def initial(self, grad: torch.Tensor) -> torch.Tensor:
        """ν(0) = (1 − β) g₀²: torch's state after the first update (from zero)."""
        return (1 - self.beta2) * self.squares(grad)

    def P(self, nu: torch.Tensor) -> torch.Tensor:
        return nu.clamp_min(0).sqrt() + self.eps

    def products(self, U: torch.Tensor, index: list[tuple[int, int]]) -> torch.Tensor:
        """zᵢⱼ = uᵢ ⊙ uⱼ as columns (n, m), or their sums uᵢᵀuⱼ (1, m) for Scalar RMSProp."""
        i, j = (torch.tensor(side, device=U.device) for side in zip(*index))
        z = U[:, i].double() * U[:, j].double()
        return z if self.kind == "rmsprop" else z.sum(0, keepdim=True)


def root_sqrt(nu: torch.Tensor) -> torch.Tensor:
    """√ν, kept off zero (dP/dν = 1/2√ν)."""
    return nu.clamp_min(1e-300).sqrt()


def adaptive_oscillation(rule: Rule, T: torch.Tensor, U: torch.Tensor, lam: np.ndarray,
                         grad: torch.Tensor, nu: torch.Tensor, lr: float, dt: float,
                         sdcp: str) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """X, D(X) = Σ Xᵢⱼ Tᵢⱼ and the oscillation's part of dν/dt, r·diag(HΣH) (module
    docstring), for T the third-derivative products of the critical generalized eigenvectors
    U (n, c), λ their eigenvalues of P⁻¹H."""
    c = U.shape[1]
    index = pairs(c)
    s = torch.tensor([1.0 if i == j else math.sqrt(2) for i, j in index], dtype=torch.float64)
    mult = s * s  # off-diagonal pairs count twice in a sum over ordered pairs
    P, root = rule.P(nu), root_sqrt(nu)
    Td, g = T.double(), grad.double()
    Z = rule.products(U, index)
    gram = Td.T @ (Td / P[:, None])                                    # ⟨Tₚ, P⁻¹T_q⟩
    adapt = 4 * rule.rate / lr ** 4 * (Z.T @ (Z * (P ** 2 / root)[:, None]))
    Q = (s[:, None] * (0.5 * gram + adapt).cpu() * s[None, :]).numpy()
    beta = (Td.T @ (g / P) + rule.rate / lr ** 2 * (Z.T @ ((rule.squares(g) - nu) / root)))
    B = np.zeros((c, c))
    for p, (i, j) in enumerate(index):
        B[i, j] = B[j, i] = float(beta[p])
    B += np.diag((2 / lr - lam) / (lr * dt))
    X = solve_sdcp(Q, B, solver=sdcp).X
    weights = torch.tensor([X[i, j] for i, j in index], dtype=torch.float64) * mult
    weights = weights.to(Td.device)
    direction = (Td @ weights).to(T.dtype)
    drift = rule.rate * 4 / lr ** 2 * P ** 2 * (Z @ weights)
    return X, direction, drift
