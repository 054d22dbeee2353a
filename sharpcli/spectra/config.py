"""What `sharp spectrum` computes, as plain settings and rows: no torch here, so the CLI
starts fast and `--help` costs nothing."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from sharpcli.config import MEASUREMENT_MODES
from sharpcli.errors import SharpError

SPECTRUM_COLUMNS = ["checkpoint", "step", "block", "quantity", "index", "value", "residual",
                    "converged", "n_hvp", "seconds"]
DENSITY_COLUMNS = ["checkpoint", "step", "eigenvalue", "density"]
METHODS = ("lanczos", "power")
BACKENDS = ("native", "pyhessian")
TRACE_METHODS = ("auto", "gauss-newton", "hutchinson", "hutch++")
SPLITS = ("train", "test")
# sharpcli's trace stops once stderr ≤ this·|trace|: ±3 standard errors within ±1%
NATIVE_TRACE_TOL = 3e-3


@dataclass
class SpectrumConfig:
    """What to compute at each checkpoint; the fields are the flags of `sharp spectrum`."""

    top_k: int = 5
    method: str | None = None      # None: lanczos (native); pyhessian has power iteration only
    tol: float = 1e-3              # lanczos: residual ≤ tol·|λ₁|; power: relative change of λ
    check_missed: bool = True      # lanczos: restarts on the deflated operator (lanczos_top_k)
    max_iter: int | None = None    # lanczos: per run (default max(100, 2k)); power: per pair (100)
    trace: bool = False
    trace_probes: int = 100
    trace_method: str = "auto"      # gauss-newton where each example's output is its own, else hutchinson
    trace_tol: float | None = None  # None: NATIVE_TRACE_TOL natively, all probes for pyhessian
    density: bool = False
    density_runs: int = 5
    density_iters: int = 80
    density_grid: int = 1000
    density_sigma: float = 0.01    # Gaussian width relative to the spectrum's range
    per_layer: bool = False
    samples: int | None = None     # None: the whole split
    split: str = "train"
    batch_size: int | None = None  # HVP chunk; None: the run's physical_batch_size
    backend: str = "native"
    hessian_mode: str = "eval"
    device: str = "auto"
    seed: int = 0

    @property
    def native_trace_tol(self) -> float | None:
        """The early-stop tolerance of sharpcli's own trace: --trace-tol, its default when
        not given, and None (every probe) for 0."""
        if self.trace_tol is None:
            return NATIVE_TRACE_TOL
        return self.trace_tol or None

    @property
    def eigen_method(self) -> str:
        return self.method or ("power" if self.backend == "pyhessian" else "lanczos")

    @property
    def iterations(self) -> int:
        """--max-iter as given, else 100 (PyHessian's default), and for Lanczos at least 2k."""
        if self.max_iter is not None:
            return self.max_iter
        return max(100, 2 * self.top_k) if self.eigen_method == "lanczos" else 100

    def validate(self) -> None:
        """A SharpError naming the flag for any value out of range or combination we refuse."""
        for flag, value, choices in [("--method", self.method, METHODS + (None,)),
                                     ("--backend", self.backend, BACKENDS),
                                     ("--trace-method", self.trace_method, TRACE_METHODS),
                                     ("--split", self.split, SPLITS),
                                     ("--hessian-mode", self.hessian_mode, MEASUREMENT_MODES)]:
            if value not in choices:
                raise SharpError(f"{flag} {value!r}: expected one of "
                                 f"{', '.join(c for c in choices if c)}")
        for flag, value in [("--top-k", self.top_k), ("--max-iter", self.max_iter),
                            ("--trace-probes", self.trace_probes),
                            ("--density-runs", self.density_runs),
                            ("--density-iters", self.density_iters),
                            ("--samples", self.samples), ("--batch-size", self.batch_size)]:
            if value is not None and value < 1:
                raise SharpError(f"{flag} must be a positive integer, got {value}")
        if self.density_grid < 2:
            raise SharpError(f"--density-grid must be at least 2, got {self.density_grid}")
        for flag, value in [("--tol", self.tol), ("--trace-tol", self.trace_tol),
                            ("--density-sigma", self.density_sigma)]:
            if value is not None and not (value >= 0 and math.isfinite(value)):
                raise SharpError(f"{flag} must be a finite non-negative number, got {value}")
        if not self.density_sigma > 0:
            raise SharpError(f"--density-sigma must be positive, got {self.density_sigma}")
        if self.eigen_method == "lanczos" and self.iterations < self.top_k:
            raise SharpError(f"--max-iter {self.max_iter} is below --top-k {self.top_k}: Lanczos "
                             "needs at least k iterations for k eigenvalues")
        if self.trace_method == "hutch++" and self.trace_probes < 3:
            raise SharpError(f"--trace-method hutch++ needs --trace-probes ≥ 3, got "
                             f"{self.trace_probes}")
        if self.backend == "pyhessian":
            from sharpcli.spectra.pyhessian import check_supported

            check_supported(self)


@dataclass
class SpectrumRow:
    """One row of spectrum.csv."""

    checkpoint: str
    step: int | None
    block: str
    quantity: str          # eigenvalue, trace or density
    index: int             # eigenvalues: rank, 1 = largest; trace and density: 0
    value: float
    residual: float        # ‖Hv − λv‖ for eigenpairs; standard error for trace and density
    converged: bool | None
    n_hvp: int
    seconds: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)
