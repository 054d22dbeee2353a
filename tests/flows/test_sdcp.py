"""The central flow's complementarity problem: X ⪰ 0, Y = 𝒜X + B ⪰ 0, ⟨X, Y⟩ = 0. The
native barrier solver against cvxpy (Clarabel) on random instances, the k = 1 closed form
against a hand-worked case, and the conditions themselves."""

import math

import numpy as np
import pytest

from sharpcli.errors import SharpError
from sharpcli.flows.sdcp import congruence, pairs, smat, solve_sdcp, svec


def instance(k: int, seed: int, rank_deficit: int = 0):
    """𝒜 as the central flow builds it: Q = ½ S G S from the Gram matrix G of m = k(k+1)/2
    random vectors (S: 1 on the diagonal pairs, √2 off it), B symmetric with eigenvalues of
    both signs. With `rank_deficit` > 0 the vectors span fewer than m dimensions, so Q is
    singular, and B = 𝒜X₀ + P with P ⪰ 0 of rank 1 keeps the problem bounded (⟨B, D⟩ ≥ 0 on
    every direction D ⪰ 0 that 𝒜 maps to zero)."""
    rng = np.random.default_rng(seed)
    m = k * (k + 1) // 2
    vectors = rng.normal(size=(m - rank_deficit if rank_deficit else m + 3, m))
    s = np.array([1.0 if i == j else math.sqrt(2) for i, j in pairs(k)])
    Q = 0.5 * (vectors * s).T @ (vectors * s)
    B = rng.normal(size=(k, k))
    B = (B + B.T) / 2
    if rank_deficit:
        p = rng.normal(size=k)
        B = smat(Q @ svec(B), k) + np.outer(p, p)
    return Q, B


def objective(Q, B, X):
    x = svec(X)
    return 0.5 * x @ Q @ x + svec(B) @ x


def check_conditions(sol, tol=1e-8):
    scale = 1 + np.abs(sol.Y).max()
    assert np.linalg.eigvalsh(sol.X)[0] >= -1e-12
    assert np.linalg.eigvalsh(sol.Y)[0] >= -tol * scale
    assert abs(sol.gap) <= tol * scale * (1 + np.abs(sol.X).max())


@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", range(4))
def test_native_solver_matches_cvxpy(k, seed):
    Q, B = instance(k, seed)
    ours, theirs = solve_sdcp(Q, B), solve_sdcp(Q, B, solver="cvxpy")
    check_conditions(ours)
    # Q is positive definite here, so X is unique; Clarabel is good to about 1e-7
    assert np.allclose(ours.X, theirs.X, atol=1e-5 * (1 + np.abs(theirs.X).max()))
    assert objective(Q, B, ours.X) <= objective(Q, B, theirs.X) + 1e-8 * (1 + abs(objective(Q, B, theirs.X)))


@pytest.mark.parametrize("seed", range(3))
def test_singular_map_gives_the_same_image(seed):
    """With fewer vectors than pairs, 𝒜 is singular and X need not be unique, but 𝒜X, the
    flow's correction, is; and the objective agrees."""
    k = 3
    Q, B = instance(k, seed, rank_deficit=2)
    ours, theirs = solve_sdcp(Q, B), solve_sdcp(Q, B, solver="cvxpy")
    check_conditions(ours, tol=1e-6)
    assert np.allclose(ours.Y, theirs.Y, atol=1e-5 * (1 + np.abs(theirs.Y).max()))
    assert objective(Q, B, ours.X) <= objective(Q, B, theirs.X) + 1e-7 * (1 + abs(objective(Q, B, theirs.X)))


@pytest.mark.parametrize("factor", [1e-6, 1e6])
def test_scale_invariance(factor):
    """B scaled by c scales X by c (the central flow's B spans many orders of magnitude);
    and B = 0 gives X = 0."""
    Q, B = instance(3, seed=7)
    X = solve_sdcp(Q, B).X
    assert np.allclose(solve_sdcp(Q, factor * B).X, factor * X, atol=1e-8 * factor * np.abs(X).max())
    assert np.array_equal(solve_sdcp(Q, np.zeros((3, 3))).X, np.zeros((3, 3)))


