"""Trace and density of an operator whose vectors are split over processes already (FSDP2's
shards: linalg/shard.py LocalShards). Here W processes are threads, each holding a slice of
the coordinates of one dense matrix's space and drawing its slice of the same whole random
vector: the estimates must be those of one process with the same seed (to rounding), and
every process must get the same numbers. tests/hessian/test_fsdp.py measures the same on a
model sharded by FSDP2 under torchrun."""

from __future__ import annotations

import pytest
import torch

from sharpcli.linalg import DenseOperator, matrix_with_spectrum
from sharpcli.linalg.api import density, eigs, trace
from sharpcli.linalg.results import LinalgInputError, random_vector
from sharpcli.linalg.shard import Shards
from sharpcli.linalg.trace import control_variate_trace
from tests.linalg.test_shard import on_threads

N = 120


class Slice:
    """Process `rank`'s coordinates [lo, hi) of A's space: a product takes and returns that
    slice (the gather inside stands for what FSDP2's collectives do)."""

    def __init__(self, a: torch.Tensor, rank: int, world: int, sum_):
        self.a, self.whole = a, DenseOperator(a)
        n = a.shape[0]
        self.lo, self.hi = rank * n // world, (rank + 1) * n // world
        self.size, self.dtype, self.device = self.hi - self.lo, a.dtype, a.device
        self.shards = Shards(rank, world, sum_, dim=n, draw=self._draw)

    def _draw(self, gen: torch.Generator, kind: str) -> torch.Tensor:
        return random_vector(self.whole, gen, kind)[self.lo:self.hi]

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        whole = vs.new_zeros((self.a.shape[0], vs.shape[1]))
        whole[self.lo:self.hi] = vs
        return (self.a @ self.shards.sum_(whole))[self.lo:self.hi]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v[:, None])[:, 0]


def on_slices(world: int, solve, a: torch.Tensor) -> list:
    """solve(op) on `world` threads, each with its slice of A's space; their results."""
    return on_threads(world, lambda rank, sum_: solve(Slice(a, rank, world, sum_)))


def matrix() -> torch.Tensor:
    """A few large eigenvalues above a wide bulk, some negative (a Hessian's shape)."""
    values = torch.cat([torch.tensor([9.0, 7.0, 5.0]), torch.linspace(-1.0, 2.0, N - 3)])
    return matrix_with_spectrum(values.double(), seed=3)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("args", [
    dict(method="hutchinson", probes=30),
    dict(method="hutchinson", probes=60, tol=6e-2),   # the early stop, the same on every process
    dict(method="hutch++", probes=30),
    dict(method="hutchinson", probes=30, max_memory=N * 8 * 4),  # blocks within a budget
])
def test_sharded_trace_equals_one_process(world, args):
    a = matrix()
    one = trace(DenseOperator(a), seed=5, **args)
    results = on_slices(world, lambda op: trace(op, seed=5, **args), a)
    for res in results:
        assert res.products == one.products and res.probes == one.probes
        assert res.value == pytest.approx(one.value, rel=1e-12)
        assert res.stderr == pytest.approx(one.stderr, rel=1e-9)
        assert res.note == f"probes sharded like the parameters over {world} processes"
    assert len({res.value for res in results}) == 1  # every process the same number
    if "tol" in args:
        assert one.probes < args["probes"]
    assert abs(one.value - float(a.trace())) < 5 * one.stderr


def test_hutch_plus_plus_spanning_the_space_is_exact_when_sharded():
    a = matrix()[:30, :30]  # a principal block: still symmetric
    results = on_slices(2, lambda op: trace(op, method="hutch++", probes=90, seed=0), a)
    for res in results:
        assert res.value == pytest.approx(float(a.trace()), rel=1e-12) and res.stderr == 0


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("vectors", [None, 12])  # a budget: windowed (partial) Lanczos
def test_sharded_density_equals_one_process(world, vectors):
    """The budget is per process: 12 vectors of the whole size for one process, 12 of its
    slice for each of the sharded ones (the same windows)."""
    a = matrix()
    args = dict(runs=3, iters=25, seed=2)
    one = density(DenseOperator(a), max_memory=vectors and vectors * N * 8, **args)
    results = on_slices(world, lambda op: density(op, max_memory=vectors and vectors * op.size * 8,
                                                  **args), a)
    # full reorthogonalisation: equal to rounding (measured 5e-15); partial amplifies the
    # different order of summation as orthogonality is lost (measured 5e-9)
    tol = 1e-12 if vectors is None else 1e-7
    for res in results:
        assert res.products == one.products and res.reorthogonalization == one.reorthogonalization
        assert f"probes sharded like the parameters over {world} processes" in res.note
        assert torch.allclose(res.nodes, one.nodes, rtol=0, atol=tol * 10)
        assert torch.allclose(res.weights, one.weights, rtol=0, atol=tol)
        assert torch.allclose(res.density, one.density, rtol=0, atol=tol * float(one.density.max()))
    assert torch.equal(results[0].nodes, results[-1].nodes)  # every process the same
    # the quadrature's moments: each run's Σ wθ = zᵀAz/n, Σ wθ² = zᵀA²z/n for its probe
    gen = torch.Generator().manual_seed(2)
    probes = torch.stack([random_vector(DenseOperator(a), gen, "rademacher") for _ in range(3)])
    nodes, weights = results[0].nodes, results[0].weights
    assert torch.allclose((weights * nodes).sum(1), ((probes @ a) * probes).sum(1) / N, rtol=1e-9)
    assert torch.allclose((weights * nodes ** 2).sum(1), (probes @ a).pow(2).sum(1) / N,
                          rtol=1e-9)


@pytest.mark.parametrize("v0", [False, True])
def test_sharded_power_iteration_equals_one_process(v0):
    """Power iteration on the shards: the same pairs as one process, the eigenvectors as
    each process's slice (k = 2: the second deflated against the first over processes)."""
    a = matrix()
    start = torch.linspace(1.0, 2.0, N, dtype=torch.float64) if v0 else None
    args = dict(k=2, method="power", tol=1e-9, max_iter=300, seed=4)
    one = eigs(DenseOperator(a), v0=start, **args)

    def solve(op):
        return eigs(op, v0=None if start is None else start[op.lo:op.hi], **args)
    results = on_slices(2, solve, a)
    # θ's change crosses tol at the same step, or one later where rounding differs
    for res in results:
        assert torch.allclose(res.eigenvalues, one.eigenvalues, rtol=1e-8, atol=0)
        assert abs(res.products - one.products) <= 1
        assert res.note == "vectors sharded like the parameters over 2 processes"
    cosines = (torch.cat([r.eigenvectors for r in results]) * one.eigenvectors).sum(0).abs()
    assert bool((cosines > 1 - 1e-8).all()), cosines
    assert one.eigenvalues.tolist() == pytest.approx([9.0, 7.0], rel=1e-6)


def test_the_control_variate_is_refused_on_split_vectors():
    def solve(op):
        with pytest.raises(LinalgInputError, match="split over processes"):
            control_variate_trace(op, 0.0, lambda z: 0.0, n_probes=5)
        return True
    assert all(on_slices(2, solve, matrix()))
