"""The central flows of RMSProp and Scalar RMSProp on the two-valley loss of tests/flows/toy.py
against hand-worked formulas (float64, ε = 0).

Along the valley floor x = 0 the gradient is (0, −1) in each (xᵢ, yᵢ), the Hessian is
diag(cᵢyᵢ²) in xᵢ and 0 in yᵢ, and a held valley has Σ = σᵢ² eₓᵢeₓᵢᵀ. Then

    ẏᵢ = (η/P_yᵢ)(1 − cᵢyᵢσᵢ²),    ν̇ = r(g² + diag(HΣH) − ν),  (HΣH)ₓᵢₓᵢ = (cᵢyᵢ²)²σᵢ²,

and holding cᵢyᵢ²/P_xᵢ at 2/η means 2cᵢyᵢẏᵢ = (2/η)Ṗ_xᵢ with Ṗ = ν̇/2√ν: two linear equations
fix σᵢ² at each instant, the value the flow's complementarity problem must give. (The flow
also corrects the small overshoot of the last Euler substep, λᵢ − 2/η, over the next substep
dt, and takes diag(HΣH) at the edge, (2P/η)²σᵢ²: so do the formulas here.) RMSProp's
fixed point is yᵢ = 4/(η²cᵢ), σᵢ² = η²/4, ν_xᵢ = cᵢyᵢ³."""

import math

import pytest
import torch

from sharpcli.flows.adaptive import Rule
from sharpcli.flows.central import (FlowSettings, FlowState, Objective, central_step,
                                    stable_step)
from tests.flows import toy

BETA = 0.4
R = (1 - BETA) / BETA


def start(y, nu):
    model, call, data = toy.problem()
    objective = Objective(model, call, data)
    w = objective.weights()
    w[2:] = torch.tensor(y, dtype=torch.float64)
    return objective, FlowState(w, nu=torch.tensor(nu, dtype=torch.float64))


def overshoot(c, y, px, lr, dt):
    """e = P_x(2/η − λ)/dt: the substep puts λ = cy²/P_x back at 2/η, so that
    c y ẏ = Ṗ_x/η + e/2."""
    return px * (2 / lr - c * y ** 2 / px) / dt


def rmsprop_sigma2(y, nu, lr, dt):
    """σᵢ² of each held valley for elementwise ν = (ν_x0, ν_x1, ν_y0, ν_y1)."""
    out = []
    for i, c in enumerate(toy.C):
        px, py = math.sqrt(nu[i]), math.sqrt(nu[2 + i])
        a, e = 2 * px / lr, overshoot(c, y[i], px, lr, dt)
        # c y (η/P_y)(1 − c y σ²) = r (a² σ² − ν_x) / (2η√ν_x) + e/2
        out.append((c * y[i] * lr / py + R * nu[i] / (2 * lr * px) - e / 2)
                   / (c ** 2 * y[i] ** 2 * lr / py + R * a ** 2 / (2 * lr * px)))
    return out


def scalar_sigma2_sum(y, nu, lr, dt):
    """σ₀² + σ₁² for one ν: cᵢyᵢ(η/P)(1 − cᵢyᵢσᵢ²) = K + eᵢ/2, K = r(2 + a²S − ν)/(2η√ν),
    a = 2P/η."""
    p = math.sqrt(nu)
    a = 2 * p / lr
    inv = [1 / (c * yi) for c, yi in zip(toy.C, y)]
    half_e = [overshoot(c, yi, p, lr, dt) / 2 for c, yi in zip(toy.C, y)]
    # S = Σ inv − (P/η) Σ inv²(K + eᵢ/2), K = r(2 − ν + a² S)/(2ηP): linear in S
    k0, k1 = R * (2 - nu) / (2 * lr * p), R * a ** 2 / (2 * lr * p)
    q = p / lr * sum(v ** 2 for v in inv)
    shift = p / lr * sum(v ** 2 * h for v, h in zip(inv, half_e))
    return (sum(inv) - q * k0 - shift) / (1 + q * k1)


