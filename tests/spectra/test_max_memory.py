"""A memory budget through the spectrum (--max-memory, max_memory=): every solver within it,
the same eigenvalues as without, a note saying what it cost, and one line naming the
minimum below it."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import sharpcli
from sharpcli.errors import SharpError
from sharpcli.hessian.losses import mse_loss
from sharpcli.hessian.sharpness import measure_sharpness
from sharpcli.linalg import DenseOperator, matrix_with_spectrum, power_iteration
from sharpcli.spectra.compute import BUDGETED_MAX_ITER
from tests.cases import MLP_MSE
from tests.linalg.memory import PeakMemory
from tests.runners import assert_one_line_error, sharp, train_args

MODEL, LOSS, X, Y = MLP_MSE()   # 155 parameters in float64
VECTOR = 155 * 8                # bytes of one vector of the model's size


def spectrum(**kw):
    return sharpcli.spectrum(MODEL, LOSS, X, Y, **kw)


def values(rows, quantity="eigenvalue", block="all"):
    return torch.tensor([r["value"] for r in rows if r["quantity"] == quantity
                         and r["block"] == block], dtype=torch.float64)


@pytest.mark.parametrize("method, minimum", [("lanczos", 4 + 5), ("block", 4 + 3 * 4),
                                             ("power", 4 + 3)])
def test_eigenvalues_within_budgets_down_to_the_minimum(method, minimum):
    settings = dict(top_k=4, tol=1e-9, method=method, max_iter=4000 if method == "power" else None)
    free = spectrum(**settings)
    for vectors in (minimum, minimum + 6):
        rows = spectrum(**settings, max_memory=vectors * VECTOR)
        torch.testing.assert_close(values(rows), values(free), rtol=1e-7, atol=1e-10)
        assert all(r["converged"] for r in rows)
        if method != "power":  # power iteration keeps what it keeps: nothing to say
            assert "thick-restart Lanczos" in rows[0]["note"] and "max_memory" in rows[0]["note"]
            assert "--max-memory" not in rows[0]["note"]  # the API's names in the API
    with pytest.raises(SharpError) as err:
        spectrum(**settings, max_memory=(minimum - 1) * VECTOR)
    assert f"below the minimum of {minimum} " in str(err.value)
    assert str(err.value).startswith("max_memory ") and "\n" not in str(err.value)


def test_a_budget_that_holds_the_solver_changes_nothing():
    free = spectrum(top_k=3, trace=True, density=True, density_iters=30)
    held = spectrum(top_k=3, trace=True, density=True, density_iters=30, max_memory="1GB")
    assert [r["value"] for r in held] == [r["value"] for r in free]
    assert [r["n_hvp"] for r in held] == [r["n_hvp"] for r in free]
    assert not any(r["note"] for r in held)


def test_trace_and_density_within_a_budget_say_what_it_cost():
    free = spectrum(top_k=1, trace=True, trace_method="hutch++", trace_probes=60,
                    density=True, density_runs=3, density_iters=40)
    tight = spectrum(top_k=1, trace=True, trace_method="hutch++", trace_probes=60,
                     density=True, density_runs=3, density_iters=40, max_memory=6 * VECTOR)
    trace = {r["quantity"]: r for r in tight}
    assert "hutch++ sketch of 4 vectors instead of 20" in trace["trace"]["note"]
    assert "reorthogonalised against its last" in trace["density"]["note"]
    truth = float(torch.trace(torch.autograd.functional.hessian(
        lambda w: _loss_at(w), torch.cat([p.detach().reshape(-1) for p in MODEL.parameters()]))))
    for rows in (free, tight):
        row = next(r for r in rows if r["quantity"] == "trace")
        assert abs(row["value"] - truth) <= 4 * row["residual"]


def _loss_at(w):
    from torch.func import functional_call

    names = [n for n, _ in MODEL.named_parameters()]
    shapes = [p.shape for p in MODEL.parameters()]
    pieces = torch.split(w, [s.numel() for s in shapes])
    return LOSS(functional_call(MODEL, {n: t.view(s) for n, t, s in zip(names, pieces, shapes)},
                                (X,)), Y)


def test_the_default_products_under_a_tight_budget():
    """At the minimum the restarted run needs more than max(100, 2k) products: the default
    bound is BUDGETED_MAX_ITER; --max-iter still bounds it when given, and the note says
    what did not converge."""
    rows = spectrum(top_k=4, tol=1e-10, max_memory=9 * VECTOR)
    assert rows[0]["n_hvp"] > 100 and all(r["converged"] for r in rows)
    short = spectrum(top_k=4, tol=1e-10, max_memory=9 * VECTOR, max_iter=20)
    assert not all(r["converged"] for r in short)
    assert "not converged within max_iter 20 products per run: raise max_iter" in short[0]["note"]
    assert BUDGETED_MAX_ITER >= 10 * 100


def test_bad_budgets_are_refused():
    for bad in ("lots", "1.5G", 0, -3):
        with pytest.raises(SharpError, match="max_memory must be a size"):
            spectrum(max_memory=bad)
    with pytest.raises(SharpError, match="pyhessian cannot do.*max_memory"):
        spectrum(max_memory="1GB", backend="pyhessian")


def test_power_iteration_allocates_within_its_budget():
    a = matrix_with_spectrum(torch.cat([torch.tensor([10.0, 7.0, 5.0]),
                                        torch.linspace(-1, 2, 397, dtype=torch.float64)]), seed=1)
    op, k = DenseOperator(a), 3
    free = power_iteration(op, k, tol=1e-12, max_iter=3000)
    with PeakMemory() as peak:
        held = power_iteration(op, k, tol=1e-12, max_iter=3000, max_memory=(k + 3) * 400 * 8)
    torch.testing.assert_close(held.eigenvalues, free.eigenvalues, rtol=1e-9, atol=0)
    assert held.n_matvec == free.n_matvec
    # the budget's k + 3 vectors and the product's output, nothing of the operator's size more
    assert peak.peak <= (k + 3 + 1) * 400 * 8 + 4096


@pytest.mark.parametrize("k", [1, 3])
def test_measure_sharpness_within_a_budget(k):
    free = measure_sharpness(MODEL, mse_loss, X, Y, k=k, tol=1e-9, max_iter=200)
    held = measure_sharpness(MODEL, mse_loss, X, Y, k=k, tol=1e-9, max_iter=200,
                             max_memory=(k + 3 * k) * VECTOR)
    torch.testing.assert_close(held.eigenvalues, free.eigenvalues, rtol=1e-7, atol=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    sharp(*train_args(root, "tiny", "--steps", "2", "--sharpness-every", "0")).ok()
    return root / "checkpoints" / "tiny"


def test_the_command_prints_the_notes_and_writes_them(run, tmp_path):
    out = tmp_path / "s.csv"
    flags = ["--top-k", "3", "--tol", "1e-7", "--density", "--density-iters", "30",
             "--quiet", "--out", out]
    sharp("spectrum", run, *flags).ok()
    free = pd.read_csv(out, keep_default_na=False)
    vector = 490 * 4  # float32
    printed = sharp("spectrum", run, *flags[:-3], "--max-memory", f"{8 * vector}B",
                    "--out", out).ok().stdout
    held = pd.read_csv(out, keep_default_na=False)
    eig = held[held["quantity"] == "eigenvalue"]
    assert eig["value"].tolist() == pytest.approx(
        free.loc[free["quantity"] == "eigenvalue", "value"].tolist(), rel=1e-5)
    assert (eig["note"].str.contains("--max-memory: thick-restart Lanczos")).all()
    assert (free["note"] == "").all()
    assert "note (all, eigenvalue): --max-memory: thick-restart" in printed
    assert "note (all, density): --max-memory: each Lanczos run" in printed


def test_the_command_names_the_minimum(run):
    line = assert_one_line_error(sharp("spectrum", run, "--top-k", "3", "--max-memory", "10kB"),
                                 2, "--max-memory 10 kB holds 5 vectors", "minimum of 8",
                                 "--no-check-missed: 6")
    assert "490 parameters" in line
    assert_one_line_error(sharp("spectrum", run, "--max-memory", "2M"), 2,
                          "--max-memory must be a size", "'2M'")
