"""Power iteration with deflation against dense ground truth, and against Lanczos."""

import math

import pytest
import torch

from sharpcli.linalg import DenseOperator, lanczos, matrix_with_spectrum, power_iteration
from tests.helpers import CountingOperator as Counting


# well separated positive spectrum: ratio λ₂/λ₁ = 0.5, so power iteration converges quickly
POSITIVE = torch.cat([torch.tensor([40.0, 20.0, 10.0]), torch.linspace(0, 4, 147)])


@pytest.mark.parametrize("dtype,rel,tol", [(torch.float64, 1e-8, 1e-13), (torch.float32, 1e-4, 1e-7)])
def test_matches_dense(dtype, rel, tol):
    op = Counting(matrix_with_spectrum(POSITIVE, seed=0).to(dtype))
    a = op.matrix.double()
    r = power_iteration(op, k=3, tol=tol, max_iter=500)
    evals, evecs = torch.linalg.eigh(a)
    assert torch.allclose(r.eigenvalues, evals.flip(0)[:3], rtol=rel, atol=0)
    assert r.eigenvalues.dtype == torch.float64 and r.eigenvectors.dtype == dtype
    v = r.eigenvectors.double()
    assert torch.all((v * evecs.flip(1)[:, :3]).sum(0).abs() > 1 - 1e-6)
    actual = (a @ v - v * r.eigenvalues).norm(dim=0)
    floor = 50 * torch.finfo(dtype).eps * 40
    assert torch.all((r.residuals - actual).abs() <= 1e-3 * actual + floor)
    assert r.n_matvec == op.calls


def test_spends_more_matvecs_than_lanczos():
    lam = torch.cat([torch.tensor([10.0, 9.5]), torch.linspace(0, 9, 298)])
    op = DenseOperator(matrix_with_spectrum(lam, seed=1))
    power = power_iteration(op, k=1, tol=1e-12, max_iter=2000)
    lz = lanczos(op, k=1, tol=1e-7, max_iter=200)
    assert abs(lz.eigenvalues[0] - 10) <= abs(power.eigenvalues[0] - 10) + 1e-12
    assert lz.residuals[0] <= power.residuals[0]
    assert 3 * lz.n_matvec < power.n_matvec, (lz.n_matvec, power.n_matvec)


def test_largest_magnitude_first_then_sorted():
    """On an indefinite spectrum power iteration finds −50 (largest magnitude), as PyHessian."""
    op = DenseOperator(matrix_with_spectrum(torch.cat([torch.tensor([-50.0, 10.0]),
                                                       torch.linspace(-1, 1, 48)]), seed=2))
    r = power_iteration(op, k=2, tol=1e-10, max_iter=1000)
    assert torch.allclose(r.eigenvalues, torch.tensor([10.0, -50.0], dtype=torch.float64), rtol=1e-6)
    top = lanczos(op, k=1, tol=1e-8)
    assert abs(top.eigenvalues[0] - 10) < 1e-6


def test_fixed_budget_without_residuals():
    """Eigen-SAM's refresh: exactly max_iter matvecs, and the vector does move."""
    a = matrix_with_spectrum(POSITIVE, seed=3)
    op = Counting(a)
    u = torch.linalg.eigh(a).eigenvectors[:, -1]
    v0 = u + 0.3 * torch.randn(150, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = power_iteration(op, k=1, tol=0.0, max_iter=1, v0=v0, residuals=False)
    assert r.n_matvec == op.calls == 1 and math.isnan(r.residuals[0]) and not r.converged[0]
    cos0 = abs(float(v0 @ u)) / float(v0.norm())
    assert abs(float(r.eigenvectors[:, 0] @ u)) > cos0  # one power step later: closer to v₁
    with_res = power_iteration(op, k=1, tol=0.0, max_iter=3, v0=v0)
    assert with_res.n_matvec == 4 and with_res.residuals[0] > 0


def test_warm_start_from_eigenvector():
    a = matrix_with_spectrum(POSITIVE, seed=4)
    u = torch.linalg.eigh(a).eigenvectors[:, -1]
    r = power_iteration(DenseOperator(a), v0=u, tol=1e-10)
    assert r.n_matvec == 2 and r.converged[0] and abs(r.eigenvalues[0] - 40) < 1e-10


def test_bad_arguments():
    op = DenseOperator(torch.eye(3, dtype=torch.float64))
    for kwargs in (dict(k=4), dict(k=0), dict(max_iter=0), dict(v0=torch.zeros(3))):
        with pytest.raises(ValueError):
            power_iteration(op, **kwargs)
