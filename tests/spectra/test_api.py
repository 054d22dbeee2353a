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


@pytest.mark.parametrize("kwargs, words", [
    (dict(block_size=2), "^block_size applies to method block, not method lanczos"),
    (dict(block_size=2, method="power"), "^block_size applies to method block"),
    (dict(check_missed=False, method="block"), "^check_missed applies to method='lanczos'"),
    (dict(check_missed=True, method="power"), "^check_missed applies to method='lanczos'"),
    (dict(trace_probes=10), "^trace_probes applies with trace=True"),
    (dict(trace_method="hutch++"), "^trace_method applies with trace=True"),
    (dict(trace_tol=0.1), "^trace_tol applies with trace=True"),
    (dict(density_runs=2), "^density_runs applies with density=True"),
    (dict(density_iters=20), "^density_iters applies with density=True"),
    (dict(density_grid=50), "^density_grid applies with density=True"),
    (dict(density_sigma=0.1), "^density_sigma applies with density=True"),
    (dict(compile=True, backend="pyhessian"), "^backend pyhessian cannot do compile"),
    (dict(total_terms=23), "^total_terms applies with num_terms"),
])
def test_each_argument_that_would_be_ignored_is_refused_by_name(kwargs, words):
    model, loss_fn, x, y = MLP_CE()
    with pytest.raises(SharpError, match=words):
        sharpcli.spectrum(model, loss_fn, x, y, **kwargs)


def test_chunk_size_with_a_stream_is_refused_by_name():
    model, loss_fn, x, y = MLP_CE()
    with pytest.raises(SharpError, match="^chunk_size batches in-memory examples"):
        sharpcli.spectrum(model, loss_fn, [(x, y)], chunk_size=8)


def test_the_same_arguments_are_read_where_they_apply():
    """The refusals' other side: each argument, given where it applies, changes the rows."""
    model, loss_fn, x, y = MLP_CE()
    block = sharpcli.spectrum(model, loss_fn, x, y, top_k=2, method="block", block_size=1)
    assert block[0]["n_hvp"] != sharpcli.spectrum(model, loss_fn, x, y, top_k=2,
                                                  method="block")[0]["n_hvp"]
    checked, unchecked = (sharpcli.spectrum(model, loss_fn, x, y, top_k=2, check_missed=c)
                          for c in (True, False))
    assert checked[0]["n_hvp"] > unchecked[0]["n_hvp"]
    traced = sharpcli.spectrum(model, loss_fn, x, y, top_k=1, trace=True, trace_probes=7,
                               trace_method="hutchinson", trace_tol=0)
    assert traced[-1]["quantity"] == "trace" and traced[-1]["n_hvp"] == 7


def test_spectrum_rows_are_those_of_the_operator_and_the_solvers():
    """spectrum() is a wrapper: its rows are sharpcli.hessian + eigs, trace and density's
    results, number for number."""
    from sharpcli.spectra.config import NATIVE_TRACE_TOL
    from sharpcli.spectra.problem import implied_trace

    model, loss_fn, x, y = MLP_CE()
    rows = sharpcli.spectrum(model, loss_fn, x, y, top_k=3, trace=True, trace_method="hutchinson",
                             density=True, density_grid=50, seed=2)
    op = sharpcli.hessian(model, loss_fn, x, y)
    top = sharpcli.eigs(op, 3, seed=2)
    eig = [r for r in rows if r["quantity"] == "eigenvalue"]
    assert [r["value"] for r in eig] == top.values.tolist()
    assert [r["residual"] for r in eig] == top.residuals.tolist()
    assert {r["n_hvp"] for r in eig} == {top.products}
    tr = sharpcli.trace(op, tol=NATIVE_TRACE_TOL, seed=2)
    (trace_row,) = [r for r in rows if r["quantity"] == "trace"]
    assert (trace_row["value"], trace_row["residual"], trace_row["n_hvp"]) == (tr.value, tr.stderr,
                                                                              tr.products)
    dens = sharpcli.density(op, grid=50, seed=2)
    (density_row,) = [r for r in rows if r["quantity"] == "density"]
    assert (density_row["value"], density_row["residual"]) == pytest.approx(
        implied_trace(dens, op.size), rel=1e-12)
