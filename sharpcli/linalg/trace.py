"""Stochastic trace estimation: Hutchinson (1989), Hutch++ (Meyer, Musco, Musco &
Woodruff, SOSA 2021), and Hutchinson on the remainder after a control variate.

Hutchinson: for Rademacher z, E[zᵀAz] = tr(A); average n probes, one matvec each.
Hutch++: spend a third of the matvecs on a sketch Q = orth(AS) of the dominant range, a
third on tr(QᵀAQ) exactly, and the last third on Hutchinson for the deflated remainder
(I − QQᵀ)A(I − QQᵀ). On spectra dominated by a few large eigenvalues — Hessians of
trained networks — the variance drops from O(1/m) to O(1/m²).
Control variate: when A = B + R with tr(B) known exactly and zᵀBz cheap, average
zᵀAz − zᵀBz for tr(R). The variance falls from 2‖A‖²_F to 2‖R‖²_F (Rademacher, off-diagonal
part). For Hessians B is the Gauss–Newton part (sharpcli.hessian.ggn), and that ratio is in the
hundreds on trained networks, where Hutch++ gains little: their Hessians are dominated by
a wide bulk, not by a few large eigenvalues.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from sharpcli.linalg.projection import project_out
from sharpcli.linalg.results import (LinalgInputError, TraceResult, apply_block, check_count,
                                     make_generator, random_vector)

MIN_PROBES = 10  # probes averaged before an early stop may trust its standard error
# With a control variate the remainder is a small share of the trace, so a standard error
# underestimated by a few probes still leaves the estimate well inside the tolerance.
MIN_PROBES_CONTROL_VARIATE = 5


def _stderr(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    var = sum((x - mean) ** 2 for x in values) / (n - 1)
    return math.sqrt(var / n)


def _hutchinson_phase(op, gen, n_probes: int, tol: float | None, offset: float,
                      basis: torch.Tensor | None,
                      minus: Callable[[torch.Tensor], float] | None = None,
                      min_probes: int = MIN_PROBES, block: int = 1) -> list[float]:
    """zᵀAz (minus `minus(z)` when given) for up to n_probes Rademacher z (projected off
    `basis` when given), stopping early once stderr ≤ tol·|offset + mean|.

    Products are taken in blocks through the operator's matmat: the first `min_probes`
    (no stop is possible before them; all n_probes without tol) in one, then `block` at a
    time, the stop checked after each. The probes are drawn in the same order whatever the
    blocks, so block = 1 gives the probe-by-probe estimate exactly."""
    values: list[float] = []
    while len(values) < n_probes:
        first = tol is None or len(values) < min_probes
        size = min((n_probes if tol is None else min_probes) if first else block,
                   n_probes - len(values))
        z = torch.stack([random_vector(op, gen, "rademacher") for _ in range(size)], dim=1)
        if basis is not None:
            z = project_out(z, basis.T)
        # one host sync per block: needed for the early stop, cheap next to the products
        quad = (z * apply_block(op, z)).sum(dim=0).double().tolist()
        values += [q - minus(zi) if minus is not None else q for q, zi in zip(quad, z.T)]
        if tol is not None and len(values) >= min_probes:
            estimate = offset + sum(values) / len(values)
            if _stderr(values) <= tol * abs(estimate):
                break
    return values


def hutchinson_trace(op, *, n_probes: int = 100, tol: float | None = None, seed: int = 0,
                     method: str = "hutchinson", block: int = 1) -> TraceResult:
    """Estimate tr(A) with at most `n_probes` matvecs.

    method="hutchinson": the mean of zᵀAz over Rademacher probes z; stderr is the sample
    standard deviation over √n. With `tol`, stop early (after at least 10 probes) once
    stderr ≤ tol·|estimate|.

    method="hutch++": `n_probes` is the whole matvec budget m (at least 3), split as in
    the paper: s = m//3 sketch columns (s matvecs for AS, s for tr(QᵀAQ)) and the remaining
    m − 2s for Hutchinson on the deflated remainder. The stderr is that of the remainder
    part (the sketch part is exact given Q); `tol` applies to the remainder phase the same
    way. `n_probes` in the result counts the remainder probes. A budget of 3·size or more
    makes the sketch span the whole space: the trace is then exact (stderr 0) after 2·size
    matvecs.

    The result counts matvecs exactly. Probes are drawn on the operator's device from a
    generator seeded with `seed`. Products go through the operator's matmat in blocks: the
    sketch, tr(QᵀAQ) and the first probes of the Hutchinson phase each in one, later probes
    `block` at a time (the stop is checked between blocks).
    """
    check_count(n_probes, "n_probes")
    if tol is not None and not tol > 0:
        raise LinalgInputError(f"tol must be positive or None, got {tol!r}")
    check_count(block, "block")
    gen = make_generator(seed, op.device)
    if method == "hutchinson":
        values = _hutchinson_phase(op, gen, n_probes, tol, 0.0, None, block=block)
        return TraceResult(sum(values) / len(values), _stderr(values), len(values), len(values),
                           values)
    if method != "hutch++":
        raise LinalgInputError(f"method must be 'hutchinson' or 'hutch++', got {method!r}")
    if n_probes < 3:
        raise LinalgInputError(f"hutch++ needs a budget of at least 3 matvecs, got {n_probes}")
    s = min(n_probes // 3, op.size)
    probes = torch.stack([random_vector(op, gen, "rademacher") for _ in range(s)], dim=1)
    q, _ = torch.linalg.qr(apply_block(op, probes))  # (size, s), orthonormal even if AS is rank-deficient
    low_rank = float((q * apply_block(op, q)).sum().double())
    if s == op.size:  # Q spans the whole space: tr(QᵀAQ) is the trace, nothing is left
        return TraceResult(low_rank, 0.0, 2 * s, 0)
    values = _hutchinson_phase(op, gen, n_probes - 2 * s, tol, low_rank, q, block=block)
    estimate = low_rank + sum(values) / len(values)
    return TraceResult(estimate, _stderr(values), 2 * s + len(values), len(values), values)


def control_variate_trace(op, base_trace: float, base_quadratic_form: Callable[[torch.Tensor], float],
                          *, n_probes: int = 100, tol: float | None = None,
                          seed: int = 0, block: int = 1) -> TraceResult:
    """Estimate tr(A) as tr(B) + mean over Rademacher z of (zᵀAz − zᵀBz), where B is a
    matrix whose trace is known (`base_trace`) and whose quadratic form is cheap
    (`base_quadratic_form(z)` = zᵀBz).

    Unbiased for any B; the closer B is to A, the smaller the standard error (that of the
    remainder, sample std over √n). At most `n_probes` probes, one matvec of A each; with
    `tol`, stop early (after at least 5 probes) once stderr ≤ tol·|estimate|. The first 5
    products are one block (matmat), later ones `block` at a time.
    """
    check_count(n_probes, "n_probes")
    if tol is not None and not tol > 0:
        raise LinalgInputError(f"tol must be positive or None, got {tol!r}")
    if not math.isfinite(base_trace):
        raise LinalgInputError(f"base_trace must be finite, got {base_trace!r}")
    check_count(block, "block")
    gen = make_generator(seed, op.device)
    values = _hutchinson_phase(op, gen, n_probes, tol, base_trace, None,
                               minus=base_quadratic_form, min_probes=MIN_PROBES_CONTROL_VARIATE,
                               block=block)
    estimate = base_trace + sum(values) / len(values)
    return TraceResult(estimate, _stderr(values), len(values), len(values), values)
