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

Sharded (FSDP2): an operator whose vectors are split over processes already runs on its
shards (shard.LocalShards). Each probe is every process's part of one whole probe: each
parameter's draw from the generator that every process seeds alike, cut as FSDP2 cuts it
(finite_difference.ParamLayout.random), so no process holds a whole probe and the estimate
does not depend on the number of processes (to the order of summation). zᵀAz, the sketch's
Gram matrix and its projections are summed over the processes, so every process gets the
same numbers and stops at the same probe. The probes are not those of an unsharded operator
with the same seed, which draws the flat vector in one call.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from sharpcli.linalg.basis import orthonormalize_
from sharpcli.linalg.budget import MemoryBudget, cannot_hold
from sharpcli.linalg.projection import LOCAL, project_out, project_out_
from sharpcli.linalg.results import (LinalgInputError, TraceResult, apply_block, check_count,
                                     make_generator)
from sharpcli.linalg.shard import dimension, draw, own_shards, shards_note, space_of

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
                      min_probes: int = MIN_PROBES, block: int = 1,
                      cap: int | None = None) -> list[float]:
    """zᵀAz (minus `minus(z)` when given) for up to n_probes Rademacher z (projected off
    `basis` when given), stopping early once stderr ≤ tol·|offset + mean|.

    Products are taken in blocks through the operator's matmat: the first `min_probes`
    (no stop is possible before them; all n_probes without tol) in one, then `block` at a
    time, the stop checked after each. The probes are drawn in the same order whatever the
    blocks, so block = 1 gives the probe-by-probe estimate exactly. `cap` (a memory budget)
    bounds every block, which are then built and projected in place: the same probes and
    stops, the same estimate up to rounding."""
    values: list[float] = []
    lean = cap is not None or _split(op)  # split vectors: in place, the sums over processes
    while len(values) < n_probes:
        first = tol is None or len(values) < min_probes
        want = (n_probes if tol is None else min_probes) - len(values) if first else block
        size = min(want, n_probes - len(values), cap or n_probes)
        z = _probes(op, gen, size, basis, lean=lean)
        # one host sync per block: needed for the early stop, cheap next to the products
        quad = _quadratic_forms(z, apply_block(op, z), lean=lean, space=space_of(op))
        values += [q - minus(zi) if minus is not None else q for q, zi in zip(quad, z.T)]
        del z
        if tol is not None and len(values) >= min_probes:
            estimate = offset + sum(values) / len(values)
            if _stderr(values) <= tol * abs(estimate):
                break
    return values


def _split(op) -> bool:
    """Whether op's vectors are split over processes (own_shards gave shard.LocalShards)."""
    return space_of(op) is not LOCAL


def _probes(op, gen, n: int, basis: torch.Tensor | None, lean: bool) -> torch.Tensor:
    """n Rademacher probes as columns (size, n), projected off `basis`'s columns; `lean`:
    drawn into one tensor and projected in place (no copies of the block)."""
    if not lean:
        z = torch.stack([draw(op, gen, "rademacher") for _ in range(n)], dim=1)
        return z if basis is None else project_out(z, basis.T)
    z = torch.empty(op.size, n, dtype=op.dtype, device=op.device)
    for i in range(n):
        z[:, i] = draw(op, gen, "rademacher")
    return z if basis is None else project_out_(z, basis.T, space_of(op))


def _quadratic_forms(z: torch.Tensor, az: torch.Tensor, lean: bool, space=LOCAL) -> list[float]:
    """zᵢᵀ(Az)ᵢ for each column; `lean`: column by column, no product of the block's size.
    `space`: where the sums over coordinates happen (over processes for split vectors)."""
    if not lean:
        return (z * az).sum(dim=0).double().tolist()
    return [float(space.inner(z[:, i:i + 1], az[:, i])) for i in range(z.shape[1])]


