"""Top-k eigenpairs counted with multiplicity: Lanczos plus restarts on a deflated operator."""

from __future__ import annotations

import torch

from sharpcli.linalg.budget import MemoryBudget, cannot_hold
from sharpcli.linalg.lanczos import lanczos, unbudgeted_vectors
from sharpcli.linalg.projection import project_out, project_out_
from sharpcli.linalg.restart import ThickRestartLanczos, plan, solve
from sharpcli.linalg.results import EigenResult, apply, apply_block, make_generator
from sharpcli.linalg.shard import Sharded, dimension, own_space, sharded


class _Deflated:
    """P A P with P = I − QQᵀ: the operator with the eigenvectors found so far (orthonormal
    columns of Q) sent to zero."""

    def __init__(self, op, q: torch.Tensor):
        self.op, self.q = op, q
        self.size, self.dtype, self.device = op.size, op.dtype, op.device

    def project(self, v: torch.Tensor) -> torch.Tensor:
        return project_out(v, self.q.T)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.project(self.op.matvec(self.project(v)))

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        return self.project(apply_block(self.op, self.project(vs)))


def lanczos_top_k(op, k: int, *, tol: float = 1e-3, max_iter: int = 100, seed: int = 0,
                  v0: torch.Tensor | None = None, max_memory=None) -> EigenResult:
    """The top-k eigenvalues counted with multiplicity: Lanczos, then restarts on the
    deflated operator until one finds nothing above the k-th value.

    Lanczos stops once its k top Ritz pairs have small residuals; those are eigenpairs, but
    not necessarily the top k. It can miss (1) further copies of a repeated eigenvalue: it
    sees each eigenspace through the one direction its start vector has in it, and with the
    MSE loss the output layer's block is I_C ⊗ mean([h; 1][h; 1]ᵀ), every eigenvalue C times
    over; (2) a member of a tight cluster whose eigenvector the start vector barely touches,
    which at tol 1e-3 happens at the edge of stability (the default run's step 1000: λ₄, λ₅
    = 6.840, 6.829 next to 6.814; plain Lanczos returned 6.814 as λ₅).

    Each restart runs Lanczos for the top pair of (I − QQᵀ)H(I − QQᵀ), Q the eigenvectors
    kept so far, from a random start orthogonal to Q; a converged value above the current
    k-th joins the list (its residual ‖Hv − λv‖ measured with one more product) and the next
    restart follows. `max_iter` bounds each Lanczos run; every product is counted in
    `n_matvec`. The price is one extra Lanczos run for the top pair when nothing was missed.
    `v0` warm-starts the first run (e.g. the previous v₁ along a training run).

    `max_memory` (bytes, "1.5GB", or a MemoryBudget; None: no bound): a budget that holds
    what the runs above hold changes nothing; a smaller one runs them as thick-restart
    Lanczos (restart.py) within it, the deflated runs beside the k vectors kept
    (`_top_k_within`): at least k + 5 vectors.
    """
    budget = MemoryBudget.of(max_memory)
    if restarts(op, k, max_iter, budget):
        return _top_k_within(op, k, budget, tol=tol, max_iter=max_iter, seed=seed, v0=v0)
    res = lanczos(op, k, tol=tol, max_iter=max(k, min(max_iter, op.size)), seed=seed, v0=v0)

    def deflated_top(q: torch.Tensor, restart: int) -> EigenResult:
        # from a Gaussian start projected off the pairs kept, as a restart always began
        deflated = _Deflated(op, q.T)
        gen = torch.Generator(device=op.device).manual_seed(seed + restart)
        start = deflated.project(torch.randn(op.size, generator=gen, dtype=op.dtype, device=op.device))
        return lanczos(deflated, 1, tol=tol, v0=start, seed=seed + restart,
                       max_iter=min(max_iter, op.size - k))

    return _add_missed(op, k, res, deflated_top, held=None)