@pytest.mark.parametrize("kind, lr, y0, nu0", [
    ("rmsprop", 1.0, (3.9, 2.6), (60.0, 27.0, 1.0, 1.0)),
    ("scalar-rmsprop", 1.5, (3.2, 2.6), (60.0,)),
])
def test_held_at_the_adaptive_edge_with_the_hand_worked_oscillation(kind, lr, y0, nu0):
    objective, state = start(y0, nu0)
    settings = FlowSettings(lr=lr, substeps=4, rule=Rule(kind, BETA, 0.0))
    held = 0
    for t in range(12):
        w, nu = state.weights.clone(), state.nu.tolist()
        p = central_step(objective, state, settings)
        assert torch.equal(w[:2], torch.zeros(2, dtype=torch.float64)) or t > 0
        if t < 2:  # the first substeps bring both valleys onto the edge (Newton steps)
            continue
        held += 1
        y = w[2:].tolist()
        # held to the second order of a substep's Euler step
        assert p.critical == 2 and p.eigenvalues[:2] == pytest.approx([2 / lr] * 2, rel=1e-5)
        # λ(P⁻¹H) = cᵢyᵢ²/P_xᵢ: the edge, from the weights and ν themselves
        px = [math.sqrt(v) for v in (nu[:2] if kind == "rmsprop" else nu * 2)]
        assert sorted(c * yi ** 2 / q for c, yi, q in zip(toy.C, y, px)) == pytest.approx(
            sorted(p.eigenvalues[:2]), rel=1e-9)
        expected = (sum(rmsprop_sigma2(y, nu, lr, 0.25)) if kind == "rmsprop"
                    else scalar_sigma2_sum(y, nu[0], lr, 0.25))
        assert math.isclose(p.sigma_trace, expected, rel_tol=1e-7), (t, p.sigma_trace, expected)
        # predicted loss L + ½⟨H, Σ⟩ with ⟨H, Σ⟩ = Σ cᵢyᵢ²σᵢ²
        if kind == "rmsprop":
            s2 = rmsprop_sigma2(y, nu, lr, 0.25)
            extra = sum(c * yi ** 2 * s for c, yi, s in zip(toy.C, y, s2))
            assert math.isclose(p.predicted_loss, p.train_loss + 0.5 * extra, rel_tol=1e-7)
    assert held == 10


def test_rmsprop_converges_to_its_fixed_point():
    """yᵢ → 4/(η²cᵢ), σᵢ² → η²/4, ν_xᵢ → cᵢyᵢ³ (module docstring), from near it."""
    lr = 1.0
    objective, state = start((3.9, 2.6), (60.0, 27.0, 1.0, 1.0))
    settings = FlowSettings(lr=lr, substeps=4, rule=Rule("rmsprop", BETA, 0.0))
    for _ in range(40):
        p = central_step(objective, state, settings)
    y = [4 / (lr ** 2 * c) for c in toy.C]
    assert state.weights[2:].tolist() == pytest.approx(y, rel=2e-3)
    assert state.nu[:2].tolist() == pytest.approx([c * v ** 3 for c, v in zip(toy.C, y)], rel=5e-3)
    assert p.sigma_trace == pytest.approx(2 * lr ** 2 / 4, rel=2e-3)


def test_stable_flow_is_rmsprop_without_oscillation():
    """dw/dt = −ηP⁻¹g, dν/dt = r(g² − ν): on the floor x stays 0, ν_x decays as (1 − r/n)ⁿ per
    step and y moves by η/√ν_y per unit time while ν_y relaxes to 1."""
    objective, state = start((0.5, 0.4), (1.0, 1.0, 4.0, 4.0))
    settings = FlowSettings(lr=0.1, substeps=4, rule=Rule("rmsprop", BETA, 0.0))
    nu_y, y = 4.0, 0.5
    for _ in range(3):
        p = stable_step(objective, state, settings)
        for _ in range(p.substeps):
            y += 0.1 / p.substeps / math.sqrt(nu_y)
            nu_y += R / p.substeps * (1 - nu_y)
    assert p.critical == 0 and p.sigma_trace == 0
    assert torch.equal(state.weights[:2], torch.zeros(2, dtype=torch.float64))
    assert math.isclose(float(state.weights[2]), y, rel_tol=1e-12)
    assert math.isclose(float(state.nu[2]), nu_y, rel_tol=1e-12)
    assert math.isclose(float(state.nu[0]), (1 - R / 4) ** 12, rel_tol=1e-12)


def test_rule_checks():
    with pytest.raises(ValueError, match="kind"):
        Rule("adam")
    with pytest.raises(ValueError, match="beta2"):
        Rule("rmsprop", 1.0)
