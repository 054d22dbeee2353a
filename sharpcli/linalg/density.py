"""Spectral density by stochastic Lanczos quadrature (Ubaru, Chen & Saad, SIMAX 2017;
Ghorbani, Krishnan & Xiao, ICML 2019).

For a unit probe v, m Lanczos steps give T_m = S diag(θ) Sᵀ, and the Gauss quadrature
Σᵢ (S₀ᵢ)² f(θᵢ) approximates vᵀf(A)v = Σⱼ (vᵀuⱼ)² f(λⱼ). With v Rademacher/√n,
E[(vᵀuⱼ)²] = 1/n, so the nodes θᵢ with weights (S₀ᵢ)², averaged over runs and smoothed by a
Gaussian, estimate the density of eigenvalues φ(t) = (1/n) Σⱼ δ(t − λⱼ).
"""

from __future__ import annotations

import torch

from sharpcli.linalg.budget import MemoryBudget, cannot_hold
from sharpcli.linalg.lanczos import LanczosProcess, WindowedLanczosProcess, step_together
from sharpcli.linalg.results import DensityResult, LinalgInputError, check_count, make_generator
from sharpcli.linalg.shard import dimension, draw, own_shards, shards_note, space_of

MINIMUM_VECTORS = 3   # within a budget: 2 Lanczos vectors and the probe being drawn
DEFAULT_SIGMA = 1e-2  # Gaussian width as a fraction of the spectrum's range (max − min node)
PAD_SIGMAS = 5.0      # the grid extends this many widths beyond the extreme nodes


