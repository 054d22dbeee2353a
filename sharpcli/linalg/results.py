"""What the solvers return, and the few helpers they all share: argument checks and seeded
probe vectors on the operator's device.

Small numbers (eigenvalues, residuals, trace estimates, quadrature nodes) come back as
float64 on the CPU, ready for a CSV; vectors stay in the operator's dtype on its device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from sharpcli.checks import check_positive
from sharpcli.errors import SharpError


class LinalgInputError(SharpError, ValueError):
    """A solver argument out of range (k > size, a zero start vector, ...).

    A ValueError for library callers, a SharpError (exit code 2) for the CLI."""


@dataclass
class EigenResult:
    """Top-k eigenpairs of a symmetric operator."""

    eigenvalues: torch.Tensor   # (k,) descending (largest algebraic first), float64 CPU
    eigenvectors: torch.Tensor  # (size, k) unit columns, op.dtype on op.device
    residuals: torch.Tensor     # (k,) ‖A v − λ v‖ for each pair, float64 CPU
    converged: torch.Tensor     # (k,) bool
    n_matvec: int               # matvecs spent in total
    iterations: int
    # memory-bounded solvers (max_memory=): the basis vectors held and the thick restarts
    basis_vectors: int | None = None
    restarts: int = 0
    note: str = ""  # what a memory budget cost (restarts), for the user

    @property
    def values(self) -> torch.Tensor:
        return self.eigenvalues

    @property
    def vectors(self) -> torch.Tensor:
        return self.eigenvectors

    @property
    def products(self) -> int:
        return self.n_matvec

    def to_frame(self):
        """A pandas DataFrame, one row per eigenpair: index, value, residual, converged."""
        import pandas as pd

        return pd.DataFrame({"index": range(1, len(self.eigenvalues) + 1),
                             "value": self.eigenvalues.tolist(),
                             "residual": self.residuals.tolist(),
                             "converged": self.converged.tolist()})


@dataclass
class TraceResult:
    """A stochastic estimate of tr(A) with its standard error."""

    estimate: float
    stderr: float   # nan when fewer than two probes were averaged
    n_matvec: int   # matvecs spent in total
    n_probes: int   # Hutchinson probes averaged (for Hutch++: the residual-phase probes)
    samples: list[float] = field(default_factory=list)  # the averaged per-probe values, in order
    note: str = ""  # what a memory budget cost (a capped Hutch++ sketch), for the user

    @property
    def value(self) -> float:
        return self.estimate

    @property
    def probes(self) -> int:
        return self.n_probes

    @property
    def products(self) -> int:
        return self.n_matvec

    def to_frame(self):
        """A pandas DataFrame of one row: value, stderr, probes, products."""
        import pandas as pd

        return pd.DataFrame({"value": [self.estimate], "stderr": [self.stderr],
                             "probes": [self.n_probes], "products": [self.n_matvec]})


@dataclass
class DensityResult:
    """A smoothed spectral density from stochastic Lanczos quadrature."""

    grid: torch.Tensor     # (grid_size,) eigenvalue axis, float64 CPU
    density: torch.Tensor  # (grid_size,) non-negative, trapezoid integral 1 over grid
    nodes: torch.Tensor    # (n_runs, m) Ritz values of each run, float64 CPU
    weights: torch.Tensor  # (n_runs, m) quadrature weights, each row sums to 1
    n_matvec: int
    sigma: float           # the absolute Gaussian width used for smoothing
    reorthogonalization: str = "full"  # "partial" under a memory budget too small for all
    note: str = ""         # what a memory budget cost (ghost eigenvalues), for the user

    @property
    def products(self) -> int:
        return self.n_matvec

    def to_frame(self):
        """A pandas DataFrame, one row per grid point: eigenvalue, density."""
        import pandas as pd

        return pd.DataFrame({"eigenvalue": self.grid.tolist(), "density": self.density.tolist()})


def check_count(value: int, name: str) -> None:
    """A positive whole number (iterations, probes, runs), or LinalgInputError."""
    check_positive(value, name, integer=True, error=LinalgInputError)


def check_k(op, k: int, size: int | None = None) -> None:
    """1 ≤ k ≤ the space's size (`size`, default op.size), with a message that names both."""
    check_count(k, "k")
    size = op.size if size is None else size
    if k > size:
        raise LinalgInputError(f"k={k} eigenpairs requested from an operator of size {size}")


