"""Stability thresholds ("edges") for the top Hessian eigenvalue: the one home of their
formulas (docs/reference/mathematics.md#edges), for training, `sharp eos` and its calculator."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sharpcli.config import ADAPTIVE_PHASES, Optimizer
from sharpcli.errors import SharpError


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


# The preconditioners of the adaptive optimizers, by name: AdamW's P is Adam's
# (docs/reference/mathematics.md#preconditioned-sharpness).
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


def gd_edge_formula(momentum: float = 0.0, nesterov: bool = False) -> str:
    """The formula `gd_edge` evaluates for these settings."""
    if nesterov:
        return "(2+2β)/(η(1+2β))"
    return "(2+2β)/η" if momentum else "2/η"


@dataclass(frozen=True)
class Edge:
    """One edge, named as metrics.csv's column (`gd_edge`, `sam_edge`, `adaptive_edge`),
    with its value and a description: the formula, its source and the settings it used."""

    name: str
    value: float
    description: str

    def line(self) -> str:
        """The line `sharp eos`'s calculator prints."""
        return f"{self.name:<8} {self.value:.6g}  {self.description}"


def edge_calculator(lr: float, momentum: float = 0.0, nesterov: bool = False,
                    rho: float | None = None, grad_norm: float | None = None,
                    optimizer: str | None = None, beta1: float | None = None) -> list[Edge]:
    """The edges of these settings, as `sharp eos --lr ...` prints them: the GD edge, and
    the SAM edge when `rho` is given (which then needs `grad_norm`; it is Long & Bartlett's
    for SAM on plain GD, so momentum enters the GD edge only). For adam and adamw (`beta1`,
    default 0.9) and rmsprop (`momentum`): their adaptive edge alone. Settings that do not
    enter the edges asked for are refused, by their Python names (SharpError.param: the CLI
    says its flags)."""
    if not lr > 0:
        raise SharpError(f"{{lr}} must be positive, got {lr}", param="lr")
    if not 0 <= momentum < 1:
        raise SharpError(f"{{momentum}} must lie in [0, 1), got {momentum}", param="momentum")
    optimizer = None if optimizer is None else Optimizer.parse(optimizer, "optimizer").value
    if optimizer in ADAPTIVE_PHASES:
        return [_adaptive(lr, momentum, nesterov, rho, grad_norm, optimizer, beta1)]
    if beta1 is not None:
        raise SharpError("{beta1} enters the adaptive edge of "
                         "{optimizer} adam or adamw only", param=("beta1", "optimizer"))
    edges = [Edge("gd_edge", gd_edge(lr, momentum, nesterov),
                  f"GD edge {gd_edge_formula(momentum, nesterov)}, η={lr:g}, β={momentum:g}")]
    if rho is None:
        if grad_norm is not None:
            raise SharpError("{grad_norm} only enters the SAM edge: "
                             "give {rho} with it", param=("grad_norm", "rho"))
        return edges
    if rho < 0:
        raise SharpError(f"{{rho}} must be ≥ 0, got {rho}", param="rho")
    if grad_norm is None:
        raise SharpError("the SAM edge depends on the gradient norm: give {grad_norm} "
                         "with {rho}", param=("grad_norm", "rho"))
    if not grad_norm > 0:
        raise SharpError(f"{{grad_norm}} must be positive, got {grad_norm}", param="grad_norm")
    return edges + [Edge("sam_edge", sam_edge(lr, rho, grad_norm),
                         f"SAM edge (Long & Bartlett 2024), η={lr:g}, ρ={rho:g}, "
                         f"‖g‖={grad_norm:g}")]


def _adaptive(lr, momentum, nesterov, rho, grad_norm, optimizer: str, beta1: float | None) -> Edge:
    """The calculator's adaptive edge, refusing the settings that do not enter it."""
    if rho is not None or grad_norm is not None or nesterov:
        raise SharpError(f"{{rho}}, {{grad_norm}} and {{nesterov}} do not enter the edge of "
                         f"{optimizer}", param=("rho", "grad_norm", "nesterov"))
    if optimizer == "rmsprop":
        if beta1 is not None:
            raise SharpError("{beta1} is Adam's; rmsprop's edge takes {momentum}",
                             param=("beta1", "momentum"))
        return Edge("adaptive_edge", rmsprop_edge(lr, momentum),
                    f"adaptive edge (2+2μ)/η of rmsprop, η={lr:g}, μ={momentum:g}")
    if momentum:
        raise SharpError(f"{optimizer} has no {{momentum}}; its momentum is {{beta1}}",
                         param=("momentum", "beta1"))
    beta1 = 0.9 if beta1 is None else beta1
    if not 0 <= beta1 < 1:
        raise SharpError(f"{{beta1}} must lie in [0, 1), got {beta1}", param="beta1")
    return Edge("adaptive_edge", adam_edge(lr, beta1),
                f"adaptive edge (2+2β₁)/((1−β₁)η) of {optimizer} (Cohen et al. 2022), "
                f"η={lr:g}, β₁={beta1:g}")
