"""`sharpcli.hessian`, the public operator: its products against dense Hessians
(torch.autograd.functional.hessian, float64), scipy's view of it, and the arguments it refuses
by their Python names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import eigsh

import sharpcli
from sharpcli.errors import SharpError
from tests.cases import MLP_CE, MLP_MSE
from tests.helpers import dense_hessian


def test_products_with_a_vector_and_a_block_equal_the_dense_hessian(case):
    model, loss_fn, x, y = case()
    truth = dense_hessian(model, loss_fn, x, y)
    op = sharpcli.hessian(model, loss_fn, x, y, chunk_size=15)  # chunks of 15 and 8
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(op.size, generator=gen, dtype=torch.float64)
    block = torch.randn(op.size, 4, generator=gen, dtype=torch.float64)
    assert (op.size, op.dtype, op.device) == (truth.shape[0], torch.float64, torch.device("cpu"))
    assert torch.allclose(op @ v, truth @ v, atol=1e-10, rtol=1e-8)
    assert torch.allclose(op @ block, truth @ block, atol=1e-10, rtol=1e-8)
    assert op.n_products == 5


def test_a_stream_of_batches_gives_the_same_operator():
    model, loss_fn, x, y = MLP_MSE()
    truth = dense_hessian(model, loss_fn, x, y)
    batches = [(x[:10], y[:10]), (x[10:], y[10:])]  # unequal: 10 and 13 examples
    op = sharpcli.hessian(model, loss_fn, batches)
    v = torch.linspace(-1, 1, op.size, dtype=torch.float64)
    assert torch.allclose(op @ v, truth @ v, atol=1e-10, rtol=1e-8)


def test_params_give_that_diagonal_block():
    model, loss_fn, x, y = MLP_CE()
    truth = dense_hessian(model, loss_fn, x, y)
    last = list(model.parameters())[-2:]  # the output layer's weight and bias: the last 27
    op = sharpcli.hessian(model, loss_fn, x, y, params=last)
    assert op.size == 27
    assert torch.allclose(op.dense(), truth[-27:, -27:], atol=1e-10, rtol=1e-8)


def test_scipy_eigsh_on_to_scipy_agrees_with_eigs():
    model, loss_fn, x, y = MLP_CE()
    op = sharpcli.hessian(model, loss_fn, x, y)
    scipy_op = op.to_scipy()
    assert scipy_op.shape == (op.size, op.size) and scipy_op.dtype == np.float64
    values, vectors = eigsh(scipy_op, k=3, which="LA", tol=1e-12)
    ours = sharpcli.eigs(op, 3, tol=1e-10)
    assert np.allclose(values[::-1], ours.values.numpy(), rtol=1e-8, atol=1e-12)
    overlap = np.abs(vectors[:, ::-1].T @ ours.vectors.numpy()).diagonal()
    assert np.allclose(overlap, 1.0, atol=1e-6)


def test_float32_models_go_through_scipy_in_float64():
    model, loss_fn, x, y = MLP_CE(dtype=torch.float32)
    op = sharpcli.hessian(model, loss_fn, x, y)
    out = op.to_scipy() @ np.ones(op.size)
    assert out.dtype == np.float64
    assert np.allclose(out, (op @ torch.ones(op.size)).double().numpy())


def test_the_product_kind_is_checked_by_name():
    model, loss_fn, x, y = MLP_CE()
    exact = sharpcli.hessian(model, loss_fn, x, y, hvp="exact")
    auto = sharpcli.hessian(model, loss_fn, x, y)  # an unsharded model: exact products
    v = torch.ones(exact.size, dtype=torch.float64)
    assert torch.equal(exact @ v, auto @ v)
    with pytest.raises(SharpError, match="^hvp must be one of .*'double-backward'"):
        sharpcli.hessian(model, loss_fn, x, y, hvp="double-backward")


@pytest.mark.parametrize("argument, value, words", [
    ("chunk_size", 8, "chunk_size batches in-memory examples"),
    ("total_terms", 23, None),
])
def test_arguments_a_stream_or_tensors_would_ignore_are_refused(argument, value, words):
    model, loss_fn, x, y = MLP_CE()
    if argument == "chunk_size":  # a stream comes in its own batches
        with pytest.raises(SharpError, match=f"^{words}"):
            sharpcli.hessian(model, loss_fn, [(x, y)], chunk_size=value)
    else:  # in-memory examples are counted as examples: a total would be overwritten
        with pytest.raises(SharpError, match="^total_terms applies with num_terms"):
            sharpcli.hessian(model, loss_fn, x, y, total_terms=value)


def test_bad_arguments_are_one_line_naming_them():
    model, loss_fn, x, y = MLP_CE()
    other = torch.nn.Linear(2, 2).double()
    for kwargs, words in [
        (dict(params=[other.weight]), "^params must be parameters of model"),
        (dict(params=[]), "^params is empty"),
        (dict(mode="test"), "^mode must be one of"),
        (dict(loss_fn=None), "^give loss_fn or batch_loss"),
    ]:
        with pytest.raises(SharpError, match=words):
            sharpcli.hessian(model, kwargs.pop("loss_fn", loss_fn), x, y, **kwargs)
    with pytest.raises(SharpError, match="^model must be a torch.nn.Module"):
        sharpcli.hessian("mlp", loss_fn, x, y)
    with pytest.raises(SharpError, match="^loss_fn must return a scalar"):
        sharpcli.hessian(model, lambda o, t: o, x, y)


def test_the_model_is_left_as_found():
    model, loss_fn, x, y = MLP_CE()
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    op = sharpcli.hessian(model, loss_fn, x, y)
    op @ torch.ones(op.size, dtype=torch.float64)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("hvp, product", [("exact", "double-backward"), ("auto", "double-backward"),
                                          ("finite-difference", "finite-difference")])
def test_the_product_kind_is_chosen_by_hvp(hvp, product):
    """hvp= picks the product (auto: exact for an unsharded model), and each is Hv of the
    dense float64 Hessian: the finite differences to their step's truncation error."""
    model, loss_fn, x, y = MLP_CE()
    op = sharpcli.hessian(model, loss_fn, x, y, hvp=hvp)
    assert op.hvp == product
    v = torch.randn(op.size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    truth = dense_hessian(model, loss_fn, x, y) @ v
    rel = 1e-12 if product == "double-backward" else 1e-6
    assert torch.linalg.norm(op @ v - truth) <= rel * torch.linalg.norm(truth)
    assert (op.note is None) == (product == "double-backward")
