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