def unbudgeted_vectors(n_probes: int, tol: float | None, block: int, min_probes: int,
                       sketch: int = 0) -> int:
    """Vectors a trace estimate holds at its peak without a budget, the products included:
    its largest block of probes three times over (drawn, stacked, multiplied) and for Hutch++
    the sketch five times over (probes, AS, its QR, AQ, QᵀAQ's terms) (measured in
    tests/linalg/test_budgeted_trace.py)."""
    first = n_probes if tol is None else min(min_probes, n_probes)
    return max(5 * sketch, sketch + 3 * max(first, block)) + 4


def minimum_vectors(method: str) -> int:
    """The smallest budget of a trace estimate, in vectors: one probe and one of scratch,
    and for Hutch++ one sketch vector beside them (`_cap`)."""
    return 3 if method == "hutch++" else 2


def _cap(op, budget: MemoryBudget | None, unbudgeted: int, kept: int = 0) -> int | None:
    """The widest block of probes a budget allows beside `kept` vectors (one vector for the
    probe being drawn), or None when there is no budget or it holds the unbudgeted path."""
    if not cannot_hold(budget, op, unbudgeted):
        return None
    have = budget.require(kept + 2, op.size, op.dtype,
                          f"a trace estimate keeps {kept} sketch vectors, 1 probe and 1 of scratch")
    return have - kept - 1


def _sketch_within(op, gen, s: int) -> tuple[torch.Tensor, float, int]:
    """Hutch++'s Q = orth(AS) and tr(QᵀAQ) for s probes, in place: the product AS becomes Q
    (basis.orthonormalize_), so the sketch keeps s vectors beside one product. Returns Q,
    tr(QᵀAQ) and the products spent (s + rank of AS)."""
    space = space_of(op)
    z = _probes(op, gen, s, None, lean=True)
    az = apply_block(op, z)
    del z
    good, _ = orthonormalize_(az, [], s, None, space)
    q = az[:, :good]
    aq = apply_block(op, q)
    low_rank = sum(float(space.inner(q[:, i:i + 1], aq[:, i])) for i in range(good))
    return q, low_rank, s + good


