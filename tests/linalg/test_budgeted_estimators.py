"""SLQ density and trace estimates within a memory budget: against dense results, against
their unbudgeted selves, and the memory they allocate, measured."""

import pytest
import torch

from sharpcli.linalg import (DenseOperator, LinalgInputError, control_variate_trace,
                             hutchinson_trace, matrix_with_spectrum, slq_density)
from sharpcli.linalg import density as density_module
from sharpcli.linalg.budget import MemoryBudget
from sharpcli.linalg.results import make_generator
from sharpcli.linalg.trace import MIN_PROBES, unbudgeted_vectors
from tests.linalg.memory import PeakMemory

N = 1000
GEN = torch.Generator().manual_seed(0)
# a bulk of squared Gaussians and ten outliers up to 100, as a trained network's Hessian
SPECTRUM = torch.cat([torch.randn(N - 10, generator=GEN, dtype=torch.float64) ** 2,
                      torch.tensor([12., 15., 20., 25., 30., 40., 50., 60., 80., 100.],
                                   dtype=torch.float64)])
OP = DenseOperator(matrix_with_spectrum(SPECTRUM, seed=0))


def vectors(count: int, size: int = N) -> int:
    return count * size * 8


def smoothed_truth(r) -> torch.Tensor:
    z = (r.grid[:, None] - SPECTRUM[None]) / r.sigma
    d = torch.exp(-0.5 * z ** 2).sum(1)
    return d / torch.trapezoid(d, r.grid)


def l1(r, density) -> float:
    return float(torch.trapezoid((r.density - density).abs(), r.grid))


@pytest.mark.parametrize("budget", [3, 5, 20])
def test_partial_reorthogonalisation_ghosts_and_density(budget):
    full = slq_density(OP, n_runs=10, n_iter=60, seed=1)
    part = slq_density(OP, n_runs=10, n_iter=60, seed=1, max_memory=vectors(budget))
    assert full.reorthogonalization == "full" and full.note == ""
    assert part.reorthogonalization == "partial" and f"last {budget - 1} of 60" in part.note
    assert part.n_matvec == full.n_matvec == 600
    # ghosts: converged 100 appears several times in a run without full reorthogonalisation
    copies = lambda r: int(((r.nodes - 100).abs() < 1e-6).sum(1).max())  # noqa: E731
    assert copies(full) == 1 and copies(part) >= 2
    # ... and share its weight: the mass at 100 is 1/N either way, the density barely moves
    for r in (full, part):
        assert torch.allclose(r.weights.sum(1), torch.ones(10, dtype=torch.float64), atol=1e-10)
    truth = smoothed_truth(full)
    assert l1(part, full.density) < 0.01 and l1(part, truth) < 0.03 and l1(full, truth) < 0.03


