"""Lanczos against dense ground truth: quadratics with chosen spectra."""

import numpy as np
import pytest
import torch

from sharpcli.errors import SharpError
from sharpcli.linalg import DenseOperator, EigenResult, lanczos, matrix_with_spectrum
from sharpcli.linalg.results import error_bounds
from tests.helpers import CountingOperator as Counting


# (dtype, relative eigenvalue error, solver tol)
PRECISION = {torch.float64: (1e-8, 1e-7), torch.float32: (1e-4, 1e-4)}


def make_op(eigenvalues, dtype, seed=0):
    a64 = matrix_with_spectrum(eigenvalues, seed=seed)
    op = Counting(a64.to(dtype))
    return op, op.matrix.double()  # the reference is the operator's own (rounded) matrix


def check_against_dense(result: EigenResult, a: torch.Tensor, k: int, dtype):
    rel, _ = PRECISION[dtype]
    evals, evecs = torch.linalg.eigh(a)
    top, top_vecs = evals.flip(0)[:k], evecs.flip(1)[:, :k]
    assert result.eigenvalues.dtype == torch.float64 and result.eigenvalues.device.type == "cpu"
    assert torch.all(result.eigenvalues[:-1] >= result.eigenvalues[1:])
    assert torch.allclose(result.eigenvalues, top, rtol=rel, atol=0)
    v = result.eigenvectors.double()
    assert result.eigenvectors.shape == (a.shape[0], k) and result.eigenvectors.dtype == dtype
    assert torch.allclose(v.norm(dim=0), torch.ones(k, dtype=torch.float64), atol=1e-6)
    cos = (v * top_vecs).sum(0).abs()
    assert torch.all(cos > 1 - 1e-6), cos
    # reported residuals are the true ‖Av − λv‖, up to O(ε‖A‖) rounding
    actual = (a @ v - v * result.eigenvalues).norm(dim=0)
    floor = 50 * torch.finfo(dtype).eps * evals.abs().max()
    assert torch.all((result.residuals - actual).abs() <= 1e-3 * actual + floor), (result.residuals, actual)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_well_separated(dtype):
    lam = torch.cat([torch.tensor([100.0, 50.0, 25.0, 12.0]), torch.linspace(0, 5, 196)])
    op, a = make_op(lam, dtype)
    r = lanczos(op, k=4, tol=PRECISION[dtype][1], max_iter=150)
    check_against_dense(r, a, 4, dtype)
    assert r.converged.all() and r.n_matvec == op.calls == r.iterations < 150


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_clustered_top(dtype):
    lam = torch.cat([torch.tensor([10.0, 9.99, 9.98, 9.97, 9.96]), torch.linspace(0, 8, 395)])
    op, a = make_op(lam, dtype, seed=1)
    tol = {torch.float64: 1e-9, torch.float32: 1e-6}[dtype]
    r = lanczos(op, k=5, tol=tol, max_iter=250)
    rel = PRECISION[dtype][0]
    top = torch.linalg.eigvalsh(a).flip(0)[:5]
    assert torch.allclose(r.eigenvalues, top, rtol=rel, atol=0)
    if dtype == torch.float64:  # in float32 the 0.01 gaps are too close to rounding for 1e-6
        check_against_dense(r, a, 5, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_large_negative_eigenvalues_are_not_top(dtype):
    lam = torch.linspace(-50, 10, 300)
    op, a = make_op(lam, dtype, seed=2)
    r = lanczos(op, k=3, tol=PRECISION[dtype][1], max_iter=200)
    assert torch.all(r.eigenvalues > 9)
    check_against_dense(r, a, 3, dtype)


def test_exhausted_krylov_space_is_exact():
    op, a = make_op([3.0, -1.0, 2.0, 0.5, 7.0], torch.float64)
    r = lanczos(op, k=5, max_iter=100)
    assert r.iterations == r.n_matvec == 5 and r.converged.all()
    assert torch.allclose(r.eigenvalues, torch.tensor([7.0, 3.0, 2.0, 0.5, -1.0], dtype=torch.float64),
                          rtol=1e-12, atol=1e-12)
    check_against_dense(r, a, 5, torch.float64)


def test_warm_start_cuts_matvecs():
    lam = torch.cat([torch.tensor([20.0, 19.0]), torch.linspace(0, 18, 298)])
    op, a = make_op(lam, torch.float64, seed=3)
    first = lanczos(op, tol=1e-6, max_iter=200)
    # the next training step: a slightly different Hessian
    noise = 1e-3 * torch.randn(300, 300, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    nxt = Counting(a + noise + noise.T)
    cold = lanczos(nxt, tol=1e-6, max_iter=200)
    warm = lanczos(nxt, tol=1e-6, max_iter=200, v0=first.eigenvectors[:, 0])
    assert warm.converged.all() and cold.converged.all()
    assert abs(warm.eigenvalues[0] - cold.eigenvalues[0]) < 1e-8
    assert warm.n_matvec < 0.6 * cold.n_matvec, (warm.n_matvec, cold.n_matvec)


def test_exact_eigenvector_start_and_restart():
    op, a = make_op([5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0], torch.float64)
    u = torch.linalg.eigh(a).eigenvectors[:, -1]
    one = lanczos(op, k=1, v0=u, tol=1e-8)
    assert one.n_matvec == 1 and abs(one.eigenvalues[0] - 5) < 1e-12
    # the Krylov space of u is invariant: k=2 needs a restart with a fresh direction
    two = lanczos(op, k=2, v0=u, tol=1e-10)
    check_against_dense(two, a, 2, torch.float64)


def test_converged_flags_and_max_iter():
    lam = torch.cat([torch.tensor([1.0, 0.999]), torch.linspace(-1, 0.99, 498)])
    op, _ = make_op(lam, torch.float64)
    r = lanczos(op, k=2, tol=1e-12, max_iter=10)
    assert r.iterations == r.n_matvec == 10 and not r.converged.any()
    assert r.residuals.shape == (2,) and torch.all(r.residuals > 1e-12)


def test_seeded_and_reproducible():
    op, _ = make_op(torch.linspace(0, 1, 50), torch.float64)
    r1, r2 = lanczos(op, k=2, seed=7), lanczos(op, k=2, seed=7)
    assert torch.equal(r1.eigenvalues, r2.eigenvalues) and r1.n_matvec == r2.n_matvec
    state = torch.random.get_rng_state()
    lanczos(op, k=2, seed=8)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched


def test_zero_operator():
    r = lanczos(DenseOperator(torch.zeros(4, 4, dtype=torch.float64)), k=2)
    assert torch.all(r.eigenvalues == 0) and r.converged.all()


@pytest.mark.parametrize("kwargs", [dict(k=6), dict(k=0), dict(k=-1), dict(k=3, max_iter=2),
                                    dict(v0=torch.zeros(5)), dict(v0=torch.ones(4)), dict(tol=-1.0)])
def test_bad_arguments(kwargs):
    op = DenseOperator(torch.eye(5, dtype=torch.float64))
    with pytest.raises(ValueError) as info:
        lanczos(op, **kwargs)
    assert isinstance(info.value, SharpError)
    if "k" in kwargs and kwargs["k"] == 6:
        assert "size 5" in str(info.value)


def test_non_finite_operator_is_an_error():
    op = DenseOperator(torch.full((4, 4), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="non-finite"):
        lanczos(op)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_float32():
    lam = torch.cat([torch.tensor([100.0, 50.0, 25.0]), torch.linspace(0, 5, 197)])
    a = matrix_with_spectrum(lam).float()
    r = lanczos(DenseOperator(a.cuda()), k=3, tol=1e-4)
    assert r.eigenvectors.is_cuda and r.eigenvalues.device.type == "cpu"
    check_against_dense(r, a.double(), 3, torch.float32)


def test_error_bounds_by_hand():
    # Ritz values 10, 9, 1 with residuals 0.1, 0.2, 5: eigenvalues lie in [9.8, 10.2]... so
    # the gap from 10 is min(1 − 0.2, 9 − 5) = 0.8 and its bound 0.1²/0.8; from 9: 0.2²/0.9
    theta, res = np.array([10.0, 9.0, 1.0]), np.array([0.1, 0.2, 5.0])
    assert np.allclose(error_bounds(theta, res, 2), [0.01 / 0.8, 0.04 / 0.9])
    # an interval that reaches the value leaves the residual itself; one value, the same
    assert np.allclose(error_bounds(np.array([10.0, 9.5]), np.array([0.1, 0.6]), 1), [0.1])
    assert np.allclose(error_bounds(np.array([3.0]), np.array([0.5]), 1), [0.5])


@pytest.mark.parametrize("spectrum", ["cluster", "negative"])
def test_eigenvalue_criterion_meets_its_relative_accuracy(spectrum):
    lam = {"cluster": torch.cat([torch.tensor([10.0, 9.9, 9.7]), torch.linspace(-3, 9, 297)]),
           "negative": torch.linspace(-50, 10, 300)}[spectrum]
    for seed in range(3):
        op, a = make_op(lam, torch.float64, seed=seed)
        top = torch.linalg.eigvalsh(a).flip(0)[:3]
        r = lanczos(op, k=3, tol=1e-4, criterion="eigenvalue", seed=seed, max_iter=300)
        assert r.converged.all() and torch.all((top - r.eigenvalues).abs() <= 1e-4 * top.abs())
        assert r.n_matvec < lanczos(op, k=3, tol=1e-4, seed=seed, max_iter=300).n_matvec



class Diagonal:
    """diag(d): an operator as long as a large model's parameter vector, in float32."""

    def __init__(self, d: torch.Tensor):
        self.d, self.size, self.dtype, self.device = d, len(d), d.dtype, d.device

    def matvec(self, v):
        return self.d * v

    def matmat(self, vs):
        return self.d[:, None] * vs


@pytest.mark.parametrize("method", ["lanczos", "block"])
def test_vectors_longer_than_wide_take_float64_sums(method):
    """Above 2²⁰ entries float32 sums err by ~√n·ε: α, β and the reorthogonalisation are then
    summed in float64, so the eigenvalues are right to far below the tolerance (float32 sums:
    3e-4 off here, with certificates of 1e-6 for true residuals of 0.01-0.04)."""
    from sharpcli.linalg import block_lanczos
    from sharpcli.linalg.projection import WIDE

    gen = torch.Generator().manual_seed(0)
    top = torch.tensor([48.0, 47.5, 47.0, 30.0, 29.0])
    d = torch.cat([top, 10 * torch.rand(WIDE + 1000, generator=gen)])
    op = Diagonal(d)
    if method == "lanczos":
        res = lanczos(op, 3, tol=1e-6, max_iter=150, seed=0)
    else:
        res = block_lanczos(op, 3, tol=1e-6, max_iter=150, seed=0)
    assert torch.allclose(res.eigenvalues, top[:3].double(), rtol=2e-6, atol=0)
    v = res.eigenvectors.float()
    true = (d[:, None] * v - v * res.eigenvalues.float()[None, :]).norm(dim=0)
    assert (true <= 4e-6 * 48).all()