def test_one_direction_in_closed_form():
    """k = 1: x = max(0, −b/q). The eigenvalue would rise (b < 0): x = 2/4 puts it back;
    it would fall (b > 0): no oscillation, x = 0."""
    sol = solve_sdcp(np.array([[4.0]]), np.array([[-2.0]]))
    assert sol.X[0, 0] == 0.5 and sol.Y[0, 0] == 0.0 and sol.newton_steps == 0
    assert solve_sdcp(np.array([[4.0]]), np.array([[3.0]])).X[0, 0] == 0.0
    assert math.isclose(solve_sdcp(np.array([[4.0]]), np.array([[-2.0]]), solver="cvxpy").X[0, 0],
                        0.5, rel_tol=1e-7)


def test_decoupled_directions_are_k_closed_forms():
    """𝒜 diagonal and B diagonal: X is diagonal with the k = 1 answer in each direction."""
    Q = np.diag([2.0, 3.0, 5.0, 1.0, 1.0, 4.0])  # svec order (0,0) (0,1) (0,2) (1,1) (1,2) (2,2)
    B = np.diag([-1.0, 0.5, -8.0])
    sol = solve_sdcp(Q, B)
    assert np.allclose(sol.X, np.diag([0.5, 0.0, 2.0]), atol=1e-8)


def test_zero_map():
    assert np.array_equal(solve_sdcp(np.zeros((3, 3)), np.eye(2)).X, np.zeros((2, 2)))
    with pytest.raises(SharpError, match="negative eigenvalue"):
        solve_sdcp(np.zeros((3, 3)), -np.eye(2))


def test_unbounded_problem_is_refused():
    """𝒜 ignores X₁₁ and B rewards it: no solution (the eigenvalue cannot be held)."""
    with pytest.raises(SharpError, match="no bounded solution"):
        solve_sdcp(np.diag([1.0, 1.0, 0.0]), np.diag([0.0, -1.0]))


def test_bad_shapes_and_solver():
    with pytest.raises(ValueError, match="k×k"):
        solve_sdcp(np.eye(2), np.eye(2))
    with pytest.raises(ValueError, match="solver must be"):
        solve_sdcp(np.eye(3), np.eye(2), solver="mosek")


@pytest.mark.parametrize("k", [1, 2, 4])
def test_svec_coordinates_and_the_barriers_hessian(k):
    """svec is an isometry (⟨X, Y⟩ = svec(X)·svec(Y)), smat its inverse, and `congruence(Z)`
    the map X ↦ ZXZ on svec coordinates: each entry ⟨Eₚ, Z E_q Z⟩ from the basis matrices
    themselves."""
    rng = np.random.default_rng(k)
    X, Y, A = (rng.normal(size=(k, k)) for _ in range(3))
    X, Y, Z = X + X.T, Y + Y.T, A @ A.T + np.eye(k)
    assert svec(X) @ svec(Y) == pytest.approx(np.sum(X * Y), rel=1e-12)
    assert np.allclose(smat(svec(X), k), X, rtol=0, atol=1e-14)
    basis = [smat(e, k) for e in np.eye(len(pairs(k)))]
    expected = np.array([[np.sum(Ep * (Z @ Eq @ Z)) for Eq in basis] for Ep in basis])
    assert np.allclose(congruence(Z), expected, rtol=1e-12, atol=1e-12)


def test_the_last_barrier_stops_where_rounding_does():
    """At the last μ Newton's decrement stalls near 1e-9 (rounding) rather than reaching
    1e-16: the solver stops there (164 steps in all on this instance when it ran on to the
    100-step cap, an X the same to 1e-15; 71 now), the conditions met as before."""
    Q, B = instance(5, 0)
    sol = solve_sdcp(Q, B)
    check_conditions(sol)
    assert sol.newton_steps < 100
    theirs = solve_sdcp(Q, B, solver="cvxpy").X
    assert np.allclose(sol.X, theirs, atol=1e-5 * (1 + np.abs(theirs).max()))
