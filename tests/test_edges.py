"""The stability edges (docs/reference/mathematics.md#edges), checked against values worked by hand."""

import math

import pytest
import torch

from sharpcli.edges import EdgeRule, adam_edge, gd_edge, rmsprop_edge, sam_edge


# --- GD edge (Cohen et al. 2021) ---------------------------------------------------------

def test_gd_edge_plain():
    # 2/η: η = 0.1 → 20, η = 0.05 → 40, η = 2/3 → 3
    assert gd_edge(0.1) == pytest.approx(20.0)
    assert gd_edge(0.05) == pytest.approx(40.0)
    assert gd_edge(2 / 3) == pytest.approx(3.0)


def test_gd_edge_heavy_ball():
    # (2 + 2β)/η with β = 0.9, η = 0.1: 3.8 / 0.1 = 38
    assert gd_edge(0.1, momentum=0.9) == pytest.approx(38.0)
    # β = 0.5, η = 0.01: 3 / 0.01 = 300
    assert gd_edge(0.01, momentum=0.5) == pytest.approx(300.0)


def test_gd_edge_nesterov():
    # (2 + 2β)/(η(1 + 2β)) with β = 0.9, η = 0.1: 3.8 / (0.1 · 2.8) = 13.571428...
    assert gd_edge(0.1, momentum=0.9, nesterov=True) == pytest.approx(3.8 / 0.28)
    assert gd_edge(0.1, momentum=0.9, nesterov=True) == pytest.approx(13.5714285714)
    # β = 0.5, η = 0.1: 3 / (0.1 · 2) = 15
    assert gd_edge(0.1, momentum=0.5, nesterov=True) == pytest.approx(15.0)
    # Nesterov without momentum is plain GD
    assert gd_edge(0.1, momentum=0.0, nesterov=True) == pytest.approx(20.0)


def test_gd_edge_rejects_non_positive_lr():
    with pytest.raises(ValueError):
        gd_edge(0.0)
    with pytest.raises(ValueError):
        gd_edge(-0.1)


# --- SAM edge (Long & Bartlett 2024) -----------------------------------------------------

def _sam_equation(lr, rho, grad_norm, lam):
    """ηλ(1 + ρλ/‖g‖): equals 2 at the SAM edge."""
    return lr * lam * (1 + rho * lam / grad_norm)


def test_sam_edge_worked_example():
    # η = 0.1, ρ = 0.05, ‖g‖ = 0.3:
    #   8ρ/(η‖g‖) = 0.4 / 0.03 = 13.3333
    #   √(1 + 13.3333) = √14.3333 = 3.785939
    #   ‖g‖/(2ρ) = 0.3 / 0.1 = 3
    #   λ = 3 · (3.785939 − 1) = 8.357817
    # check: ηλ = 0.8357817, ρλ/‖g‖ = 1.3929695, 0.8357817 · 2.3929695 = 2.0000
    lam = sam_edge(0.1, 0.05, 0.3)
    assert lam == pytest.approx(3 * (math.sqrt(1 + 0.4 / 0.03) - 1))
    assert lam == pytest.approx(8.357817, abs=1e-6)
    assert _sam_equation(0.1, 0.05, 0.3, lam) == pytest.approx(2.0)


def test_sam_edge_exact_square_roots():
    # Choose 8ρ/(η‖g‖) = 8, so √(1 + 8) = 3 and λ = (‖g‖/(2ρ)) · 2 = ‖g‖/ρ:
    # η = 0.1, ‖g‖ = 0.5, ρ = 0.05 → λ = 10; check 0.1 · 10 · (1 + 0.05 · 10 / 0.5) = 1 · 2 = 2
    assert sam_edge(0.1, 0.05, 0.5) == pytest.approx(10.0)
    # Choose 8ρ/(η‖g‖) = 3, so √4 = 2 and λ = ‖g‖/(2ρ):
    # η = 0.1, ‖g‖ = 1, ρ = 0.0375 → λ = 13.333; check 0.1 · 13.333 · (1 + 0.5) = 2
    assert sam_edge(0.1, 0.0375, 1.0) == pytest.approx(40 / 3)


@pytest.mark.parametrize("lr,rho,grad_norm", [(0.1, 0.05, 0.3), (0.01, 0.1, 2.0),
                                              (1.0, 1e-3, 1e-2), (0.05, 0.5, 5.0)])