@pytest.mark.parametrize("budget", [61, 130])
def test_full_reorthogonalisation_in_groups_is_the_same_density(budget):
    full = slq_density(OP, n_runs=5, n_iter=60, seed=2)
    grouped = slq_density(OP, n_runs=5, n_iter=60, seed=2, max_memory=vectors(budget))
    assert grouped.reorthogonalization == "full" and grouped.note == ""
    assert torch.allclose(grouped.nodes, full.nodes, atol=1e-8)
    assert torch.allclose(grouped.weights, full.weights, atol=1e-8)
    assert torch.allclose(grouped.density, full.density, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("budget", [4, 31, 62])
def test_slq_runs_allocate_within_the_budget(budget):
    gen = make_generator(0, OP.device)
    with PeakMemory() as memory:
        density_module._runs_within(OP, gen, "rademacher", 3, 30, MemoryBudget(vectors(budget)))
    together = max(budget // 31, 1)  # runs side by side: one product each
    assert memory.peak <= vectors(budget + together) + 2 * 30 ** 2 * 8 * together


def test_slq_generous_budget_and_minimum():
    need = density_module.unbudgeted_vectors(4, 40)
    plain = slq_density(OP, n_runs=4, n_iter=40)
    with PeakMemory() as memory:  # a small grid: its smoothing temporaries are not vectors
        held = slq_density(OP, n_runs=4, n_iter=40, grid_size=10, max_memory=vectors(need))
    assert torch.equal(held.nodes, plain.nodes) and torch.equal(held.weights, plain.weights)
    assert memory.peak <= vectors(need)
    with pytest.raises(LinalgInputError, match="minimum of 3 vectors"):
        slq_density(OP, max_memory=vectors(2))


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
@pytest.mark.parametrize("tol, block", [(None, 1), (1e-3, 4)])
def test_traces_in_blocks_are_the_same_estimate(method, tol, block):
    plain = hutchinson_trace(OP, n_probes=45, tol=tol, block=block, method=method, seed=3)
    sketch = 15 if method == "hutch++" else 0
    for budget in (sketch + 2, sketch + 5):  # the sketch whole, beside blocks of 1 and of 4
        with PeakMemory() as memory:
            r = hutchinson_trace(OP, n_probes=45, tol=tol, block=block, method=method, seed=3,
                                 max_memory=vectors(budget))
        assert r.note == "" and r.n_matvec == plain.n_matvec and r.n_probes == plain.n_probes
        assert abs(r.estimate - plain.estimate) < 1e-9 * abs(plain.estimate)
        assert abs(r.stderr - plain.stderr) < 1e-9 * plain.stderr
        product = max(sketch, budget - sketch - 1)  # the widest block of products: AS, or probes
        assert memory.peak <= vectors(budget + product)
    need = unbudgeted_vectors(45 - 2 * sketch, tol, block, MIN_PROBES, sketch)
    held = hutchinson_trace(OP, n_probes=45, tol=tol, block=block, method=method, seed=3,
                            max_memory=vectors(need))
    assert held.estimate == plain.estimate and held.samples == plain.samples


def test_capped_hutch_plus_plus_is_unbiased_with_a_larger_error():
    """Meyer et al.: a sketch of s < m/3 leaves the remainder's variance 2‖A − A_s‖²_F/(m − 2s)."""
    true = float(SPECTRUM.sum())
    full = [hutchinson_trace(OP, n_probes=60, method="hutch++", seed=s) for s in range(12)]
    capped = [hutchinson_trace(OP, n_probes=60, method="hutch++", seed=s, max_memory=vectors(7))
              for s in range(12)]
    assert "sketch of 5 vectors instead of 20" in capped[0].note
    assert all(r.n_matvec == 60 for r in full + capped)
    err = lambda rs: float(torch.tensor([r.estimate - true for r in rs]).pow(2).mean().sqrt())  # noqa: E731
    mean = lambda rs: sum(r.estimate for r in rs) / len(rs)  # noqa: E731
    assert err(full) < err(capped)
    assert abs(mean(capped) - true) < 3 * err(capped) / 12 ** 0.5
    assert all(abs(r.estimate - true) < 5 * r.stderr for r in capped)


def test_control_variate_in_blocks_and_the_minimum():
    base = DenseOperator(torch.diag(torch.diagonal(OP.matrix)))
    form = lambda z: float(z @ (base.matrix @ z))  # noqa: E731
    plain = control_variate_trace(OP, float(base.matrix.trace()), form, n_probes=30, tol=1e-3)
    r = control_variate_trace(OP, float(base.matrix.trace()), form, n_probes=30, tol=1e-3,
                              max_memory=vectors(3))
    assert r.n_probes == plain.n_probes and abs(r.estimate - plain.estimate) < 1e-9 * plain.estimate
    with pytest.raises(LinalgInputError, match="minimum of 2 vectors"):
        hutchinson_trace(OP, max_memory=vectors(1))
    with pytest.raises(LinalgInputError, match="minimum of 3 vectors"):
        hutchinson_trace(OP, method="hutch++", max_memory=vectors(2))
