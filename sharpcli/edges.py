"""Stability thresholds ("edges") for the top Hessian eigenvalue, SPEC §4 and §10."""

from __future__ import annotations

import math
from dataclasses import dataclass


def gd_edge(lr: float, momentum: float = 0.0, nesterov: bool = False) -> float:
    """GD edge of stability (Cohen et al. 2021): 2/η, (2+2β)/η with heavy ball,
    (2+2β)/(η(1+2β)) with Nesterov momentum β."""
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if nesterov:
        return (2.0 + 2.0 * momentum) / (lr * (1.0 + 2.0 * momentum))
    return (2.0 + 2.0 * momentum) / lr


def sam_edge(lr: float, rho: float, grad_norm: float) -> float:
    """SAM edge (Long & Bartlett 2024) for normalised SAM: the positive root λ of
    ηλ(1 + ρλ/‖g‖) = 2, i.e. (‖g‖/(2ρ))(√(1 + 8ρ/(η‖g‖)) − 1). Equals 2/η at ρ = 0."""
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if rho == 0:
        return 2.0 / lr
    if grad_norm <= 0:
        # ‖g‖ → 0 pushes the edge to 0: the perturbation dominates the step.
        return 0.0
    x = 8.0 * rho / (lr * grad_norm)
    # (√(1+x) − 1) loses precision for tiny x; x/(√(1+x)+1) is the same number, stably.
    return (grad_norm / (2.0 * rho)) * (x / (math.sqrt(1.0 + x) + 1.0))


def adam_edge(lr: float, beta1: float) -> float:
    """Adaptive edge of Adam and AdamW (Cohen et al. 2022): (2 + 2β₁)/((1 − β₁)η), the
    threshold of the preconditioned sharpness λ₁(P⁻¹H); 38/η at β₁ = 0.9."""
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)


def rmsprop_edge(lr: float, momentum: float = 0.0) -> float:
    """Adaptive edge of RMSProp: 2/η, (2 + 2μ)/η with momentum μ (torch's RMSProp applies
    heavy ball to the preconditioned gradient, so the GD edge holds for λ₁(P⁻¹H))."""
    return gd_edge(lr, momentum)


# The preconditioners of SPEC §10, by optimizer name: AdamW's P is Adam's.
PRECONDITIONER_OF = {"adam": "adam", "adamw": "adam", "rmsprop": "rmsprop"}


def preconditioner_kind(group: dict) -> str | None:
    """"adam" (Adam, AdamW), "rmsprop", or None, from a torch.optim param group's settings:
    Adam's carry `betas`, RMSProp's `alpha` and `centered`."""
    if "betas" in group:
        return "adam"
    if "alpha" in group and "centered" in group:
        return "rmsprop"
    return None


@dataclass(frozen=True)
class EdgeRule:
    """The edges that apply to a run's steps, from the settings that enter them: momentum and
    Nesterov for the GD edge, ρ for the SAM edge (Long & Bartlett's edge is for SAM on plain
    GD: momentum enters the GD edge only), the preconditioner and β₁ (Adam) or momentum
    (RMSProp) for the adaptive edge. Training logs these and `sharp eos` recomputes them the
    same way where a row lacks them."""

    momentum: float = 0.0
    nesterov: bool = False
    rho: float | None = None  # None: no SAM edge
    preconditioner: str | None = None  # "adam" or "rmsprop"; None: no adaptive edge
    beta1: float = 0.9

    @classmethod
    def from_param_groups(cls, groups: list[dict], rho: float | None = None) -> "EdgeRule":
        """The rule of a torch optimizer, read from its (first) param group."""
        group = groups[0]
        kind = preconditioner_kind(group)
        beta1 = group["betas"][0] if kind == "adam" else 0.9
        return cls(float(group.get("momentum", 0.0)), bool(group.get("nesterov", False)), rho,
                   kind, float(beta1))

    def at(self, lr: float | None, grad_norm: float | None, sam_phase: bool) -> dict[str, float | None]:
        """{"gd_edge", "sam_edge", "adaptive_edge"} at a step of step size `lr` and gradient
        norm ‖g‖; each None where it does not apply: no positive lr (a cosine schedule ends
        at 0), no SAM edge outside SAM phases or without ρ and ‖g‖, no adaptive edge
        without a preconditioner."""
        if lr is None or not lr > 0:
            return {"gd_edge": None, "sam_edge": None, "adaptive_edge": None}
        sam = None
        if sam_phase and self.rho is not None and grad_norm is not None:
            sam = sam_edge(lr, self.rho, grad_norm)
        return {"gd_edge": gd_edge(lr, self.momentum, self.nesterov), "sam_edge": sam,
                "adaptive_edge": self.adaptive_edge(lr)}

    def adaptive_edge(self, lr: float) -> float | None:
        if self.preconditioner == "adam":
            return adam_edge(lr, self.beta1)
        if self.preconditioner == "rmsprop":
            return rmsprop_edge(lr, self.momentum)
        return None