def test_sam_edge_solves_its_equation(lr, rho, grad_norm):
    lam = sam_edge(lr, rho, grad_norm)
    assert lam > 0
    assert _sam_equation(lr, rho, grad_norm, lam) == pytest.approx(2.0, rel=1e-12)


def test_sam_edge_tends_to_gd_edge_as_rho_vanishes():
    assert sam_edge(0.1, 0.0, 0.3) == 20.0  # ρ = 0 is plain GD
    # ρ → 0: put λ = 2/η − δ into ηλ(1 + ρλ/‖g‖) = 2; to first order in ρ,
    # δ = (2/η)² ρ/‖g‖ = 400 ρ / 0.3 here. The stable form keeps this deficit exact even
    # for ρ = 1e-12, where the textbook form would lose it to cancellation.
    for rho in (1e-6, 1e-9, 1e-12):
        assert 20.0 - sam_edge(0.1, rho, 0.3) == pytest.approx(400 * rho / 0.3, rel=1e-3)
    # and approaches it from below, monotonically
    values = [sam_edge(0.1, rho, 0.3) for rho in (0.5, 0.1, 0.05, 0.01, 1e-3)]
    assert values == sorted(values)
    assert all(v < 20.0 for v in values)


def test_sam_edge_below_gd_edge_for_positive_rho():
    for lr in (0.01, 0.1, 1.0):
        for rho in (0.01, 0.05, 0.2):
            for grad_norm in (0.01, 0.3, 10.0):
                assert 0 < sam_edge(lr, rho, grad_norm) < gd_edge(lr)


def test_sam_edge_monotone_in_grad_norm():
    # A larger ‖g‖ makes the normalised perturbation relatively smaller: the edge rises
    # towards 2/η; a vanishing gradient pushes it to 0.
    norms = [1e-4, 1e-3, 0.01, 0.1, 0.3, 1.0, 10.0, 1e3]
    values = [sam_edge(0.1, 0.05, g) for g in norms]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(20.0, rel=1e-3)
    assert sam_edge(0.1, 0.05, 0.0) == 0.0


def test_sam_edge_rejects_non_positive_lr():
    with pytest.raises(ValueError):
        sam_edge(0.0, 0.05, 0.3)


# --- Adaptive edges (Cohen et al. 2022) --------------------------------------------------

def test_adam_edge_worked_examples():
    # (2 + 2β₁)/((1 − β₁)η): β₁ = 0.9, η = 1e-3 → 3.8 / (0.1 · 1e-3) = 38000 (38/η)
    assert adam_edge(1e-3, 0.9) == pytest.approx(38000.0)
    # β₁ = 0.5, η = 0.01: 3 / (0.5 · 0.01) = 600
    assert adam_edge(0.01, 0.5) == pytest.approx(600.0)
    # β₁ = 0 (RMSProp-like Adam without momentum): 2/η
    assert adam_edge(0.01, 0.0) == pytest.approx(200.0)
    with pytest.raises(ValueError):
        adam_edge(0.0, 0.9)


def test_rmsprop_edge_worked_examples():
    # 2/η, and (2 + 2μ)/η with momentum μ: η = 0.01, μ = 0.9 → 3.8 / 0.01 = 380
    assert rmsprop_edge(0.01) == pytest.approx(200.0)
    assert rmsprop_edge(0.01, 0.9) == pytest.approx(380.0)


def test_edge_rule_reads_torch_optimizers():
    params = [torch.nn.Parameter(torch.zeros(3))]
    adam = EdgeRule.from_param_groups(torch.optim.AdamW(params, lr=1e-3, betas=(0.8, 0.99)).param_groups)
    # (2 + 1.6)/(0.2 · 1e-3) = 18000; the GD edge 2/η stays in its own column
    assert adam.at(1e-3, 0.5, False) == {"gd_edge": pytest.approx(2000.0), "sam_edge": None,
                                         "adaptive_edge": pytest.approx(18000.0)}
    rms = EdgeRule.from_param_groups(torch.optim.RMSprop(params, lr=0.01, momentum=0.5).param_groups)
    assert rms.at(0.01, 0.5, False)["adaptive_edge"] == pytest.approx(300.0)
    sgd = EdgeRule.from_param_groups(torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True).param_groups)
    assert sgd.at(0.1, 0.5, False) == {"gd_edge": pytest.approx(3.8 / 0.28), "sam_edge": None,
                                       "adaptive_edge": None}
    assert EdgeRule(preconditioner="adam").at(0.0, None, False)["adaptive_edge"] is None
