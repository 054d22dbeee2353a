"""`sharpcli.eigs`, `sharpcli.trace` and `sharpcli.density` on the public Hessian operator,
against dense Hessians (float64) and against the known spectra of DenseOperators; each
argument a method would ignore is refused by name."""

from __future__ import annotations

import math

import pytest
import torch

import sharpcli
from sharpcli.linalg import DenseOperator, LinalgInputError, matrix_with_spectrum
from tests.cases import MLP_CE
from tests.helpers import dense_hessian


@pytest.fixture(scope="module")
def problem():
    """The public operator of a 155-parameter MLP and its dense Hessian."""
    model, loss_fn, x, y = MLP_CE()
    return sharpcli.hessian(model, loss_fn, x, y), dense_hessian(model, loss_fn, x, y)


@pytest.mark.parametrize("method", ["lanczos", "block", "power"])
def test_eigs_values_vectors_and_residuals_match_the_dense_hessian(problem, method):
    op, truth = problem
    # power iteration separates 0.529 from 0.504 slowly: its test takes the well-separated λ₁
    k = 1 if method == "power" else 3
    result = sharpcli.eigs(op, k, tol=1e-12 if method == "power" else 1e-9, method=method,
                           seed=1)
    exact = torch.linalg.eigvalsh(truth).flip(0)[:k]
    assert result.vectors.shape == (op.size, k) and bool(result.converged.all())
    assert torch.allclose(result.values, exact, rtol=1e-8)
    # each residual as reported is ‖Hv − λv‖ of the vector returned
    actual = (truth @ result.vectors - result.vectors * result.values).norm(dim=0)
    assert torch.allclose(result.residuals, actual, atol=1e-10, rtol=1e-3)
    assert torch.allclose(result.vectors.T @ result.vectors, torch.eye(k, dtype=torch.float64),
                          atol=1e-6)
    assert result.products > 0
    frame = result.to_frame()
    assert list(frame.columns) == ["index", "value", "residual", "converged"]
    assert frame["value"].tolist() == result.values.tolist()


def test_trace_lies_within_its_stated_standard_error(problem):
    op, truth = problem
    exact = float(torch.trace(truth))
    for seed in range(3):
        result = sharpcli.trace(op, probes=400, seed=seed)
        assert result.products == result.probes == 400
        assert abs(result.value - exact) <= 4 * result.stderr  # 4σ: fails 1 time in 16000
    frame = result.to_frame()
    assert frame.loc[0, "value"] == result.value and frame.loc[0, "stderr"] == result.stderr


def test_hutch_plus_plus_with_the_whole_space_is_exact(problem):
    op, truth = problem
    result = sharpcli.trace(op, method="hutch++", probes=3 * op.size)
    assert result.value == pytest.approx(float(torch.trace(truth)), rel=1e-10)
    assert result.stderr == 0


def test_density_puts_its_mass_on_the_spectrum():
    lam = torch.cat([torch.full((50,), -1.0), torch.full((50,), 2.0)])
    op = DenseOperator(matrix_with_spectrum(lam, seed=0))
    result = sharpcli.density(op, runs=4, iters=10, grid=400, sigma=0.02)
    grid, dens = result.grid, result.density
    assert float(torch.trapezoid(dens, grid)) == pytest.approx(1.0, abs=1e-6)
    near = ((grid - (-1)).abs() < 0.2) | ((grid - 2).abs() < 0.2)
    assert float(torch.trapezoid(dens * near, grid)) > 0.99
    # half of the mass at each of the two eigenvalues, to the probes' sampling error
    low = float(torch.trapezoid(dens * (grid < 0.5), grid))
    assert low == pytest.approx(0.5, abs=0.15)
    assert list(result.to_frame().columns) == ["eigenvalue", "density"]


def test_a_budget_that_forces_restarts_says_so_and_converges():
    lam = torch.cat([torch.tensor([10.0, 9.0, 8.0]), torch.linspace(0, 5, 397)])
    op = DenseOperator(matrix_with_spectrum(lam, seed=0))
    result = sharpcli.eigs(op, 3, tol=1e-8, max_memory=20 * 400 * 8)  # 20 vectors
    assert result.values.tolist() == pytest.approx([10.0, 9.0, 8.0], rel=1e-8)
    assert result.restarts > 0 and result.basis_vectors <= 20
    assert result.note.startswith("max_memory: thick-restart Lanczos")
    assert sharpcli.eigs(op, 3, tol=1e-8).note == ""


@pytest.mark.parametrize("kwargs, name", [
    (dict(block_size=2), "block_size"),
    (dict(block_size=2, method="power"), "block_size"),
    (dict(check_missed=False, method="block"), "check_missed"),
    (dict(check_missed=True, method="power"), "check_missed"),
    (dict(method="arnoldi"), "method"),
])
def test_eigs_refuses_what_its_method_would_ignore(kwargs, name):
    op = DenseOperator(torch.diag(torch.arange(10.0, dtype=torch.float64)))
    with pytest.raises(LinalgInputError, match=f"^{name} "):
        sharpcli.eigs(op, 2, **kwargs)


def test_trace_and_density_refuse_bad_arguments_by_name():
    op = DenseOperator(torch.diag(torch.arange(10.0, dtype=torch.float64)))
    with pytest.raises(LinalgInputError, match="^method must be one of"):
        sharpcli.trace(op, method="gauss-newton")
    with pytest.raises(LinalgInputError, match="n_probes|probes"):
        sharpcli.trace(op, probes=0)
    with pytest.raises(LinalgInputError):
        sharpcli.density(op, runs=0)
    assert math.isfinite(sharpcli.trace(op, probes=20).value)


def test_the_lanczos_solvers_refuse_their_shared_arguments_alike():
    """One check (results.check_eigensolver) for single-vector, block and restarted Lanczos:
    each refusal names the Python arguments (the CLI says their flags)."""
    from sharpcli.linalg import block_lanczos, lanczos
    from sharpcli.linalg.restart import restarted_lanczos

    op = DenseOperator(matrix_with_spectrum(torch.linspace(1, 10, 10, dtype=torch.float64)))
    for solve in (lanczos, block_lanczos, lambda *a, **kw: restarted_lanczos(*a, max_memory=10**9, **kw)):
        with pytest.raises(LinalgInputError) as info:
            solve(op, 3, max_iter=2)
        assert info.value.params == ("max_iter", "k") and str(info.value).startswith("max_iter=2 is below k=3")
        with pytest.raises(LinalgInputError) as info:
            solve(op, 1, tol=-1.0)
        assert info.value.param == "tol" and str(info.value) == "tol must be non-negative, got -1.0"
