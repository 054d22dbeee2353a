"""Removing the components of a vector along an orthonormal set: the one step that Lanczos's
reorthogonalisation, deflation and the deflated trace probes all share."""

from __future__ import annotations

import torch


def project_out(w: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """w − QᵀQw for the orthonormal rows Q (m, size) of `rows`; None or no rows leaves w.
    `w` is one vector (size,) or a block of them as columns (size, b).

    Classical Gram–Schmidt, repeated once when the first pass cancelled most of w (its norm
    fell below 1/√2 of what it was, the criterion of Daniel, Gragg, Kaufman & Stewart 1976,
    as ARPACK applies it): then one pass can leave components of order ε·‖w‖/‖w'‖ behind,
    and the second brings them to ε ("twice is enough", Giraud et al. 2005). Without that
    cancellation one pass already leaves only O(ε), and the second, which reads the whole
    basis twice more, is skipped. Each pass is two products with Q (matrix-matrix for a
    block), cheap next to a Hessian-vector product."""
    if rows is None or len(rows) == 0:
        return w
    before = torch.linalg.vector_norm(w, dim=0)
    w = w - rows.T @ (rows @ w)
    if bool((torch.linalg.vector_norm(w, dim=0) < _DGKS * before).any()):  # one host sync
        w = w - rows.T @ (rows @ w)
    return w


_DGKS = 2 ** -0.5


def project_out_(w: torch.Tensor, rows) -> torch.Tensor:
    """`project_out` in place, for the memory-bounded solvers: w (size,) or (size, b) loses
    its components along the orthonormal rows of `rows`, one (m, size) tensor or a list of
    them (a basis held in pieces), with no temporary of w's size (the coefficients, m × b,
    are all the scratch). The same classical Gram–Schmidt, repeated under the same DGKS
    criterion; the coefficients of all pieces are taken before any is subtracted."""
    pieces = [r for r in ([rows] if isinstance(rows, torch.Tensor) else rows or []) if len(r)]
    if not pieces:
        return w
    before = torch.linalg.vector_norm(w, dim=0)
    _subtract_projection(w, pieces)
    if bool((torch.linalg.vector_norm(w, dim=0) < _DGKS * before).any()):  # one host sync
        _subtract_projection(w, pieces)
    return w


def _subtract_projection(w: torch.Tensor, pieces: list[torch.Tensor]) -> None:
    coefficients = [r @ w for r in pieces]
    for r, h in zip(pieces, coefficients):
        if w.ndim == 1:
            w.addmv_(r.T, h, alpha=-1)
        else:
            w.addmm_(r.T, h, alpha=-1)