def hutchinson_trace(op, *, n_probes: int = 100, tol: float | None = None, seed: int = 0,
                     method: str = "hutchinson", block: int = 1, max_memory=None) -> TraceResult:
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

    An operator split over processes (FSDP2) is estimated on its shards, the sums over
    processes (module docstring); the budget is then per process.

    `max_memory` (bytes, "1.5GB", or a MemoryBudget; None: no bound), what the estimate
    keeps beyond the operator and one block of products; a budget that holds the unbudgeted
    blocks (`unbudgeted_vectors`) changes nothing. Below that, Hutchinson takes its probes
    in blocks that fit: the same probes and stops, the same estimate up to rounding, at no
    cost in accuracy (only more passes over the data). Hutch++ keeps its sketch Q beside
    them: a sketch of s ≤ budget − 2 vectors, and when the budget caps s below m//3 the
    products it frees go to the remainder's Hutchinson probes. The estimate stays unbiased,
    its variance grows toward Hutchinson's, 2‖A − A_s‖²_F/(m − 2s) with A_s the part of A the
    sketch captures (Meyer et al. §2), instead of the full sketch's; `note` says so.
    """
    check_count(n_probes, "n_probes")
    if tol is not None and not tol > 0:
        raise LinalgInputError(f"tol must be positive or None, got {tol!r}")
    check_count(block, "block")
    op = own_shards(op)
    result = _estimate(op, n_probes, tol, seed, method, block, MemoryBudget.of(max_memory))
    result.note = "; ".join(filter(None, [result.note, shards_note(op, "probes")]))
    return result


def _estimate(op, n_probes: int, tol: float | None, seed: int, method: str, block: int,
              budget: MemoryBudget | None) -> TraceResult:
    """`hutchinson_trace` on an operator as own_shards gives it (its note without the shards)."""
    gen = make_generator(seed, op.device)
    if method == "hutchinson":
        cap = _cap(op, budget, unbudgeted_vectors(n_probes, tol, block, MIN_PROBES))
        values = _hutchinson_phase(op, gen, n_probes, tol, 0.0, None, block=block, cap=cap)
        return TraceResult(sum(values) / len(values), _stderr(values), len(values), len(values),
                           values)
    if method != "hutch++":
        raise LinalgInputError(f"method must be 'hutchinson' or 'hutch++', got {method!r}")
    if n_probes < 3:
        raise LinalgInputError(f"hutch++ needs a budget of at least 3 matvecs, got {n_probes}")
    s = min(n_probes // 3, dimension(op))
    cap = _cap(op, budget, unbudgeted_vectors(n_probes - 2 * s, tol, block, MIN_PROBES, s), 1)
    note = ""
    if cap is None and not _split(op):
        probes = torch.stack([draw(op, gen, "rademacher") for _ in range(s)], dim=1)
        q, _ = torch.linalg.qr(apply_block(op, probes))  # (size, s), orthonormal even if AS is rank-deficient
        low_rank, sketch_matvec = float((q * apply_block(op, q)).sum().double()), 2 * s
    else:  # within a budget, or on split vectors: the QR as a Gram matrix summed over them
        have = budget.vectors(op.size, op.dtype) if cap is not None else s + 2
        if s > have - 2:  # the sketch beside a block of one probe and one of scratch
            note = (f"max_memory: hutch++ sketch of {have - 2} vectors instead of {s}; the "
                    "products it frees went to Hutchinson probes (a larger stderr)")
            s = have - 2
        q, low_rank, sketch_matvec = _sketch_within(op, gen, s)
        cap = have - q.shape[1] - 1 if cap is not None else None
    if s == dimension(op):  # Q spans the whole space: tr(QᵀAQ) is the trace, nothing is left
        return TraceResult(low_rank, 0.0, sketch_matvec, 0, note=note)
    values = _hutchinson_phase(op, gen, n_probes - sketch_matvec, tol, low_rank, q, block=block,
                               cap=cap)
    estimate = low_rank + sum(values) / len(values)
    return TraceResult(estimate, _stderr(values), sketch_matvec + len(values), len(values), values,
                       note=note)


def control_variate_trace(op, base_trace: float, base_quadratic_form: Callable[[torch.Tensor], float],
                          *, n_probes: int = 100, tol: float | None = None,
                          seed: int = 0, block: int = 1, max_memory=None) -> TraceResult:
    """Estimate tr(A) as tr(B) + mean over Rademacher z of (zᵀAz − zᵀBz), where B is a
    matrix whose trace is known (`base_trace`) and whose quadratic form is cheap
    (`base_quadratic_form(z)` = zᵀBz).

    Unbiased for any B; the closer B is to A, the smaller the standard error (that of the
    remainder, sample std over √n). At most `n_probes` probes, one matvec of A each; with
    `tol`, stop early (after at least 5 probes) once stderr ≤ tol·|estimate|. The first 5
    products are one block (matmat), later ones `block` at a time. `max_memory` bounds the
    blocks as for Hutchinson (`hutchinson_trace`): the same estimate up to rounding.
    base_quadratic_form's own memory is outside the budget.
    """
    check_count(n_probes, "n_probes")
    if tol is not None and not tol > 0:
        raise LinalgInputError(f"tol must be positive or None, got {tol!r}")
    if not math.isfinite(base_trace):
        raise LinalgInputError(f"base_trace must be finite, got {base_trace!r}")
    check_count(block, "block")
    if own_shards(op) is not op:
        raise LinalgInputError("control_variate_trace takes whole vectors, and this operator's "
                               "are split over processes (FSDP2): use trace(method='hutchinson' "
                               "or 'hutch++')")
    gen = make_generator(seed, op.device)
    cap = _cap(op, MemoryBudget.of(max_memory),
               unbudgeted_vectors(n_probes, tol, block, MIN_PROBES_CONTROL_VARIATE))
    values = _hutchinson_phase(op, gen, n_probes, tol, base_trace, None,
                               minus=base_quadratic_form, min_probes=MIN_PROBES_CONTROL_VARIATE,
                               block=block, cap=cap)
    estimate = base_trace + sum(values) / len(values)
    return TraceResult(estimate, _stderr(values), len(values), len(values), values)