CRITERIA = ("residual", "eigenvalue")  # what an eigensolver's tol bounds (see lanczos)


def check_criterion(criterion: str) -> None:
    if criterion not in CRITERIA:
        raise LinalgInputError(f"criterion must be one of {CRITERIA}, got {criterion!r}")


def check_eigensolver(op, k: int, max_iter: int, tol: float, criterion: str, method: str) -> None:
    """The arguments the Lanczos eigensolvers (single-vector, block, restarted) share,
    checked alike: 1 ≤ k ≤ size, max_iter a positive whole number of at least k products
    (k pairs need k directions), tol ≥ 0 and a known criterion."""
    check_k(op, k)
    check_count(max_iter, "max_iter")
    if max_iter < k:
        raise LinalgInputError(f"{{max_iter}}={max_iter} is below {{k}}={k}: {method} needs at "
                               "least k products for k eigenpairs", param=("max_iter", "k"))
    if not tol >= 0:
        raise LinalgInputError(f"{{tol}} must be non-negative, got {tol!r}", param="tol")
    check_criterion(criterion)


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    """A private generator on the operator's device: probes are drawn where they are used,
    and the global RNG is never touched."""
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(seed))
    return gen


def random_vector(op, gen: torch.Generator, kind: str = "gaussian") -> torch.Tensor:
    """A probe of length op.size: 'gaussian' N(0, 1) or 'rademacher' ±1 entries."""
    if kind == "gaussian":
        return torch.randn(op.size, generator=gen, dtype=op.dtype, device=op.device)
    if kind == "rademacher":
        bits = torch.randint(0, 2, (op.size,), generator=gen, dtype=op.dtype, device=op.device)
        return bits.mul_(2).sub_(1)
    raise LinalgInputError(f"probe must be 'gaussian' or 'rademacher', got {kind!r}")


def tolerance_scale(theta_top: float, tmax: float, eps: float) -> float:
    """max(|θ₁|, √ε·‖T‖, tiny): residual tolerances are relative to the top Ritz value,
    floored so that an operator whose top eigenvalue is ~0 next to large negative ones can
    still converge."""
    return max(abs(theta_top), eps ** 0.5 * tmax, torch.finfo(torch.float64).tiny)


def error_bounds(theta: np.ndarray, residuals: np.ndarray, k: int) -> np.ndarray:
    """The estimated error |λ − θᵢ| of each of the top k Ritz values, given all the Ritz
    values `theta` (descending) and all their residuals: min(rᵢ, rᵢ²/gapᵢ).

    rᵢ = ‖Av − θᵢv‖ bounds the distance from θᵢ to the nearest eigenvalue (for any unit v);
    rᵢ²/gap is the sharper, quadratic bound of Kato and Temple (Parlett, "The Symmetric
    Eigenvalue Problem", §11.7), which needs the gap from θᵢ to the rest of A's spectrum.
    For that, each other Ritz pair j says that an eigenvalue lies within r_j of θ_j, so
    gapᵢ = min over j ≠ i of |θᵢ − θ_j| − r_j (0 when an interval reaches θᵢ: then the
    bound is rᵢ). A Ritz value far below the cluster, as after two or three steps, has a
    large residual and so does not pass for a wide gap. It is still an estimate, not a
    guarantee: no Krylov space can see an eigenvalue it has not found yet."""
    out = residuals[:k].copy()
    for i in range(min(k, len(theta))):
        others = np.delete(np.arange(len(theta)), i)
        if others.size == 0:
            continue
        gap = float(np.min(np.abs(theta[others] - theta[i]) - residuals[others]))
        if gap > 0:
            out[i] = min(out[i], residuals[i] ** 2 / gap)
    return out


