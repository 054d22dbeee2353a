"""SAM, ASAM and Eigen-SAM against closed forms on quadratics L = ½wᵀAw, the SAM edge by
hand, and BatchNorm's running statistics through a SAM step."""

import math

import pytest
import torch
from torch import nn

from sharpcli.edges import sam_edge
from sharpcli.hessian import HessianOperator
from sharpcli.linalg import matrix_with_spectrum
from sharpcli.hessian.objective import accumulate_gradient, gradient_vector
from sharpcli.hessian.params import flatten, running_stats_frozen, trainable_params
from sharpcli.training.sam import (EigenState, refresh, refresh_due, asam_perturbation, eigen_sam_perturbation,
                          perturbation, sam_perturbation, sam_step)
from tests.cases import BN_MSE

A = matrix_with_spectrum([5.0, 2.0, 1.0, 0.5, -0.3, 0.1], seed=3)  # 6×6, float64, indefinite
W0 = torch.tensor([0.7, -1.2, 0.4, 2.0, -0.5, 0.9], dtype=torch.float64)


class Quadratic(nn.Module):
    """L(w) = ½wᵀAw whatever the data, with w = (weight.flatten(), bias): a 2×2 "weight
    matrix" and a 2-entry "bias", so that ASAM's per-tensor choice of T shows."""

    def __init__(self, a: torch.Tensor, w0: torch.Tensor):
        super().__init__()
        self.register_buffer("a", a)
        self.weight = nn.Parameter(w0[:4].clone().view(2, 2))
        self.bias = nn.Parameter(w0[4:].clone())

    def forward(self, x):
        w = torch.cat([self.weight.reshape(-1), self.bias])
        value = 0.5 * w @ self.a @ w
        return value.expand(len(x), 2)  # every example sees the same loss


def quad_loss(out, y):
    return out[:, 0].mean()


def _setup(lr=0.1, momentum=0.0, weight_decay=0.0):
    model = Quadratic(A, W0)
    opt = torch.optim.SGD(trainable_params(model), lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    x, y = torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4, dtype=torch.int64)
    return model, opt, x, y


def _loop_step(model, opt, x, y, phase, *, rho, adaptive=False, alpha=0.0, v=None):
    """What the training loop does at a SAM step: g at w, ε from g, the SAM step."""
    params = trainable_params(model)
    accumulate_gradient(model, quad_loss, x, y)
    g = gradient_vector(params)
    eps = perturbation(phase, g, params, rho=rho, adaptive=adaptive, alpha=alpha, v=v)
    sam_step(model, quad_loss, x, y, eps, opt)
    return g, eps


def _w(model):
    return flatten(trainable_params(model)).detach()


# --- the rules on flat vectors, by hand ---------------------------------------------------

def test_sam_perturbation_by_hand():
    eps = sam_perturbation(torch.tensor([3.0, 4.0]), rho=0.5)
    assert torch.allclose(eps, torch.tensor([0.3, 0.4]))
    assert torch.equal(sam_perturbation(torch.zeros(3), 0.5), torch.zeros(3))  # no NaN at g = 0


def test_asam_perturbation_by_hand():
    g, w = torch.tensor([1.0, 1.0]), torch.tensor([2.0, -1.0])
    # T = diag(2, 1): Tg = (2, 1), ‖Tg‖ = √5, T²g = (4, 1)
    eps = asam_perturbation(g, w, rho=1.0)
    assert torch.allclose(eps, torch.tensor([4.0, 1.0]) / math.sqrt(5))
    assert torch.isclose((eps / w.abs()).norm(), torch.tensor(1.0))  # ‖T⁻¹ε‖ = ρ
    # entries outside the mask have T = 1
    eps = asam_perturbation(g, w, rho=1.0, scaled=torch.tensor([False, True]))
    assert torch.allclose(eps, torch.tensor([1.0, 1.0]) / math.sqrt(2))


def test_eigen_sam_perturbation_by_hand():
    g = torch.tensor([2.0, 0.0, 0.0])                   # ĝ = e₁
    v = torch.tensor([-0.6, 0.8, 0.0])                  # gᵀv < 0: s = −1, v⊥ = (0, 0.8, 0)
    eps = eigen_sam_perturbation(g, v, rho=0.1, alpha=0.5)
    assert torch.allclose(eps, 0.1 * torch.tensor([1.0, -0.4, 0.0]))
    # v = ±ĝ: no orthogonal part, plain SAM; α = 0: plain SAM
    assert torch.allclose(eigen_sam_perturbation(g, torch.tensor([-1.0, 0, 0]), 0.1, 0.5),
                          sam_perturbation(g, 0.1))
    assert torch.allclose(eigen_sam_perturbation(g, v, 0.1, 0.0), sam_perturbation(g, 0.1))


# --- one real step on a quadratic, against the closed form --------------------------------

def test_sam_step_closed_form():
    lr, rho = 0.1, 0.05
    model, opt, x, y = _setup(lr)
    _loop_step(model, opt, x, y, "sam", rho=rho)
    g = A @ W0
    expected = W0 - lr * A @ (W0 + rho * g / g.norm())
    assert torch.allclose(_w(model), expected, rtol=0, atol=1e-14)


def test_sam_step_uses_base_momentum_and_weight_decay():
    """Two steps: the base SGD's heavy ball and its weight decay (on w, not w + ε)."""
    lr, rho, beta, wd = 0.1, 0.05, 0.9, 0.01
    model, opt, x, y = _setup(lr, momentum=beta, weight_decay=wd)
    w, buf = W0.clone(), None
    for _ in range(2):
        _loop_step(model, opt, x, y, "sam", rho=rho)
        g = A @ w
        d = A @ (w + rho * g / g.norm()) + wd * w
        buf = d if buf is None else beta * buf + d
        w = w - lr * buf
    assert torch.allclose(_w(model), w, rtol=0, atol=1e-13)


