"""Stochastic Lanczos quadrature against spectra we chose."""

import pytest
import torch

from sharpcli.linalg import DenseOperator, matrix_with_spectrum, slq_density
from tests.helpers import CountingOperator as Counting


def window_mass(result, centre, half_width):
    inside = (result.grid >= centre - half_width) & (result.grid <= centre + half_width)
    return float(torch.trapezoid(result.density[inside], result.grid[inside]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_density_is_a_normalised_density(dtype):
    lam = torch.cat([torch.linspace(-1, 1, 140), torch.tensor([5.0, 10.0])])
    op = Counting(matrix_with_spectrum(lam, seed=0).to(dtype))
    r = slq_density(op, n_runs=3, n_iter=40, grid_size=500)
    assert r.grid.shape == r.density.shape == (500,) and r.grid.dtype == torch.float64
    assert torch.all(r.density >= 0)
    assert abs(float(torch.trapezoid(r.density, r.grid)) - 1) < 1e-12
    assert r.nodes.shape == r.weights.shape == (3, 40)
    assert torch.allclose(r.weights.sum(1), torch.ones(3, dtype=torch.float64), atol=1e-5)
    assert r.n_matvec == op.calls == 120
    # Lanczos finds the extreme eigenvalues: the grid covers them, the nodes reach them
    assert r.grid[0] < -1 and r.grid[-1] > 10 and abs(float(r.nodes.max()) - 10) < 1e-3
    assert abs(r.sigma - 1e-2 * float(r.nodes.max() - r.nodes.min())) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mass_sits_at_eigenvalues_with_multiplicities(dtype):
    # eigenvalues 1, 1, 1, 5, 5, 10: three distinct values, so each run needs 3 matvecs
    op = Counting(matrix_with_spectrum([1.0, 1.0, 1.0, 5.0, 5.0, 10.0], seed=1).to(dtype))
    r = slq_density(op, n_runs=200, n_iter=80, seed=0)
    assert r.nodes.shape[1] == 3 and r.n_matvec == op.calls == 600
    assert torch.allclose(r.nodes, torch.tensor([1.0, 5.0, 10.0], dtype=torch.float64).expand(200, 3),
                          atol=1e-4)
    mean_w = r.weights.mean(0)
    assert torch.allclose(mean_w, torch.tensor([3, 2, 1], dtype=torch.float64) / 6, atol=0.05), mean_w
    for centre, mult in ((1.0, 3), (5.0, 2), (10.0, 1)):
        assert abs(window_mass(r, centre, 0.5) - mult / 6) < 0.05


def test_larger_matrix_mass_at_eigenvalues():
    lam = torch.cat([torch.full((30,), -2.0), torch.full((20,), 3.0), torch.full((10,), 8.0)])
    op = DenseOperator(matrix_with_spectrum(lam, seed=2))
    r = slq_density(op, n_runs=40, sigma=0.02, seed=1)
    assert abs(r.sigma - 0.2) < 1e-12
    for centre, mult in ((-2.0, 30), (3.0, 20), (8.0, 10)):
        assert abs(window_mass(r, centre, 1.0) - mult / 60) < 0.05


def test_full_length_runs_give_the_exact_spectrum():
    lam = torch.linspace(0, 4, 12, dtype=torch.float64)
    op = DenseOperator(matrix_with_spectrum(lam, seed=3))
    r = slq_density(op, n_runs=2, n_iter=80, probe="gaussian")
    assert r.nodes.shape == (2, 12) and r.n_matvec == 24
    assert torch.allclose(r.nodes.sort(dim=1).values, lam.expand(2, 12), atol=1e-10)


def test_padding_of_short_runs_keeps_weights_exact():
    # a probe whose Krylov space is smaller than the others': pad with zero-weight nodes
    op = DenseOperator(torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)))
    r = slq_density(op, n_runs=4, seed=0)
    assert torch.allclose(r.weights.sum(1), torch.ones(4, dtype=torch.float64))
    assert torch.all(r.nodes >= 1 - 1e-12) and torch.all(r.nodes <= 4 + 1e-12)


def test_seeded():
    op = DenseOperator(matrix_with_spectrum(torch.linspace(0, 1, 30), seed=4))
    a, b = slq_density(op, n_iter=10, seed=3), slq_density(op, n_iter=10, seed=3)
    assert torch.equal(a.density, b.density)


def test_bad_arguments():
    op = DenseOperator(torch.eye(4, dtype=torch.float64))
    for kwargs in (dict(n_runs=0), dict(n_iter=0), dict(grid_size=1), dict(sigma=0.0), dict(probe="x")):
        with pytest.raises(ValueError):
            slq_density(op, **kwargs)


def test_runs_advance_together_one_block_per_step():
    op = Counting(matrix_with_spectrum(torch.linspace(-1, 1, 60), seed=5))
    r = slq_density(op, n_runs=4, n_iter=20)
    assert r.n_matvec == op.calls == 80 and op.blocks == 20
