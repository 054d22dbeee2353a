"""Block Lanczos against dense ground truth: clusters, exact repeats (the MSE output block),
warm starts, and the residual certificate (docs/reference/mathematics.md#residuals)."""

import pytest
import torch

from sharpcli.errors import SharpError
from sharpcli.hessian import HessianOperator
from sharpcli.hessian.params import trainable_params
from sharpcli.linalg import DenseOperator, block_lanczos, matrix_with_spectrum
from tests.cases import CLASSES, MLP_MSE
from tests.helpers import CountingOperator as Counting
from tests.helpers import dense_hessian
from tests.linalg.test_lanczos import check_against_dense, make_op

CLUSTER = torch.cat([torch.tensor([10.0, 9.99, 9.98, 9.97, 9.96]), torch.linspace(0, 8, 395)])
# each of the top two values five times over, then a bulk
REPEATS = torch.cat([torch.full((5,), 5.0), torch.full((5,), 4.0), torch.linspace(-1, 3, 290)])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cluster_is_found_whole_in_blocks(dtype):
    op, a = make_op(CLUSTER, dtype, seed=1)
    r = block_lanczos(op, 5, tol={torch.float64: 1e-9, torch.float32: 1e-6}[dtype], max_iter=400)
    assert r.converged.all() and r.n_matvec == op.calls and op.blocks == r.n_matvec // 5
    top = torch.linalg.eigvalsh(a).flip(0)[:5]
    assert torch.allclose(r.eigenvalues, top, rtol={torch.float64: 1e-8, torch.float32: 1e-4}[dtype], atol=0)
    if dtype == torch.float64:  # eigenvectors and residuals too (0.01 gaps are rounding in float32)
        check_against_dense(r, a, 5, dtype)


def test_exact_repeats_are_counted_with_multiplicity():
    op, a = make_op(REPEATS, torch.float64, seed=2)
    five = block_lanczos(op, 5, tol=1e-9, max_iter=300)
    assert torch.allclose(five.eigenvalues, torch.full((5,), 5.0, dtype=torch.float64), atol=1e-9)
    actual = (a @ five.eigenvectors - five.eigenvectors * five.eigenvalues).norm(dim=0)
    assert torch.all(actual < 1e-8) and torch.allclose(five.residuals, actual, atol=1e-12)
    seven = block_lanczos(op, 7, tol=1e-9, max_iter=300)
    assert torch.allclose(seven.eigenvalues, torch.tensor([5.0] * 5 + [4.0] * 2, dtype=torch.float64),
                          atol=1e-9)
    # the eigenvectors of the repeated value span its eigenspace: orthonormal, not copies
    v = five.eigenvectors
    assert torch.allclose(v.T @ v, torch.eye(5, dtype=torch.float64), atol=1e-8)


def test_mse_output_block_repeats_each_eigenvalue_once_per_class():
    """The output layer's block of the MSE Hessian is I_C ⊗ mean([h; 1][h; 1]ᵀ): every
    eigenvalue C times. Blocks of C find all copies of the top one."""
    model, loss_fn, x, y = MLP_MSE()
    params = trainable_params(model)[-2:]  # the output layer: weight and bias
    truth = dense_hessian(model, loss_fn, x, y)[-sum(p.numel() for p in params):, -sum(p.numel() for p in params):]
    top = torch.linalg.eigvalsh(truth).flip(0)[:CLASSES]
    assert torch.allclose(top, top[0].expand(CLASSES), rtol=1e-10)  # the structure itself
    op = HessianOperator(model, loss_fn, x, y, params=params, vectorize=True)
    r = block_lanczos(op, CLASSES, tol=1e-10, max_iter=op.size)
    assert torch.allclose(r.eigenvalues, top, rtol=1e-9, atol=0)
    assert torch.all(r.residuals < 1e-8)


def test_reported_residuals_are_the_certificate():
    op, a = make_op(torch.linspace(-2, 6, 200), torch.float64, seed=3)
    r = block_lanczos(op, 3, block_size=4, tol=1e-4, max_iter=200)
    actual = (a @ r.eigenvectors - r.eigenvectors * r.eigenvalues).norm(dim=0)
    assert torch.allclose(r.residuals, actual, rtol=1e-6, atol=1e-12)
    assert torch.all(r.residuals <= 1e-4 * 6 * (1 + 1e-9))


