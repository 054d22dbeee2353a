"""Lanczos within a memory budget (thick restart, single-vector and block; lanczos_top_k)
against dense spectra with clusters and exact repeats, at budgets down to the smallest; the
memory it allocates, measured; and no change at all without a budget or with one that holds
the unbudgeted basis."""

import pytest
import torch

from sharpcli.linalg import (LinalgInputError, block_lanczos, lanczos, lanczos_top_k,
                             matrix_with_spectrum, restarted_lanczos)
from sharpcli.linalg.block_lanczos import unbudgeted_vectors as unbudgeted_block_vectors
from sharpcli.linalg.deflation import unbudgeted_top_k_vectors
from sharpcli.linalg.lanczos import unbudgeted_vectors
from tests.helpers import CountingOperator as Counting
from tests.linalg.memory import PeakMemory
from tests.linalg.test_lanczos import check_against_dense, make_op

N = 300
CLUSTER = torch.cat([torch.tensor([10.0, 9.99, 9.98, 9.97, 9.96]), torch.linspace(0, 8, N - 5)])
# each of the top two values three times over, then a bulk
REPEATS = torch.cat([torch.full((3,), 5.0), torch.full((3,), 4.0), torch.linspace(-1, 3, N - 6)])


def vectors(count: int, dtype=torch.float64, size: int = N) -> int:
    """The bytes of `count` vectors of the operator's size."""
    return count * size * torch.empty((), dtype=dtype).element_size()


def top(a: torch.Tensor, k: int) -> torch.Tensor:
    return torch.linalg.eigvalsh(a).flip(0)[:k]


@pytest.mark.parametrize("budget", [8, 12, 40])  # 8 = k + 2 basis rows + 1 of scratch
def test_single_vector_cluster_at_budgets_down_to_the_minimum(budget):
    op, a = make_op(CLUSTER, torch.float64, seed=1)
    r = lanczos(op, 5, tol=1e-9, max_iter=3000, max_memory=vectors(budget))
    check_against_dense(r, a, 5, torch.float64)  # values, vectors, residuals = ‖Av − θv‖
    assert r.converged.all() and r.n_matvec == op.calls and r.restarts > 0
    assert r.basis_vectors == budget - 1


@pytest.mark.parametrize("budget", [12, 20])  # 12 = k + 2b basis rows + b of scratch
def test_blocks_find_exact_repeats_within_budgets(budget):
    op, a = make_op(REPEATS, torch.float64, seed=2)
    r = block_lanczos(op, 3, block_size=3, tol=1e-9, max_iter=3000, max_memory=vectors(budget))
    assert torch.allclose(r.eigenvalues, torch.full((3,), 5.0, dtype=torch.float64), atol=1e-9)
    # the eigenvectors are some basis of the eigenspace: residuals, not directions
    actual = (a @ r.eigenvectors - r.eigenvectors * r.eigenvalues).norm(dim=0)
    assert torch.all(actual < 1e-8) and torch.allclose(r.residuals, actual, atol=1e-12)
    assert r.restarts > 0 and r.basis_vectors == budget - 3 and r.n_matvec == op.calls
    six = block_lanczos(op, 6, block_size=3, tol=1e-9, max_iter=3000, max_memory=vectors(budget + 3))
    assert torch.allclose(six.eigenvalues, torch.tensor([5.0] * 3 + [4.0] * 3, dtype=torch.float64),
                          atol=1e-9)


@pytest.mark.parametrize("budget", [10, 14, 20])  # 10 = k + 5 for lanczos_top_k with k = 5
def test_top_k_counts_repeats_within_budgets(budget):
    op, a = make_op(REPEATS, torch.float64, seed=2)
    r = lanczos_top_k(op, 5, tol=1e-9, max_iter=3000, max_memory=vectors(budget))
    assert torch.allclose(r.eigenvalues, torch.tensor([5.0] * 3 + [4.0] * 2, dtype=torch.float64),
                          atol=1e-8)
    actual = (a @ r.eigenvectors - r.eigenvectors * r.eigenvalues).norm(dim=0)
    assert torch.all(actual < 1e-7) and torch.allclose(r.residuals, actual, rtol=1e-3, atol=1e-12)
    assert r.converged.all() and r.n_matvec == op.calls and r.basis_vectors <= budget - 1
    v = r.eigenvectors
    assert torch.allclose(v.T @ v, torch.eye(5, dtype=torch.float64), atol=1e-10)


def test_float32_and_the_eigenvalue_criterion():
    lam = torch.cat([torch.tensor([10.0, 9.9, 9.7, 8.0]), torch.linspace(-3, 7, N - 4)])
    for seed in range(3):
        op, a = make_op(lam, torch.float32, seed=seed)
        r = lanczos(op, 3, tol=1e-4, max_iter=2000, seed=seed, max_memory=vectors(8, torch.float32))
        check_against_dense(r, a, 3, torch.float32)
        op, a = make_op(lam, torch.float64, seed=seed)
        r = lanczos(op, 3, tol=1e-4, criterion="eigenvalue", max_iter=2000, seed=seed,
                    max_memory=vectors(8))
        assert r.converged.all() and torch.all((top(a, 3) - r.eigenvalues).abs() <= 1e-4 * top(a, 3))


