"""The Gauss–Newton part G of the Hessian against dense ground truth.

The truth is built independently: per-example Jacobians by torch.autograd.functional.jacobian
on the flat parameters and output Hessians Λₙ by torch.autograd.functional.hessian. It is
itself checked against the dense Hessian through the decomposition H = G + R, R the Hessian
of (1/N) Σₙ sₙᵀf(xₙ; w) with sₙ = ∂ℓ/∂f held fixed.
"""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from sharpcli.hessian.ggn import GaussNewtonPart, gauss_newton_separable, output_hessians
from sharpcli.hessian.losses import ce_loss, mse_loss
from sharpcli.hessian.params import flatten
from tests.cases import BN_CASES, BN_MSE, CASES, CNN_CE, CNN_MSE, MLP_CE, MLP_MSE, N
from tests.helpers import dense_hessian


def _flat_fn(model, params, fn):
    """w ↦ fn(outputs of the model with `params` replaced by slices of the flat w)."""
    ids = {id(p): n for n, p in model.named_parameters()}
    names = [ids[id(p)] for p in params]

    def of(w):
        tensors, i = {}, 0
        for name, p in zip(names, params):
            tensors[name] = w[i:i + p.numel()].view(p.shape)
            i += p.numel()
        return fn(functional_call(model, tensors, (fn.x,)))
    return of, flatten([p.detach() for p in params])


def dense_gauss_newton(model, loss_fn, x, y, params=None):
    params = list(params) if params is not None else list(model.parameters())

    def outputs(out):
        return out
    outputs.x = x
    of, w = _flat_fn(model, params, outputs)
    jac = torch.autograd.functional.jacobian(of, w)  # (N, C, P)
    out = of(w).detach()
    lam = torch.stack([torch.autograd.functional.hessian(
        lambda o, i=i: loss_fn(o.unsqueeze(0), y[i:i + 1]), out[i]) for i in range(len(x))])
    return torch.einsum("ncp,ncd,ndq->pq", jac, lam, jac) / len(x)


def dense_remainder(model, loss_fn, x, y):
    out = model(x).detach().requires_grad_(True)
    s = torch.autograd.grad(len(x) * loss_fn(out, y), out)[0]

    def weighted(o):
        return (s * o).sum() / len(x)
    weighted.x = x
    of, w = _flat_fn(model, list(model.parameters()), weighted)
    return torch.autograd.functional.hessian(of, w)


def test_dense_truth_decomposes_the_hessian(case):
    model, loss_fn, x, y = case()
    h = dense_hessian(model, loss_fn, x, y)
    g = dense_gauss_newton(model, loss_fn, x, y)
    r = dense_remainder(model, loss_fn, x, y)
    torch.testing.assert_close(g + r, h, rtol=1e-10, atol=1e-10)
    assert float(r.norm()) > 1e-3 * float(h.norm())  # the check has something to find


