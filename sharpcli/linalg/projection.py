"""Removing the components of a vector along an orthonormal set: the one step that Lanczos's
reorthogonalisation, deflation and the deflated trace probes all share."""

from __future__ import annotations

import torch


# Above this many entries a float32 sum errs by more than ~6e-5 relative (√n·ε): Lanczos's α,
# β and reorthogonalisation coefficients are then taken in float64 (`inner`). Measured on a
# 26M-parameter GPT: float32 sums put the top-5 3-8e-4 low with certificates of 1e-17 for true
# residuals of 0.03-0.06; float64 sums agree with the restarted solvers to 1e-7
# (benchmarks/RESULTS.md §9). Below it float32 sums stay, and with them every number measured
# on smaller models before.
WIDE = 2 ** 20


def wide(size: int, dtype: torch.dtype) -> bool:
    """Whether inner products of vectors of `size` entries of `dtype` need float64 sums."""
    return size > WIDE and torch.finfo(dtype).bits < 64


class Space:
    """Where the sums over a vector's coordinates happen: here, for vectors this process
    holds whole, in float64 (`inner`). shard.ShardedSpace sums them over processes too."""

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """The sum over every holder of the coordinates: here, `t` itself."""
        return t

    def inner(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.sum_(inner(x, y))

    def norms(self, w: torch.Tensor) -> torch.Tensor:
        """‖w‖ for a vector, the column norms for a block (size, b)."""
        return torch.linalg.vector_norm(w, dim=0)


LOCAL = Space()


def float64_sums(size: int, dtype: torch.dtype) -> Space | None:
    """The space an unbudgeted solver sums in: LOCAL (float64) for vectors longer than
    WIDE, None (float32 matrix products, as always below it) otherwise."""
    return LOCAL if wide(size, dtype) else None


def project_out(w: torch.Tensor, rows: torch.Tensor | None, space: Space | None = None) -> torch.Tensor:
    """w − QᵀQw for the orthonormal rows Q (m, size) of `rows`; None or no rows leaves w.
    `w` is one vector (size,) or a block of them as columns (size, b).

    Classical Gram–Schmidt, repeated once when the first pass cancelled most of w (its norm
    fell below 1/√2 of what it was, the criterion of Daniel, Gragg, Kaufman & Stewart 1976,
    as ARPACK applies it): then one pass can leave components of order ε·‖w‖/‖w'‖ behind,
    and the second brings them to ε ("twice is enough", Giraud et al. 2005). Without that
    cancellation one pass already leaves only O(ε), and the second, which reads the whole
    basis twice more, is skipped. Each pass is two products with Q (matrix-matrix for a
    block), cheap next to a Hessian-vector product. `space`: the coefficients summed there
    (float64), for vectors longer than WIDE; None: float32 products."""
    if rows is None or len(rows) == 0:
        return w

    def coefficients(w):
        return space.inner(rows.T, w).to(w.dtype) if space is not None else rows @ w

    # the norms where the sums are (over processes for split vectors): every process must
    # take the same decision, or the second pass's all-reduce would pair with nothing
    norms = (space or LOCAL).norms
    before = norms(w)
    w = w - rows.T @ coefficients(w)
    if bool((norms(w) < _DGKS * before).any()):  # one host sync
        w = w - rows.T @ coefficients(w)
    return w


_DGKS = 2 ** -0.5


def project_out_(w: torch.Tensor, rows, space: Space = LOCAL) -> torch.Tensor:
    """`project_out` in place, for the memory-bounded solvers: w (size,) or (size, b) loses
    its components along the orthonormal rows of `rows`, one (m, size) tensor or a list of
    them (a basis held in pieces), with no temporary of w's size (the coefficients, m × b,
    are all the scratch). The same classical Gram–Schmidt, repeated under the same DGKS
    criterion; the coefficients of all pieces are taken before any is subtracted. `space`:
    where the sums over coordinates happen (shard.ShardedSpace for vectors split across
    processes)."""
    pieces = [r for r in ([rows] if isinstance(rows, torch.Tensor) else rows or []) if len(r)]
    if not pieces:
        return w
    before = space.norms(w)
    _subtract_projection(w, pieces, space)
    if bool((space.norms(w) < _DGKS * before).any()):  # one host sync
        _subtract_projection(w, pieces, space)
    return w


def _subtract_projection(w: torch.Tensor, pieces: list[torch.Tensor], space: Space) -> None:
    # every piece's coefficients in one sum over the processes
    local = torch.cat([inner(r.T, w) for r in pieces])
    coefficients = space.sum_(local).to(w.dtype).split([len(r) for r in pieces])
    for r, h in zip(pieces, coefficients):
        if w.ndim == 1:
            w.addmv_(r.T, h, alpha=-1)
        else:
            w.addmm_(r.T, h, alpha=-1)


def inner(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """xᵀy for x (n, p) and y (n, q) or (n,), as float64 on x's device: exact products,
    float64 sums, whatever x's dtype.

    Why: a float32 sum over n entries errs by about √n·ε relative (BLAS sums sequentially
    in blocks): 3e-5 for n = 276k, 3e-4 for 25M parameters. Lanczos's α, β and
    reorthogonalisation coefficients would err far above ε‖A‖ (measured: Ritz values off by
    7e-6 relative at 276k, and residual certificates of 1e-12 for true residuals of 3e-4),
    so the restarted solvers take them in float64. Chunks of x and y are cast in turn,
    sized so that the float64 copies stay within one vector of x's dtype."""
    y2 = y[:, None] if y.ndim == 1 else y
    if x.dtype == torch.float64:
        out = x.T @ y2
    else:
        width = x.shape[1] + y2.shape[1]
        chunk = max(1, x.shape[0] * x.element_size() // (8 * width))
        out = torch.zeros(x.shape[1], y2.shape[1], dtype=torch.float64, device=x.device)
        for c0 in range(0, x.shape[0], chunk):
            out += x[c0:c0 + chunk].double().T @ y2[c0:c0 + chunk].double()
    return out[:, 0] if y.ndim == 1 else out