def _quadrature(runs: list[LanczosProcess], n_iter: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Nodes and weights of each run, the runs stepped together (one block of products per
    step). A run stops early if its Krylov space is invariant (then the quadrature is exact
    for its probe and further steps would only add zero weights)."""
    active = list(runs)
    while active:
        step_together(active)
        active = [p for p in active if p.m < n_iter and not p.broke_down]
    out = []
    for proc in runs:
        theta, s = proc.eigh()
        out.append((theta, s[0] ** 2))
    return out


def unbudgeted_vectors(n_runs: int, steps: int) -> int:
    """Vectors `slq_density` holds at its peak without a budget, the products included: every
    run's basis, the probes and their unit copies, one block of products and the step's
    temporaries (measured in tests/linalg/test_budgeted_density.py)."""
    return n_runs * (steps + 4) + 4


def _runs_within(op, gen, probe: str, n_runs: int, steps: int, budget: MemoryBudget):
    """The runs of `slq_density` within `budget`: with full reorthogonalisation, as many side
    by side as fit (each its `steps` rows and one column of the stacked block); if not even
    one fits, one at a time reorthogonalised against its last budget − 1 vectors (1 for the
    probe as it is drawn). Returns the runs' quadratures, products, and the label and note."""
    have = budget.require(MINIMUM_VECTORS, op.size, op.dtype,
                          "stochastic Lanczos quadrature keeps 2 Lanczos vectors and 1 probe")
    together = have // (steps + 1)
    window = steps if together else have - 1
    out, n_matvec = [], 0
    for first in range(0, n_runs, max(together, 1)):
        procs = []
        for _ in range(min(max(together, 1), n_runs - first)):
            v = draw(op, gen, probe)  # drawn in the unbudgeted order
            procs.append(WindowedLanczosProcess(op, v.div_(space_of(op).norms(v)), steps, window))
            del v
        out += _quadrature(procs, steps)
        n_matvec += sum(p.n_matvec for p in procs)
    if together:
        return out, n_matvec, "full", ""
    return out, n_matvec, "partial", (
        f"max_memory: each Lanczos run reorthogonalised against its last {window} of {steps} "
        "vectors; ghost copies of converged extreme eigenvalues may appear among the nodes, "
        "sharing their weight (the smoothed density moves little)")


def slq_density(op, *, n_runs: int = 5, n_iter: int = 80, grid_size: int = 1000,
                sigma: float | None = None, seed: int = 0,
                probe: str = "rademacher", max_memory=None) -> DensityResult:
    """Smoothed spectral density of a symmetric operator.

    `n_runs` probes (`probe` = "rademacher" or "gaussian", seeded by `seed`), each with
    min(n_iter, size) Lanczos steps with full reorthogonalisation (fewer if its Krylov space
    is exhausted: an operator with d distinct eigenvalues needs only d). The runs advance
    together, their products one block (the operator's matmat) per step. Nodes are the Ritz
    values, weights the squared first components of T's eigenvectors (float64 eigh).

    Smoothing: `sigma` is a RELATIVE width; the absolute Gaussian width is
    sigma·(max node − min node) (default 1e-2 of the range, or of max(|node|, 1) when all
    nodes coincide). The grid has `grid_size` points on [min node − 5σ, max node + 5σ];
    the density is the run average of Σᵢ wᵢ N(t; θᵢ, σ²), non-negative and normalised to
    trapezoid integral 1 on the grid. The default grid has about 9 points per σ; keep
    grid_size ≳ 10/sigma when making sigma smaller.

    `nodes` and `weights` are (n_runs, m) with m the longest run; shorter runs are padded
    with zero-weight copies of their last node, so sums over a row stay exact.

    `max_memory` (bytes, "1.5GB", or a MemoryBudget; None: no bound), what the runs keep
    beyond the operator and one block of products: a budget that holds all runs
    (`unbudgeted_vectors`) changes nothing. Below that, runs with full reorthogonalisation
    go as many at a time as fit (the same probes and the same numbers up to rounding, in
    more passes over the data); below steps + 1 vectors, one run at a time keeps only its
    last budget − 1 vectors and reorthogonalises against those (`reorthogonalization` =
    "partial", and `note` says so). The cost of partial: ghost eigenvalues among the nodes
    (lanczos.WindowedLanczosProcess), so nodes are not eigenvalues; the density itself
    stays close (tests/linalg/test_budgeted_density.py measures it). At least 3 vectors.

    An operator whose vectors are split over processes already (FSDP2's shards: the budget
    is then per process) runs on its shards (shard.LocalShards): each probe is drawn as
    every process's part of the same whole probe (shard.Shards.draw), the Lanczos vectors
    stay shards and their inner products are summed over the processes, so every process
    holds the same T and returns the same density.
    """
    check_count(n_runs, "n_runs")
    check_count(n_iter, "n_iter")
    if int(grid_size) != grid_size or grid_size < 2:
        raise LinalgInputError(f"grid_size must be an integer ≥ 2, got {grid_size!r}")
    if sigma is None:
        sigma = DEFAULT_SIGMA
    if not sigma > 0:
        raise LinalgInputError(f"sigma must be positive, got {sigma!r}")
    if probe not in ("rademacher", "gaussian"):
        raise LinalgInputError(f"probe must be 'gaussian' or 'rademacher', got {probe!r}")
    op = own_shards(op)
    gen = make_generator(seed, op.device)
    steps = min(n_iter, dimension(op))
    budget = MemoryBudget.of(max_memory)
    reorthogonalization, note = "full", ""
    if cannot_hold(budget, op, unbudgeted_vectors(n_runs, steps)):
        runs, n_matvec, reorthogonalization, note = _runs_within(op, gen, probe, n_runs, steps,
                                                                 budget)
    else:
        probes = [draw(op, gen, probe) for _ in range(n_runs)]
        procs = [LanczosProcess(op, v / space_of(op).norms(v), steps) for v in probes]
        runs = _quadrature(procs, steps)
        n_matvec = sum(p.n_matvec for p in procs)
    m = max(len(theta) for theta, _ in runs)
    nodes = torch.stack([torch.cat([t, t[-1].expand(m - len(t))]) for t, _ in runs])
    weights = torch.stack([torch.cat([w, w.new_zeros(m - len(w))]) for _, w in runs])
    lo, hi = float(nodes.min()), float(nodes.max())
    width = sigma * ((hi - lo) if hi > lo else max(abs(hi), 1.0))
    grid = torch.linspace(lo - PAD_SIGMAS * width, hi + PAD_SIGMAS * width, int(grid_size),
                          dtype=torch.float64)
    z = (grid[:, None] - nodes.reshape(1, -1)) / width
    gauss = torch.exp(-0.5 * z**2) / (width * (2 * torch.pi) ** 0.5)
    density = gauss @ weights.reshape(-1) / n_runs
    density = density / torch.trapezoid(density, grid)
    return DensityResult(grid=grid, density=density, nodes=nodes, weights=weights,
                         n_matvec=n_matvec, sigma=width,
                         reorthogonalization=reorthogonalization,
                         note="; ".join(filter(None, [note, shards_note(op, "probes")])))