@pytest.mark.parametrize("case", CASES + BN_CASES, ids=lambda case: case.name)
def test_trace_and_quadratic_form_match_dense(case):
    model, loss_fn, x, y = case()
    model.eval()  # the mode measured: BatchNorm on its running statistics
    truth = dense_gauss_newton(model, loss_fn, x, y)
    model.train()
    part = GaussNewtonPart(model, loss_fn, x, y, chunk_size=7)
    assert part.trace() == pytest.approx(float(truth.trace()), rel=1e-10)
    v = torch.randn(part.size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert part.quadratic_form(v) == pytest.approx(float(v @ truth @ v), rel=1e-10)
    assert model.training  # left as found


def test_mse_on_a_linear_model_is_all_gauss_newton():
    """f linear in w and a quadratic loss: R = 0, so tr G is the Hessian's own trace."""
    torch.manual_seed(0)
    model = nn.Linear(6, 3).double()
    _, _, x, y = MLP_MSE()
    part = GaussNewtonPart(model, mse_loss, x, y)
    assert part.trace() == pytest.approx(float(dense_hessian(model, mse_loss, x, y).trace()), rel=1e-12)


@pytest.mark.parametrize("case,block", [(MLP_CE, "2"), (MLP_CE, "0"), (CNN_CE, "5"), (CNN_CE, "0")],
                         ids=["mlp-2", "mlp-0", "cnn-5", "cnn-0"])
def test_trace_of_one_parameter_block(case, block):
    model, _, x, y = case()
    params = list(dict(model.named_children())[block].parameters())
    truth = dense_gauss_newton(model, ce_loss, x, y, params)
    part = GaussNewtonPart(model, ce_loss, x, y, params=params, chunk_size=10)
    assert part.trace() == pytest.approx(float(truth.trace()), rel=1e-10)
    v = torch.randn(part.size, dtype=torch.float64)
    assert part.quadratic_form(v) == pytest.approx(float(v @ truth @ v), rel=1e-10)


def test_linear_shortcut_agrees_with_per_example_jacobians():
    model, _, x, y = MLP_CE(seed=3)
    part = GaussNewtonPart(model, ce_loss, x, y, chunk_size=N)
    fast = part._linear_gram(x, part._linear_layers())
    assert fast is not None
    slow = list(part._jacobian_grams(x))
    torch.testing.assert_close(fast[1], torch.cat([g for _, _, g in slow]),
                               rtol=1e-12, atol=1e-12)


class SharedLayer(nn.Module):
    """One nn.Linear applied twice: its weight's per-example gradient is no longer one
    outer product, so the shortcut must step aside."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inner = nn.Linear(6, 6).double()
        self.head = nn.Linear(6, 3).double()

    def forward(self, x):
        return self.head(torch.tanh(self.inner(torch.tanh(self.inner(x)))))


def test_layer_called_twice_falls_back_to_jacobians():
    model = SharedLayer()
    _, _, x, y = MLP_MSE()
    part = GaussNewtonPart(model, mse_loss, x, y)
    assert part._linear_gram(x, part._linear_layers()) is None
    assert part.trace() == pytest.approx(float(dense_gauss_newton(model, mse_loss, x, y).trace()),
                                         rel=1e-10)


def test_train_mode_batchnorm_couples_examples_and_is_refused():
    model, _, x, y = BN_MSE()
    assert not gauss_newton_separable(model, "train")
    assert gauss_newton_separable(model, "eval") and gauss_newton_separable(MLP_MSE().model, "train")
    with pytest.raises(ValueError, match="BatchNorm"):
        GaussNewtonPart(model, mse_loss, x, y, mode="train")


def test_output_hessians_by_hand():
    """MSE (0.5‖f − e_y‖²): Λ = I. Cross-entropy: Λ = diag(p) − ppᵀ."""
    out = torch.tensor([[0.3, -1.0, 2.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([2, 0])
    torch.testing.assert_close(output_hessians(mse_loss, out, y), torch.eye(3).double().expand(2, 3, 3))
    p = torch.softmax(out, dim=1)
    expect = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    torch.testing.assert_close(output_hessians(ce_loss, out, y), expect)
    assert output_hessians(ce_loss, out, y)[1, 0, 0] == pytest.approx(1 / 3 - 1 / 9)


def test_a_stop_request_ends_the_jacobian_pass():
    from sharpcli.errors import Interrupted

    model, _, x, y = CNN_MSE()
    polls = []

    def stop_on_second_chunk():
        polls.append(1)
        return len(polls) >= 2
    part = GaussNewtonPart(model, mse_loss, x, y, chunk_size=5, should_stop=stop_on_second_chunk)
    part._jacobian_rows = lambda xs: 5  # several chunks on this tiny model
    with pytest.raises(Interrupted):
        part.trace()
    assert len(polls) == 2


def test_tied_weights_fall_back_to_jacobians():
    torch.manual_seed(0)
    first, second = nn.Linear(6, 6).double(), nn.Linear(6, 6).double()
    second.weight = first.weight  # one parameter, two modules
    model = nn.Sequential(first, nn.Tanh(), second, nn.Tanh(), nn.Linear(6, 3).double())
    _, _, x, y = MLP_CE()
    part = GaussNewtonPart(model, ce_loss, x, y)
    assert part._linear_layers() is None
    assert part.trace() == pytest.approx(float(dense_gauss_newton(model, ce_loss, x, y).trace()),
                                         rel=1e-10)
