"""The integrated central and stable flows against their closed forms on the two-valley loss
of tests/flows/toy.py (float64): before the edge both are gradient flow, y(t) = y(0) + ηt;
after it the central flow holds each valley's curvature at 2/η with the oscillation σᵢ² the
closed form gives, one valley after the other, while the stable flow's sharpness keeps rising."""

import math

import pytest
import torch

from sharpcli.flows.central import (FlowSettings, FlowState, Objective, integrate,
                                    stable_substeps)
from tests.flows import toy

STEPS = 20


@pytest.fixture(scope="module", params=[False, True], ids=["full-solves", "refreshes"])
def trajectory(request):
    """The flows with block Lanczos and new third-derivative products at every substep, and
    the faster integrator (Rayleigh–Ritz refreshes and carried-over products after a step's
    first substep)."""
    model, call, data = toy.problem()
    objective = Objective(model, call, data)
    settings = FlowSettings(lr=toy.LR, substeps=4, refresh=request.param)
    central, stable = FlowState(objective.weights()), FlowState(objective.weights())
    rows = []
    for t, c, s in integrate(objective, settings, STEPS, central, stable):
        rows.append((t, c, s, central.weights.clone(), stable.weights.clone()))
    return rows, request.param


def gradient_flow_y(t: int) -> torch.Tensor:
    return torch.tensor([y0 + toy.LR * t for y0 in toy.Y0], dtype=torch.float64)


def test_both_flows_are_gradient_flow_before_the_edge(trajectory):
    for t, c, s, wc, ws in trajectory[0]:
        if t + 1 >= toy.crossing(0):  # the weights after this step may have met the edge
            break
        assert torch.allclose(wc[2:], gradient_flow_y(t + 1), atol=1e-12)
        assert torch.equal(wc, ws) and c.critical == 0 and c.sigma_trace == 0
        assert c.predicted_loss == c.train_loss == s.train_loss


def test_first_valley_held_then_both(trajectory):
    edge = 2 / toy.LR
    rows, refresh = trajectory
    # the carried-over products hold the closed forms to 1e-6 rather than 1e-9
    rel = 1e-6 if refresh else 1e-9
    for t, c, s, wc, ws in rows:
        x, y = wc[:2], wc[2:]
        if toy.crossing(0) + 1 <= t < toy.crossing(1) - 1:
            # valley 0 held at 2/η, valley 1 still on gradient flow (y measured after step t)
            assert c.critical == 1 and math.isclose(c.sharpness, edge, rel_tol=rel)
            assert math.isclose(float(y[0]), toy.held(0), rel_tol=rel)
            assert math.isclose(float(y[1]), toy.Y0[1] + toy.LR * (t + 1), rel_tol=1e-12)
        if t >= toy.crossing(1) + 2:
            assert c.critical == 2
            assert c.eigenvalues[:2] == pytest.approx([edge, edge], rel=rel)
            assert torch.allclose(y, torch.tensor([toy.held(0), toy.held(1)], dtype=torch.float64),
                                  rtol=rel)
            assert torch.allclose(x, torch.zeros(2, dtype=torch.float64), atol=1e-12)
            sigma = toy.sigma2(0) + toy.sigma2(1)
            assert math.isclose(c.sigma_trace, sigma, rel_tol=100 * rel)
            predicted = -toy.held(0) - toy.held(1) + 0.5 * edge * sigma
            assert math.isclose(c.predicted_loss, predicted, rel_tol=rel)
            # 3 pairs each substep; or at the first, then D(X) alone: 2 products along X's
            # eigenvectors
            assert c.n_third == (3 + 3 * 2 if refresh else 3 * 4) if t < STEPS else 3


def test_stable_flow_keeps_sharpening(trajectory):
    trajectory = trajectory[0]
    for t, c, s, wc, ws in trajectory:
        y = gradient_flow_y(t)
        lam = max(ci * float(yi) ** 2 for ci, yi in zip(toy.C, y))
        assert math.isclose(s.sharpness, lam, rel_tol=1e-9)
        assert s.substeps == (0 if t == STEPS else stable_substeps(lam, FlowSettings(lr=toy.LR)))
        assert torch.allclose(ws[2:], gradient_flow_y(min(t + 1, STEPS)), atol=1e-12)
    # the stable flow tracks two eigenpairs however many pass the threshold; the central flow
    # one more than its critical count
    assert len(trajectory[-1][2].eigenvalues) == 2 and len(trajectory[-1][1].eigenvalues) == 3
    # step 19: λ₁ = 5.4² = 29.16 (valley 1: 1.5·4.4² = 29.04), 4·ηλ₁/2 = 5.83: 6 substeps
    assert trajectory[-2][2].substeps == 6


def test_sdcp_solvers_agree_on_the_flow():
    """The same steps with cvxpy solving every complementarity problem."""
    model, call, data = toy.problem()
    objective = Objective(model, call, data)
    ours, theirs = (FlowState(objective.weights()) for _ in range(2))
    for sdcp, state in (("native", ours), ("cvxpy", theirs)):
        settings = FlowSettings(lr=toy.LR, sdcp=sdcp)
        for t, c, s in integrate(objective, settings, 14, state, FlowState(objective.weights())):
            pass
    assert torch.allclose(ours.weights, theirs.weights, rtol=1e-6)