def test_asam_step_closed_form():
    """T = |w| on the 2×2 weight, 1 on the bias."""
    lr, rho = 0.1, 0.3
    model, opt, x, y = _setup(lr)
    _loop_step(model, opt, x, y, "sam", rho=rho, adaptive=True)
    g = A @ W0
    t = torch.cat([W0[:4].abs(), torch.ones(2, dtype=torch.float64)])
    eps = rho * t * t * g / (t * g).norm()
    expected = W0 - lr * A @ (W0 + eps)
    assert torch.allclose(_w(model), expected, rtol=0, atol=1e-14)


def test_eigen_sam_step_closed_form():
    """A refresh of 3 power-iteration steps warm-started from v_prev, then one step."""
    lr, rho, alpha = 0.1, 0.05, 0.4
    model, opt, x, y = _setup(lr)
    v_prev = torch.tensor([1.0, 0.5, -0.2, 0.3, 0.1, -0.4], dtype=torch.float64)
    estimate = refresh(EigenState(v_prev / v_prev.norm()),
                       HessianOperator(model, quad_loss, x, y, mode="train"), iters=3, seed=0)
    v = torch.linalg.matrix_power(A, 3) @ v_prev
    v = v / v.norm()
    assert torch.allclose(estimate.v, v, rtol=0, atol=1e-14)

    _loop_step(model, opt, x, y, "eigen-sam", rho=rho, alpha=alpha, v=estimate.v)
    g = A @ W0
    g_hat = g / g.norm()
    s = torch.sign(g @ v)
    eps = rho * (g_hat + alpha * s * (v - (g_hat @ v) * g_hat))
    expected = W0 - lr * A @ (W0 + eps)
    assert torch.allclose(_w(model), expected, rtol=0, atol=1e-14)


def test_eigen_refresh_due():
    assert refresh_due(EigenState(), 3, every=5)  # no estimate yet: refresh at once
    state = EigenState(torch.ones(3))
    assert [s for s in range(12) if refresh_due(state, s, every=5)] == [0, 5, 10]


# --- the SAM edge (docs/reference/mathematics.md#sam-edge), by hand --------------------------

def test_sam_edge_by_hand_and_its_limit():
    # η = 0.1, ρ = 0.05, ‖g‖ = 1: 8ρ/(η‖g‖) = 4, λ = (1/0.1)(√5 − 1) = 10(√5 − 1)
    lam = sam_edge(0.1, 0.05, 1.0)
    assert lam == pytest.approx(10 * (math.sqrt(5) - 1), rel=1e-12)
    assert 0.1 * lam * (1 + 0.05 * lam / 1.0) == pytest.approx(2.0, rel=1e-12)
    # η = 0.5, ρ = 0.1, ‖g‖ = 0.2: 8ρ/(η‖g‖) = 8, λ = (0.2/0.2)(3 − 1) = 2
    assert sam_edge(0.5, 0.1, 0.2) == pytest.approx(2.0, rel=1e-12)
    for rho in (1e-3, 1e-6, 1e-9):
        assert sam_edge(0.1, rho, 1.0) < 20.0
    assert sam_edge(0.1, 1e-9, 1.0) == pytest.approx(20.0, rel=1e-6)  # → 2/η as ρ → 0


# --- BatchNorm ------------------------------------------------------------------------------

def _buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_bn_running_stats_after_sam_step_equal_one_forward_pass():
    plain, loss_fn, x, y = BN_MSE(n=16)
    plain.train()
    with torch.no_grad():
        plain(x)

    model = BN_MSE(n=16).model  # the same weights as `plain`
    model.train()
    opt = torch.optim.SGD(trainable_params(model), lr=0.1)
    params = trainable_params(model)
    accumulate_gradient(model, loss_fn, x, y)  # the loop's first pass
    eps = perturbation("sam", gradient_vector(params), params, rho=0.5)

    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, _: seen.append((type(m).__name__, m.training,
                                                                   getattr(m, "track_running_stats", None))))
             for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.Dropout))]
    sam_step(model, loss_fn, x, y, eps, opt)
    for h in hooks:
        h.remove()

    after = _buffers(model)
    for k, v in _buffers(plain).items():
        assert torch.equal(after[k], v), k
    # the second pass: dropout on, BatchNorm on batch statistics without tracking
    assert ("Dropout", True, None) in seen and ("BatchNorm1d", True, False) in seen
    assert model.training and model[1].track_running_stats  # restored


def test_running_stats_frozen_restores_on_error():
    model = BN_MSE().model
    with pytest.raises(RuntimeError):
        with running_stats_frozen(model):
            raise RuntimeError("boom")
    assert model[1].track_running_stats


@pytest.mark.parametrize("train_mode", [True, False])
def test_eigen_refresh_leaves_bn_and_mode_alone(train_mode):
    model, loss_fn, x, y = BN_MSE(n=16)
    model.train()
    with torch.no_grad():
        model(x)  # non-trivial running statistics
    model.train(train_mode)
    before = _buffers(model)
    v = refresh(EigenState(), HessianOperator(model, loss_fn, x, y, mode="train"),
                iters=4, seed=0).v
    assert v.shape == (sum(p.numel() for p in trainable_params(model)),)
    assert torch.isclose(v.norm(), torch.tensor(1.0, dtype=v.dtype))
    for k, b in _buffers(model).items():
        assert torch.equal(b, before[k]), k
    assert all(m.training == train_mode for m in model.modules())
    assert model[1].track_running_stats
