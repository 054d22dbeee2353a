"""A budgeted solver on an operator that spans several processes keeps 1/W of every basis
vector (linalg/shard.py). Here W processes are threads around one dense matrix split into W
summands, with an all-reduce by barrier: the sharded solvers must give the eigenpairs of one
process (to rounding), with W times the basis vectors in the same budget."""

from __future__ import annotations

import threading

import pytest
import torch

from sharpcli.linalg import DenseOperator, block_lanczos, lanczos, matrix_with_spectrum
from sharpcli.linalg.deflation import lanczos_top_k
from sharpcli.linalg.shard import Sharded, Shards, sharded

N = 300


class ThreadGroup:
    """An all-reduce among `world` threads: every one gets the same sum, in rank order."""

    def __init__(self, world: int):
        self.world, self.barrier, self.slots = world, threading.Barrier(world, timeout=60), [None] * world

    def sum_(self, rank: int):
        def reduce(t: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = t.clone()
            self.barrier.wait()
            total = sum(self.slots[1:], self.slots[0].clone())
            self.barrier.wait()
            return t.copy_(total)
        return reduce


class Summand(DenseOperator):
    """Process `rank`'s share of A: its product summed over the processes is A v."""

    def __init__(self, part: torch.Tensor, shards: Shards):
        super().__init__(part)
        self.shards = shards

    def matvec(self, v):
        return self.shards.sum_(self.matrix @ v)

    def matmat(self, vs):
        return self.shards.sum_(self.matrix @ vs)


def spectrum(double: bool = True):
    """A top with a cluster, and a double eigenvalue (which single-vector Lanczos sees once,
    or after many restarts twice: its count is not a property to compare there)."""
    top = [10.0, 9.0, 9.0 if double else 8.8, 8.5, 8.49, 8.0]
    rest = torch.linspace(-2.0, 6.0, N - len(top)).tolist()
    return torch.tensor(top + rest, dtype=torch.float64)


def on_processes(world: int, solve, double: bool = True):
    """solve(op) on `world` threads, each with its summand of A; their results."""
    a = matrix_with_spectrum(spectrum(double), seed=1)
    part = a / world  # equal summands: A is their sum
    out = on_threads(world, lambda rank, sum_: solve(Summand(part, Shards(rank, world, sum_))))
    return out, DenseOperator(a)


def on_threads(world: int, work) -> list:
    """work(rank, sum_) on `world` threads, sum_ adding a tensor over them; their results. An
    error in one thread releases the others and fails the test."""
    group, out, errors = ThreadGroup(world), [None] * world, []

    def run(rank):
        try:
            out[rank] = work(rank, group.sum_(rank))
        except BaseException as err:  # noqa: BLE001 - surfaced below
            errors.append(err)
            group.barrier.abort()
    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return out


def budget(vectors: int) -> int:
    return vectors * N * 8  # float64 vectors of the whole size


@pytest.mark.parametrize("solver", ["lanczos", "block", "top_k"])
def test_sharded_budgeted_solvers_equal_one_process(solver):
    def solve(op):
        if solver == "lanczos":
            return lanczos(op, 3, tol=1e-8, max_iter=300, max_memory=budget(8), seed=0)
        if solver == "block":
            return block_lanczos(op, 3, block_size=2, tol=1e-8, max_iter=300,
                                 max_memory=budget(12), seed=0)
        return lanczos_top_k(op, 3, tol=1e-8, max_iter=300, max_memory=budget(9), seed=0)
    double = solver != "lanczos"
    results, whole = on_processes(2, solve, double)
    one = solve(whole)
    truth = spectrum(double)[:3]
    for res in results + [one]:
        assert torch.allclose(res.eigenvalues, truth, rtol=1e-9, atol=0)
        assert res.eigenvectors.shape == (N, 3)
        residual = whole.matmat(res.eigenvectors) - res.eigenvectors * res.eigenvalues
        assert float(residual.norm(dim=0).max()) < 1e-6
    # every process returns the same whole eigenvectors
    assert torch.equal(results[0].eigenvectors, results[1].eigenvectors)
    if solver != "top_k":  # the same budget holds twice the vectors of half the length
        assert results[0].basis_vectors >= 2 * one.basis_vectors - 2
        assert results[0].restarts < one.restarts


def test_the_shards_cover_the_vector_once():
    group = ThreadGroup(3)
    ops = [sharded(Summand(torch.eye(10, dtype=torch.float64), Shards(r, 3, group.sum_(r))))
           for r in range(3)]
    assert all(isinstance(op, Sharded) for op in ops)
    assert [(op.lo, op.hi) for op in ops] == [(0, 3), (3, 6), (6, 10)]
    assert sum(op.size for op in ops) == 10 and {op.dim for op in ops} == {10}
    single = Summand(torch.eye(4, dtype=torch.float64), Shards(0, 1, lambda t: t))
    assert sharded(single) is single


def test_the_released_tail_frees_its_memory():
    """The result keeps the head alone: the tail's storage goes, not just its rows (a sharded
    solve gathers the whole eigenvectors where the tail was)."""
    from sharpcli.linalg.basis import Basis

    basis = Basis(1000, torch.float32, capacity=8, head_rows=3, device=torch.device("cpu"))
    head = basis.release()
    assert head.shape == (3, 1000)
    assert basis.tail.untyped_storage().nbytes() == 0