@pytest.mark.parametrize("solve, budget, product", [
    (lambda op, m: lanczos(op, 3, tol=1e-6, max_iter=400, max_memory=m), 6, 1),
    (lambda op, m: lanczos(op, 5, tol=1e-6, max_iter=400, max_memory=m), 30, 1),
    (lambda op, m: block_lanczos(op, 4, block_size=2, tol=1e-6, max_iter=800, max_memory=m), 10, 2),
    (lambda op, m: block_lanczos(op, 5, block_size=3, tol=1e-6, max_iter=800, max_memory=m), 25, 3),
    (lambda op, m: lanczos_top_k(op, 3, tol=1e-6, max_iter=800, max_memory=m), 8, 1),
])
def test_what_is_allocated_stays_within_the_budget(solve, budget, product):
    """Every tensor allocated inside the solver, measured: at no time more than the budget,
    the product's output and the C × C float64 matrices of the projected problem."""
    n = 1000
    lam = torch.cat([torch.tensor([10.0, 9.0, 8.0, 7.5, 7.0]), torch.linspace(0, 5, n - 5)])
    op = Counting(matrix_with_spectrum(lam, seed=0))
    with PeakMemory() as memory:
        r = solve(op, vectors(budget, size=n))
    small = 3 * 8 * budget ** 2
    assert memory.peak <= vectors(budget + product, size=n) + small, memory.peak / vectors(1, size=n)
    assert memory.largest <= vectors(budget, size=n)
    # the budgeted solve is right, and it says that it held its basis within the budget (an
    # unbudgeted solve reports no basis_vectors: None fails the comparison)
    k = len(r.eigenvalues)
    assert r.converged.all() and torch.allclose(r.eigenvalues, lam[:k].double(), rtol=1e-8)
    assert r.basis_vectors < budget


@pytest.mark.parametrize("method", ["lanczos", "block", "top_k"])
def test_no_budget_or_a_generous_one_changes_nothing(method):
    """None is today's code; a budget that holds today's basis runs it too, the same numbers
    bit for bit, and today's peak fits in it (the unbudgeted_vectors formulas, measured)."""
    n, k, max_iter = 1000, 3, 60
    op = Counting(matrix_with_spectrum(torch.cat([CLUSTER[:5], torch.linspace(0, 8, n - 5)]), seed=0))
    need = {"lanczos": unbudgeted_vectors(max_iter, k),
            "block": unbudgeted_block_vectors(max_iter // k, k, k),
            "top_k": unbudgeted_top_k_vectors(max_iter, k)}[method]
    solve = {"lanczos": lanczos, "block": block_lanczos, "top_k": lanczos_top_k}[method]
    plain = solve(op, k, tol=1e-8, max_iter=max_iter)
    assert plain.basis_vectors is None
    with PeakMemory() as memory:
        held = solve(op, k, tol=1e-8, max_iter=max_iter, max_memory=vectors(need, size=n))
    assert memory.peak <= vectors(need, size=n)
    assert torch.equal(held.eigenvalues, plain.eigenvalues)
    assert torch.equal(held.eigenvectors, plain.eigenvectors) and held.n_matvec == plain.n_matvec
    assert torch.equal(solve(op, k, tol=1e-8, max_iter=max_iter, max_memory=None).eigenvalues,
                       plain.eigenvalues)
    tight = solve(op, k, tol=1e-8, max_iter=max_iter, max_memory=vectors(need - 1, size=n))
    assert tight.basis_vectors is not None


def test_warm_start_and_small_operators():
    op, a = make_op(CLUSTER, torch.float64, seed=1)
    exact = torch.linalg.eigh(a).eigenvectors.flip(1)[:, :3]
    warm = block_lanczos(op, 3, tol=1e-9, v0=exact, max_memory=vectors(12))
    assert warm.n_matvec == 3 and torch.allclose(warm.eigenvalues, top(a, 3), rtol=1e-12)
    # a budget larger than the space: the basis spans it, the answer is exact
    small, a6 = make_op([3.0, -1.0, 2.0, 0.5, 7.0, 6.0], torch.float64)
    r = restarted_lanczos(small, 6, block_size=2, max_memory=vectors(50, size=6))
    assert r.basis_vectors == 6 and r.restarts == 0 and r.converged.all()
    check_against_dense(r, a6, 6, torch.float64)


def test_out_of_products_is_not_converged():
    op, _ = make_op(CLUSTER, torch.float64, seed=1)
    r = lanczos(op, 5, tol=1e-12, max_iter=30, max_memory=vectors(8))
    assert r.n_matvec == 30 and not r.converged.all() and r.restarts > 0


def test_a_budget_below_the_minimum_names_it():
    op, _ = make_op(CLUSTER, torch.float64, seed=1)
    with pytest.raises(LinalgInputError) as err:
        lanczos(op, 5, max_memory=vectors(7))
    assert str(err.value).startswith(f"a budget of 16.8 kB cannot hold the minimum of 8 vectors "
                                     f"({vectors(8)} bytes, 19.2 kB) for this problem")
    with pytest.raises(LinalgInputError, match="minimum of 20 vectors"):
        block_lanczos(op, 5, max_memory=vectors(19))
    with pytest.raises(LinalgInputError, match="minimum of 10 vectors"):
        lanczos_top_k(op, 5, max_memory=vectors(9))
    with pytest.raises(LinalgInputError, match="max_memory must be a size"):
        lanczos(op, 5, max_memory="lots")