def eigenvalues_settled(theta: np.ndarray, residuals: np.ndarray, k: int,
                        previous: np.ndarray | None, tol: float) -> np.ndarray:
    """The "eigenvalue" criterion for the top k Ritz values: each one's estimated error
    (`error_bounds`) is at most tol·|θᵢ|, and it moved by at most that much since the
    previous step (`previous`, the top-k Ritz values one step or block earlier; None on the
    first). The second condition keeps a Ritz value that is still climbing toward an
    eigenvalue the space has not found yet from passing on a gap it cannot see: measured
    along the default run's edge of stability, the estimate alone stopped after two
    products 11% short of λ₁, the two together never beyond 6e-4 at tol 1e-3."""
    scale = tol * np.abs(theta[:k])
    ok = error_bounds(theta, residuals, k) <= scale
    if previous is None or len(previous) < k:
        return ok & (residuals[:k] == 0)
    return ok & (np.abs(theta[:k] - previous[:k]) <= scale)


def converged_pairs(theta: np.ndarray, residuals: np.ndarray, k: int, *, criterion: str,
                    tol: float, tmax: float, eps: float,
                    previous: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The one convergence test of the Lanczos solvers (single-vector, block, restarted),
    for the top k of the Ritz values `theta` (descending) with their `residuals`:
    "residual": ‖Av − θv‖ ≤ tol·max(|θ₁|, √ε·tmax) (`tolerance_scale`, tmax an estimate of
    ‖T‖); "eigenvalue": `eigenvalues_settled` against `previous`, the top k one step
    earlier. Returns (converged (k,) bool, what to pass as `previous` next time)."""
    if criterion == "residual":
        scale = tolerance_scale(float(theta[0]), tmax, eps)
        return np.asarray(residuals[:k] <= tol * scale), previous
    return eigenvalues_settled(theta, residuals, k, previous, tol), theta[:k].copy()


def start_vector(op, v0, gen: torch.Generator) -> torch.Tensor:
    """The unit start vector: v0 when given (any dtype/device, flattened), else Gaussian."""
    if v0 is None:
        v = random_vector(op, gen, "gaussian")
    else:
        v = torch.as_tensor(v0).detach().reshape(-1).to(device=op.device, dtype=op.dtype)
        if v.numel() != op.size:
            raise LinalgInputError(f"v0 has {v.numel()} entries, the operator has size {op.size}")
    norm = v.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise LinalgInputError("v0 must be a finite, non-zero vector")
    return v / norm


def apply(op, v: torch.Tensor) -> torch.Tensor:
    """op.matvec(v), checked to be a vector of the right length (a cheap guard against an
    operator that returns a parameter list or a batch)."""
    w = op.matvec(v)
    if w.shape != (op.size,):
        raise LinalgInputError(f"matvec returned shape {tuple(w.shape)}, expected ({op.size},)")
    return w


def apply_block(op, vs: torch.Tensor) -> torch.Tensor:
    """A @ vs for the columns of vs (size, b): op.matmat where the operator has one (a
    Hessian computes the whole block in one pass over its data), else b matvecs. Checked
    like `apply`."""
    if vs.ndim != 2 or vs.shape[0] != op.size:
        raise LinalgInputError(f"a block of shape {tuple(vs.shape)} for an operator of size {op.size}")
    matmat = getattr(op, "matmat", None)
    if matmat is None:
        return torch.stack([apply(op, v) for v in vs.T], dim=1)
    w = matmat(vs)
    if w.shape != vs.shape:
        raise LinalgInputError(f"matmat returned shape {tuple(w.shape)}, expected {tuple(vs.shape)}")
    return w


def start_block(op, v0) -> torch.Tensor:
    """The warm-start columns as (size, c) on the operator's device and dtype, or (size, 0)."""
    if v0 is None:
        return torch.empty(op.size, 0, dtype=op.dtype, device=op.device)
    v = torch.as_tensor(v0).detach().to(device=op.device, dtype=op.dtype)
    v = v.reshape(-1, 1) if v.ndim == 1 else v
    if v.ndim != 2 or v.shape[0] != op.size:
        raise LinalgInputError(f"v0 has shape {tuple(v.shape)}, the operator has size {op.size}")
    if not bool(torch.isfinite(v).all()) or not bool((v.norm(dim=0) > 0).all()):
        raise LinalgInputError("v0 must hold finite, non-zero vectors")
    return v / v.norm(dim=0)


def start_columns(v0) -> int:
    """How many warm-start columns v0 has: 0 for None, 1 for a vector."""
    if v0 is None:
        return 0
    v = torch.as_tensor(v0)
    return 1 if v.ndim == 1 else int(v.shape[-1])
