"""`sharpcli.spectrum` says what it does: an explicit signature, every argument honoured or
refused, the model, its buffers and the random number generators left as found, and errors
in the names the caller used."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sharpcli
from sharpcli.errors import SharpError
from tests.cases import BN_MSE, MLP_CE
from tests.helpers import dense_hessian


def test_arguments_it_would_ignore_are_refused():
    model, loss_fn, x, y = MLP_CE()
    for ignored in ("samples", "split", "device", "batch_size", "warm_start"):
        with pytest.raises(TypeError, match=ignored):
            sharpcli.spectrum(model, loss_fn, x, y, **{ignored: 1})


def test_errors_name_the_callers_arguments():
    model, loss_fn, x, y = MLP_CE()
    with pytest.raises(SharpError) as err:
        sharpcli.spectrum(model, loss_fn, x, y, top_k=0)
    assert "top_k" in str(err.value) and "--" not in str(err.value)
    with pytest.raises(SharpError, match="method"):
        sharpcli.spectrum(model, loss_fn, x, y, method="arnoldi")
    with pytest.raises(SharpError, match="^loss_fn must return a scalar"):
        sharpcli.spectrum(model, lambda o, t: o, x, y)


def test_preconditioned_reads_p_from_the_optimizer_given():
    model, loss_fn, x, y = MLP_CE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    rows = sharpcli.spectrum(model, loss_fn, x, y, top_k=2, tol=1e-10, preconditioned=True,
                             optimizer=opt)
    p = torch.cat([((opt.state[q]["exp_avg_sq"] / (1 - 0.999 ** 3)).sqrt() + 1e-8).reshape(-1)
                   * (1 - 0.9 ** 3) for q in model.parameters()])
    d = p.rsqrt()
    truth = torch.linalg.eigvalsh(d[:, None] * dense_hessian(model, loss_fn, x, y) * d[None, :])
    assert [r["value"] for r in rows] == pytest.approx(truth.flip(0)[:2].tolist(), rel=1e-6)


def test_preconditioned_without_a_usable_optimizer_is_refused():
    model, loss_fn, x, y = MLP_CE()
    with pytest.raises(SharpError, match="needs optimizer="):
        sharpcli.spectrum(model, loss_fn, x, y, preconditioned=True)
    with pytest.raises(SharpError, match="only with preconditioned=True"):
        sharpcli.spectrum(model, loss_fn, x, y, optimizer=torch.optim.Adam(model.parameters()))
    with pytest.raises(SharpError, match="no state yet"):
        sharpcli.spectrum(model, loss_fn, x, y, preconditioned=True,
                          optimizer=torch.optim.Adam(model.parameters()))
    with pytest.raises(SharpError, match="not Adam, AdamW or RMSProp"):
        sgd = torch.optim.SGD(model.parameters(), lr=0.1)
        sharpcli.spectrum(model, loss_fn, x, y, preconditioned=True, optimizer=sgd)


def test_the_model_its_buffers_and_the_rng_are_left_as_found():
    model, loss_fn, x, y = BN_MSE()
    model.train()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    sharpcli.spectrum(model, loss_fn, x, y, top_k=2, trace=True, trace_probes=4)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), state)


def test_a_model_that_is_not_a_module_is_refused():
    with pytest.raises(SharpError, match="torch.nn.Module"):
        sharpcli.spectrum(lambda x: x, "mse", torch.ones(2, 2), torch.zeros(2).long())


def test_data_on_the_host_is_measured_on_the_models_device():
    model, loss_fn, x, y = MLP_CE()
    assert isinstance(model, nn.Module)
    rows = sharpcli.spectrum(model, loss_fn, [(x[:10], y[:10]), (x[10:], y[10:])], top_k=1, tol=1e-10)
    truth = torch.linalg.eigvalsh(dense_hessian(model, loss_fn, x, y))[-1]
    assert rows[0]["value"] == pytest.approx(float(truth), rel=1e-8)
