"""The third-derivative product ∇_w(uᵀH(w)v) of HessianOperator against a dense third-derivative
tensor (torch.autograd.functional.jacobian of the dense Hessian, float64) and against central
finite differences of Hessian-vector products: (H(w + εu)v − H(w − εu)v)/2ε = ∇³L[u, v, ·]."""

import pytest
import torch
from torch.func import functional_call, hessian, jacfwd

from sharpcli.hessian import HessianOperator
from sharpcli.hessian.params import flatten, trainable_params, unflatten
from tests.cases import CNN_CE, MLP_MSE, N


def dense_third(model, loss_fn, x, y) -> torch.Tensor:
    """∇³L(w) as a (d, d, d) tensor: the forward-mode Jacobian of the dense Hessian of the
    whole loss, independently of the operator (no chunks, no graph reuse)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p.detach() for p in trainable_params(model)]

    def loss_of(w):
        return loss_fn(functional_call(model, dict(zip(names, unflatten(w, params))), (x,)), y)

    return jacfwd(hessian(loss_of))(flatten(params))


@pytest.fixture(scope="module")
def tiny():
    """A 45-parameter MLP and its 45³ third-derivative tensor (seconds: computed once)."""
    model, loss_fn, x, y = MLP_MSE(hidden=3)
    return model, loss_fn, x, y, dense_third(model, loss_fn, x, y)


def unit_columns(size: int, k: int, seed: int) -> torch.Tensor:
    us = torch.randn(size, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return us / us.norm(dim=0)


@pytest.mark.parametrize("chunk_size", [N, 15], ids=["cached-graph", "chunks-15-8"])
@pytest.mark.parametrize("hvp", HessianOperator.HVP_MODES)
def test_against_a_dense_third_derivative_tensor(tiny, chunk_size, hvp):
    model, loss_fn, x, y, truth = tiny
    op = HessianOperator(model, loss_fn, x, y, chunk_size=chunk_size, hvp=hvp)
    us = unit_columns(op.size, 3, seed=1)
    got = op.third_derivatives(us)
    pairs = [(i, j) for i in range(3) for j in range(i, 3)]
    assert got.shape == (op.size, len(pairs)) and op.n_third == len(pairs)
    for col, (i, j) in enumerate(pairs):
        want = torch.einsum("abc,a,b->c", truth, us[:, i], us[:, j])
        assert torch.allclose(got[:, col], want, atol=1e-10, rtol=1e-8)
    # symmetric in the pair, and one pair alone gives the same column
    assert torch.allclose(op.third_derivative(us[:, 2], us[:, 0]), got[:, 2], atol=1e-12)


@pytest.mark.parametrize("case", [MLP_MSE, CNN_CE], ids=lambda c: c.name)
def test_against_finite_differences_of_hessian_vector_products(case):
    model, loss_fn, x, y = case()
    params = trainable_params(model)
    w = flatten([p.detach() for p in params]).clone()
    op = HessianOperator(model, loss_fn, x, y, chunk_size=15)
    u, v = unit_columns(op.size, 2, seed=2).T
    got = op.third_derivative(u, v)

    def hvp_at(point):
        with torch.no_grad():
            for p, piece in zip(params, unflatten(point, params)):
                p.copy_(piece)
        return HessianOperator(model, loss_fn, x, y, chunk_size=15).matvec(v)

    eps = 1e-4  # central differences: error O(ε²) ≈ 1e-8 relative, rounding ε⁻¹·1e-16
    fd = (hvp_at(w + eps * u) - hvp_at(w - eps * u)) / (2 * eps)
    hvp_at(w)  # the weights put back
    assert torch.allclose(got, fd, atol=1e-7 * float(fd.abs().max()), rtol=1e-6)


def test_a_quadratic_has_no_third_derivative():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1, bias=False).double()
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randn(9, 1, dtype=torch.float64)
    op = HessianOperator(model, lambda out, t: 0.5 * ((out - t) ** 2).sum(1).mean(), x, y)
    assert torch.equal(op.third_derivatives(unit_columns(4, 2, seed=0)), torch.zeros(4, 3,
                                                                                       dtype=torch.float64))


def test_shapes_are_checked():
    model, loss_fn, x, y = MLP_MSE(hidden=3)
    op = HessianOperator(model, loss_fn, x, y)
    with pytest.raises(ValueError, match="operator of size"):
        op.third_derivatives(torch.zeros(op.size + 1, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="pairs must index"):
        op.third_derivatives(torch.zeros(op.size, 2, dtype=torch.float64), [(0, 2)])
