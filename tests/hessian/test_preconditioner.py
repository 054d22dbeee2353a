"""The preconditioner P of Adam, AdamW and RMSProp read from torch.optim's own state, against
P worked by hand from the same gradients; the update it implies; and the preconditioned
operator against a dense P^{-1/2} H P^{-1/2} (float64)."""

import pytest
import torch

from sharpcli.hessian.params import flatten, trainable_params
from sharpcli.hessian.preconditioner import preconditioner, preconditioner_from_state
from sharpcli.hessian.sharpness import measure_sharpness
from sharpcli.linalg import DenseOperator, DiagonalScaled
from tests.cases import MLP_CE, MLP_MSE
from tests.helpers import dense_hessian

LR, BETAS, EPS, WD = 0.01, (0.8, 0.95), 1e-3, 0.1
STEPS = 4


def train(optimizer_cls, **kwargs):
    """STEPS updates of a float64 MLP, each on a different slice of the examples; returns the
    model, the optimizer, and the flat gradient g_t and weights w_t that each update saw."""
    model, loss_fn, x, y = MLP_MSE()
    params = trainable_params(model)
    opt = optimizer_cls(params, lr=LR, **kwargs)
    grads, weights = [], []
    for t in range(STEPS):
        opt.zero_grad()
        loss_fn(model(x[t:t + 12]), y[t:t + 12]).backward()
        grads.append(flatten([p.grad for p in params]).clone())
        weights.append(flatten([p.detach() for p in params]).clone())
        opt.step()
    return model, opt, grads, weights


def adam_by_hand(grads, weights, coupled_decay: float):
    """P_T = (1 − β₁^T)·(√(v_T/(1 − β₂^T)) + ε) from v_t = β₂v_{t−1} + (1 − β₂)g_t²."""
    b1, b2 = BETAS
    v = torch.zeros_like(grads[0])
    for g, w in zip(grads, weights):
        g = g + coupled_decay * w
        v = b2 * v + (1 - b2) * g ** 2
    t = len(grads)
    return (1 - b1 ** t) * ((v / (1 - b2 ** t)).sqrt() + EPS)


def rmsprop_by_hand(grads, weights, alpha: float, coupled_decay: float):
    """P = √v + ε from v_t = αv_{t−1} + (1 − α)g_t² (no bias correction in RMSProp)."""
    v = torch.zeros_like(grads[0])
    for g, w in zip(grads, weights):
        g = g + coupled_decay * w
        v = alpha * v + (1 - alpha) * g ** 2
    return v.sqrt() + EPS


@pytest.mark.parametrize("name", ["adam", "adamw", "rmsprop"])
def test_preconditioner_equals_hand_computation(name):
    if name == "rmsprop":
        model, opt, grads, weights = train(torch.optim.RMSprop, alpha=0.9, eps=EPS,
                                           weight_decay=WD, momentum=0.5)
        expected = rmsprop_by_hand(grads, weights, 0.9, WD)  # momentum does not enter P
    else:
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        model, opt, grads, weights = train(cls, betas=BETAS, eps=EPS, weight_decay=WD)
        expected = adam_by_hand(grads, weights, WD if name == "adam" else 0.0)  # AdamW: decoupled
    params = trainable_params(model)
    assert torch.allclose(preconditioner(opt, params), expected, rtol=1e-12, atol=0)
    # the same from the state dict a checkpoint holds
    assert torch.allclose(preconditioner_from_state(opt.state_dict(), params), expected,
                          rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["adam", "rmsprop"])
def test_the_last_update_is_minus_lr_p_inverse_times_momentum(name):
    """The P read after T updates is the one update T used: Adam's w_T+1 − w_T = −η P⁻¹m_T,
    RMSProp's −η P⁻¹g_T (no momentum)."""
    if name == "adam":
        model, opt, grads, weights = train(torch.optim.Adam, betas=BETAS, eps=EPS)
    else:
        model, opt, grads, weights = train(torch.optim.RMSprop, alpha=0.9, eps=EPS)
    params = trainable_params(model)
    step = flatten([p.detach() for p in params]) - weights[-1]
    direction = flatten([opt.state[p]["exp_avg"] for p in params]) if name == "adam" else grads[-1]
    assert torch.allclose(step, -LR * direction / preconditioner(opt, params), rtol=1e-10, atol=1e-15)


def test_no_preconditioner_before_the_first_update_nor_for_sgd():
    model, _, _, _ = MLP_MSE()
    params = trainable_params(model)
    assert preconditioner(torch.optim.Adam(params), params) is None
    assert preconditioner_from_state(torch.optim.RMSprop(params).state_dict(), params) is None
    with pytest.raises(ValueError, match="no preconditioner"):
        preconditioner(torch.optim.SGD(params, lr=0.1), params)


def test_parameters_are_matched_by_identity_across_groups():
    """A user's optimizer may group the parameters in another order than the model's."""
    model, opt, _, _ = train(torch.optim.Adam, betas=BETAS, eps=EPS)
    params = trainable_params(model)
    regrouped = torch.optim.Adam([{"params": params[2:]}, {"params": params[:2]}], betas=BETAS,
                                 eps=EPS)
    regrouped.state.update({p: opt.state[p] for p in params})
    assert torch.equal(preconditioner(regrouped, params), preconditioner(opt, params))


def test_diagonal_scaled_is_d_a_d():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(7, 7, generator=gen, dtype=torch.float64)
    a = a + a.T
    d = torch.rand(7, generator=gen, dtype=torch.float64) + 0.5
    v = torch.randn(7, generator=gen, dtype=torch.float64)
    scaled = DiagonalScaled(DenseOperator(a), d)
    assert torch.allclose(scaled.matvec(v), torch.diag(d) @ a @ torch.diag(d) @ v, rtol=1e-14)
    with pytest.raises(ValueError):
        DiagonalScaled(DenseOperator(a), d[:6])


@pytest.mark.parametrize("case", [MLP_MSE, MLP_CE], ids=lambda c: c.name)
def test_preconditioned_eigenvalues_equal_dense(case):
    """λ₁…λ₃ of the operator against eigvalsh of the dense P^{-1/2} H P^{-1/2}, to 1e-8, with
    P an Adam state's (entries spread over orders of magnitude), and they are the
    eigenvalues of P⁻¹H."""
    model, loss_fn, x, y = case()
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=1e-8)
    for _ in range(3):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    p = preconditioner(opt, trainable_params(model))
    h = dense_hessian(model, loss_fn, x, y)
    d = p.rsqrt()
    truth = torch.linalg.eigvalsh(d[:, None] * h * d[None, :]).flip(0)[:3]
    got = measure_sharpness(model, loss_fn, x, y, k=3, tol=1e-11, max_iter=len(p),
                            preconditioner=p)
    assert torch.allclose(got.eigenvalues, truth, rtol=1e-8, atol=0)
    similar = torch.linalg.eigvals(h / p[:, None]).real.sort(descending=True).values[:3]
    assert torch.allclose(similar, truth, rtol=1e-6)