def _add_missed(op, k: int, res: EigenResult, deflated_top, held: int | None) -> EigenResult:
    """The restarts of lanczos_top_k, with or without a budget: `deflated_top(q, restart)`
    finds the top pair of (I − QQᵀ)A(I − QQᵀ), Q the rows of q (k, size), the pairs kept;
    one above the k-th value is inserted (its residual measured with one more product, the
    k-th falls out) and the next restart follows; one that is not ends the search. The rows
    of q are updated in place, by shifting those below the insertion. `held`: the rows the
    first run's basis held under a budget (None: no budget)."""
    values, residuals = res.eigenvalues.tolist(), res.residuals.tolist()
    converged, n_matvec, restarts = res.converged.tolist(), res.n_matvec, res.restarts
    q = res.eigenvectors.T                       # (k, size) rows, updated in place
    del res
    space = own_space(op)  # sums over processes where the vectors are split (FSDP2)
    for restart in range(1, k + 1):  # each restart that finds something adds one pair
        if k >= dimension(op):
            break
        new = deflated_top(q, restart)
        n_matvec, restarts = n_matvec + new.n_matvec, restarts + new.restarts
        if held is not None:
            held = max(held, k + 1 + new.basis_vectors)
        theta, v = float(new.eigenvalues[0]), new.eigenvectors[:, 0]
        if not theta > values[-1]:
            break  # nothing missed above the k-th value
        v = project_out_(v, q, space)
        v /= space.norms(v)
        w = apply(op, v)
        n_matvec += 1
        i = next(j for j, lam in enumerate(values) if theta > lam)
        values.insert(i, theta)
        residuals.insert(i, float(space.norms(w.sub_(v, alpha=theta))))
        converged.insert(i, bool(new.converged[0]))
        del w, new
        for j in range(k - 1, i, -1):  # shift the rows below i down; the k-th falls out
            q[j].copy_(q[j - 1])
        q[i].copy_(v)
        del values[k:], residuals[k:], converged[k:]
    return EigenResult(torch.tensor(values, dtype=torch.float64), q.T,
                       torch.tensor(residuals, dtype=torch.float64),
                       torch.tensor(converged, dtype=torch.bool), n_matvec, n_matvec,
                       basis_vectors=held, restarts=restarts)


def restarts(op, k: int, max_iter: int, budget: MemoryBudget | None) -> bool:
    """Whether `lanczos_top_k` runs its Lanczos runs restarted: the budget cannot hold what
    they hold at max(k, min(max_iter, size)) steps."""
    steps = max(k, min(max_iter, dimension(op)))  # the space's size (FSDP2: not op.size)
    return cannot_hold(budget, op, unbudgeted_top_k_vectors(steps, k))


def minimum_vectors(k: int) -> int:
    """The smallest budget of `lanczos_top_k`, in vectors: the k eigenvectors kept while a
    restarted run of 3 vectors, 1 of scratch and 1 projected input looks for a missed one."""
    return k + 5


def unbudgeted_top_k_vectors(steps: int, k: int) -> int:
    """Vectors `lanczos_top_k` holds at its peak without a budget, the product included: the
    first run's (lanczos.unbudgeted_vectors), or in a restart the k vectors kept, their
    stack and QR factor, and the deflated run with its projections (measured in
    tests/linalg/test_restart.py)."""
    return max(unbudgeted_vectors(steps, k), 3 * k + unbudgeted_vectors(steps, 1) + 4)


class _DeflatedInPlace(_Deflated):
    """P A P as `_Deflated`, with one vector of scratch (the projected input) and the
    product projected in place."""

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        space = own_space(self.op)  # over processes where the vectors are split (FSDP2)
        x = project_out_(v.clone(), self.q.T, space)
        w = apply(self.op, x)
        del x
        return project_out_(w, self.q.T, space)


def _top_k_within(op, k: int, budget: MemoryBudget, *, tol: float, max_iter: int, seed: int,
                  v0) -> EigenResult:
    """lanczos_top_k in a memory budget: the first run by `lanczos` within it (restarted
    when it must be), then each deflated run as a restarted single-vector Lanczos in what
    is left beside the k vectors kept and one projected input. The vectors are kept as rows
    of one (k, size) tensor and updated in place; a vector found is inserted by shifting
    the rows below it (the k-th falls out)."""
    budget.require(minimum_vectors(k), op.size, op.dtype,
                   f"lanczos_top_k keeps {k} eigenvectors while a restarted run of 3 vectors, "
                   "1 of scratch and 1 projected input looks for a missed one")
    dim = dimension(op)
    res = lanczos(op, k, tol=tol, max_iter=max(k, min(max_iter, dim)), seed=seed, v0=v0,
                  max_memory=budget)
    held = res.basis_vectors or max(k, min(max_iter, dim))  # rows of the first basis
    rest = budget.less(k + 1, op.size, op.dtype)
    return _add_missed(op, k, res, lambda q, restart: _deflated_top(
        op, q, rest, tol=tol, max_iter=min(max_iter, dim - k), seed=seed + restart), held=held)


def _deflated_top(op, q: torch.Tensor, budget: MemoryBudget, *, tol: float, max_iter: int,
                  seed: int) -> EigenResult:
    """The top pair of (I − QQᵀ)A(I − QQᵀ), Q the rows of q, by restarted single-vector
    Lanczos within `budget`, from a Gaussian start (seeded as the unbudgeted restarts are)
    kept orthogonal to Q. On several processes the run's basis is sharded (shard.py), Q
    is not: the products gather whole vectors."""
    deflated = sharded(_DeflatedInPlace(op, q.T))
    lock = deflated.local(q) if isinstance(deflated, Sharded) else q
    capacity, storage = plan(deflated, 1, 1, budget, max_iter)
    proc = ThickRestartLanczos(deflated, None, k=1, b=1, capacity=capacity, storage=storage,
                               gen=make_generator(seed, op.device), lock=lock.to(storage))
    return solve(proc, 1, tol=tol, max_iter=max_iter, criterion="residual")
