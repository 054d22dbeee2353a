"""The settings of `sharp flow` (docs/guides/flow.md#running): one field per flag."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sharpcli.checks import check_positive
from sharpcli.errors import SharpError
from sharpcli.flows.sdcp import SOLVERS

# Settings that change the numbers: a resumed flow must have been started with the same.
STATE_KEYS = ("substeps", "threshold", "tol", "max_iter", "seed", "sdcp", "start")


@dataclass
class FlowConfig:
    substeps: int = 4            # Euler substeps per step of GD
    threshold: float = 1.95      # critical eigenvalues: λ > threshold/η (threshold < 2)
    steps: int | None = None     # integrate to this step (default: the run's last)
    start: int | None = None     # from this checkpoint (default: 0; RMSProp: the first after 0)
    tol: float = 1e-3            # relative accuracy of each eigenvalue
    max_iter: int = 100          # products per eigenvalue solve, at most
    seed: int = 0                # random directions that fill a block Lanczos start block
    sdcp: str = "native"         # the complementarity solver: native, or cvxpy to cross-check
    save_every: int = 10         # steps between saves of flow-state.pt (for --resume)
    device: str = "cpu"
    resume: bool = False

    def validate(self) -> None:
        """A SharpError naming the field (SharpError.param) for a value out of range."""
        for name in ("substeps", "max_iter", "save_every"):
            check_positive(getattr(self, name), name, integer=True)
        check_positive(self.steps, "steps", integer=True, optional=True)
        check_positive(self.tol, "tol")
        if self.start is not None and (isinstance(self.start, bool) or not isinstance(self.start, int)
                                       or self.start < 0):
            raise SharpError(f"{{start}} must be a step, 0 or more, got {self.start!r}", param="start")
        if not 0 < self.threshold < 2:
            raise SharpError("{threshold} must lie between 0 and 2 (in units of 1/η: the critical "
                             f"eigenvalues are those above threshold/η), got {self.threshold}",
                             param="threshold")
        if self.sdcp not in SOLVERS:
            raise SharpError(f"unknown {{sdcp}} {self.sdcp!r}; expected one of {', '.join(SOLVERS)}",
                             param="sdcp")

    def state_settings(self) -> dict:
        # start=None is left out, so that states saved before --start existed still resume
        return {k: v for k, v in asdict(self).items()
                if k in STATE_KEYS and not (k == "start" and v is None)}
