"""Removing the components of a vector along an orthonormal set: the one step that Lanczos's
reorthogonalisation, deflation and the deflated trace probes all share."""

from __future__ import annotations

import torch


def project_out(w: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """w − QᵀQw for the orthonormal rows Q (m, size) of `rows`; None or no rows leaves w.

    Classical Gram–Schmidt applied twice ("twice is enough", Giraud et al. 2005): one pass
    leaves components of order ε·κ behind, the second brings them to ε. Each pass is two
    matrix-vector products with Q, cheap next to one Hessian-vector product."""
    if rows is None or len(rows) == 0:
        return w
    for _ in range(2):
        w = w - rows.T @ (rows @ w)
    return w