def test_eigenvalue_criterion_meets_its_relative_accuracy():
    for seed in range(3):
        op, a = make_op(CLUSTER, torch.float64, seed=seed)
        top = torch.linalg.eigvalsh(a).flip(0)[:5]
        r = block_lanczos(op, 5, tol=1e-4, max_iter=400, criterion="eigenvalue", seed=seed)
        assert r.converged.all()
        assert torch.all((top - r.eigenvalues).abs() <= 1e-4 * top), (seed, r.eigenvalues - top)
        res = block_lanczos(op, 5, tol=1e-4, max_iter=400, seed=seed)
        assert r.n_matvec <= res.n_matvec  # the eigenvalues are read long before the vectors


def test_warm_start_gives_the_cold_answer_in_fewer_products():
    op, a = make_op(CLUSTER, torch.float64, seed=4)
    first = block_lanczos(op, 5, tol=1e-8, max_iter=400)
    noise = 1e-4 * torch.randn(400, 400, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    nxt = Counting(a + noise + noise.T)  # the next checkpoint: a slightly different matrix
    cold = block_lanczos(nxt, 5, tol=1e-8, max_iter=400)
    warm = block_lanczos(nxt, 5, tol=1e-8, max_iter=400, v0=first.eigenvectors)
    assert cold.converged.all() and warm.converged.all()
    assert torch.allclose(warm.eigenvalues, cold.eigenvalues, rtol=1e-9, atol=0)
    assert warm.n_matvec <= 0.5 * cold.n_matvec, (warm.n_matvec, cold.n_matvec)


def test_start_block_with_dependent_columns_and_exact_eigenvectors():
    op, a = make_op([5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0], torch.float64)
    u = torch.linalg.eigh(a).eigenvectors[:, -2:]  # eigenvectors of 4 and 5
    r = block_lanczos(op, 2, v0=u, tol=1e-10)
    assert r.n_matvec == 2 and torch.allclose(r.eigenvalues, torch.tensor([5.0, 4.0], dtype=torch.float64))
    # a start block with a repeated column: the missing direction is drawn at random
    r = block_lanczos(op, 3, v0=torch.stack([u[:, 0], u[:, 0], u[:, 1]], dim=1), tol=1e-10)
    check_against_dense(r, a, 3, torch.float64)


@pytest.mark.parametrize("block_size", [1, 2, 3, 5])
def test_exhausted_space_is_exact(block_size):
    op, a = make_op([3.0, -1.0, 2.0, 0.5, 7.0], torch.float64)
    r = block_lanczos(op, 5, block_size=block_size, max_iter=100)
    assert r.n_matvec == 5 and r.converged.all()
    check_against_dense(r, a, 5, torch.float64)


def test_max_iter_bounds_the_products():
    lam = torch.cat([torch.tensor([1.0, 0.999]), torch.linspace(-1, 0.99, 498)])
    op, _ = make_op(lam, torch.float64)
    r = block_lanczos(op, 2, tol=1e-12, max_iter=11)
    assert r.n_matvec == op.calls == 10 and not r.converged.any()  # five whole blocks of 2


def test_seeded_and_leaves_the_global_rng_alone():
    op, _ = make_op(torch.linspace(0, 1, 50), torch.float64)
    state = torch.random.get_rng_state()
    r1, r2 = block_lanczos(op, 2, seed=7), block_lanczos(op, 2, seed=7)
    assert torch.equal(r1.eigenvalues, r2.eigenvalues) and r1.n_matvec == r2.n_matvec
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("kwargs", [dict(k=6), dict(k=0), dict(k=3, max_iter=2), dict(block_size=0),
                                    dict(v0=torch.zeros(5)), dict(v0=torch.ones(4)), dict(tol=-1.0),
                                    dict(criterion="change")])
def test_bad_arguments(kwargs):
    op = DenseOperator(torch.eye(5, dtype=torch.float64))
    with pytest.raises(ValueError) as info:
        block_lanczos(op, **{"k": 2, **kwargs})
    assert isinstance(info.value, SharpError)


def test_non_finite_operator_is_an_error():
    with pytest.raises(ValueError, match="non-finite"):
        block_lanczos(DenseOperator(torch.full((4, 4), float("nan"), dtype=torch.float64)), 2)


def test_matrix_with_spectrum_is_what_it_says():
    a = matrix_with_spectrum(REPEATS, seed=5)
    assert torch.allclose(torch.linalg.eigvalsh(a), REPEATS.double().sort().values, atol=1e-12)


def test_blocks_enough_for_k_even_when_max_iter_cuts_them():
    op, a = make_op(torch.linspace(0, 1, 50), torch.float64)
    r = block_lanczos(op, 5, block_size=2, max_iter=5, tol=0.0)
    assert r.n_matvec == 6 and r.iterations == 3 and len(r.eigenvalues) == 5
