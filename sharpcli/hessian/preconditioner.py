"""The diagonal preconditioner P of Adam, AdamW and RMSProp, read from the optimizer's own
state (docs/reference/mathematics.md#preconditioned-sharpness; Cohen et al. 2022, "Adaptive Gradient Methods at the Edge of Stability").

Adam's update w ← w − η·m̂/(√v̂ + ε), with m̂ = m/(1 − β₁^t) and v̂ = v/(1 − β₂^t), is
w ← w − η·P⁻¹m with P_t = (1 − β₁^t)·diag(√(v_t/(1 − β₂^t)) + ε); AdamW's decoupled weight
decay stays outside P. RMSProp's w ← w − η·g/(√v + ε) has P = diag(√v + ε). The
preconditioned sharpness λ₁(P⁻¹H) is λ₁ of P^{-1/2} H P^{-1/2} (sharpcli.linalg.DiagonalScaled).

Which state: t is the step count the optimizer holds (torch's state["step"], the number of
updates made so far) and v_t its squared-gradient average after them. A measurement at
step t describes w_t before update t, so it reads the state as it is then: after update
t − 1, with count t, the state saved in step t's checkpoint too. Before the first update
there is no state and so no P: these functions return None.
"""

from __future__ import annotations

from typing import Sequence

import torch

from sharpcli.edges import preconditioner_kind
from sharpcli.hessian.finite_difference import local
from sharpcli.hessian.params import flatten


def preconditioner(optimizer: torch.optim.Optimizer,
                   params: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """diag(P) of a live Adam, AdamW or RMSProp, flat in the order of `params` (matched by
    identity, however the optimizer groups them); None before its first update."""
    pieces = {}
    for group in optimizer.param_groups:
        kind = _kind(group)
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                return None
            pieces[id(p)] = _diagonal(kind, group, state)
    missing = [i for i, p in enumerate(params) if id(p) not in pieces]
    if missing:
        raise ValueError(f"parameters {missing} are not in the optimizer: P is undefined there")
    # FSDP2: the state is sharded like its parameter; P is this process's shards, as H's vectors
    return flatten([local(pieces[id(p)]) for p in params])


def preconditioner_from_state(state_dict: dict,
                              params: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """diag(P) from a saved optimizer state_dict (a checkpoint's), on the device of `params`.
    Its parameters are numbered in the order the optimizer was given them, which for
    `sharp train` is the model's trainable parameters in order. None before the first update."""
    pieces = []
    for group in state_dict["param_groups"]:
        kind = _kind(group)
        for i in group["params"]:
            state = state_dict["state"].get(i)
            if not state:
                return None
            pieces.append(_diagonal(kind, group, state))
    if [t.shape for t in pieces] != [p.shape for p in params]:
        raise ValueError("the optimizer state does not match the model's parameters")
    return flatten(pieces).to(params[0].device)


def _kind(group: dict) -> str:
    kind = preconditioner_kind(group)
    if kind is None:
        raise ValueError("the optimizer is not Adam, AdamW or RMSProp: it has no preconditioner")
    return kind


def _diagonal(kind: str, group: dict, state: dict) -> torch.Tensor:
    """One parameter's diag(P), as torch.optim computes its denominator."""
    if kind == "adam":
        t = float(state["step"])
        beta1, beta2 = group["betas"]
        v = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        return (1 - beta1 ** t) * ((v / (1 - beta2 ** t)).sqrt() + group["eps"])
    v = state["square_avg"]
    if group.get("centered"):  # the variance, not the second moment
        v = v - state["grad_avg"] ** 2
    return v.sqrt() + group["eps"]
