"""The Hessian a spectrum is taken of, and what one computation on it gives back.

A `Problem` is a model, a loss and the examples whose mean loss is differentiated; a
`Solve` is one computation on it (the top-k eigenvalues of a block, a trace, a density)
with its cost. Rows of spectrum.csv are made from solves only when they are written."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from sharpcli.distributed import SINGLE, Dist
from sharpcli.hessian.calls import Call
from sharpcli.hessian.objective import objective_of
from sharpcli.hessian.params import trainable_params
from sharpcli.interrupt import check_stop
from sharpcli.linalg import DensityResult, DiagonalScaled, EigenResult, TraceResult
from sharpcli.linalg.results import apply_block
from sharpcli.spectra.config import SpectrumRow


@dataclass
class Problem:
    """The Hessian to measure: the mean loss over the data at the model's weights. `x, y`
    are in-memory examples, or `x` is any source of batches (a sharpcli.sources.Data, built
    once so that a stream is counted and checked once) and `y` None; `loss_fn` a loss, a
    name or a Call."""

    model: nn.Module
    loss_fn: Callable | Call | str
    x: Any
    y: torch.Tensor | None = None
    chunk_size: int = 4096
    checkpoint: str = ""
    step: int | None = None
    should_stop: Callable[[], bool] | None = None  # polled before every HVP
    dist: Dist = SINGLE  # under torchrun: each process takes its share of the data
    # diag(P) over the trainable parameters: measure P^{-1/2} H P^{-1/2} instead of H
    preconditioner: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.call, self.data = objective_of(self.model, self.loss_fn, self.x, self.y,
                                            chunk_size=self.chunk_size, dist=self.dist)
        self.dist = self.data.dist

    def scaled(self, op, params: list[nn.Parameter]):
        """`op`, the Hessian block of `params`, as P_b^{-1/2} H_b P_b^{-1/2} with P_b the
        preconditioner's entries of those parameters; `op` itself without one."""
        if self.preconditioner is None:
            return op
        pieces = dict(zip(map(id, trainable_params(self.model)),
                          torch.split(self.preconditioner,
                                      [p.numel() for p in trainable_params(self.model)])))
        return DiagonalScaled(op, torch.cat([pieces[id(p)] for p in params]).rsqrt())


class Stoppable:
    """An operator that raises Interrupted before a product (or a block of products) once a
    stop was requested: Ctrl-C ends a long solve within one HVP or one block, and the rows
    already written stay. Under torchrun a request to any process stops them all at the same
    product."""

    def __init__(self, op, should_stop: Callable[[], bool] | None, dist: Dist = SINGLE):
        self.op, self.should_stop, self.dist = op, should_stop, dist
        self.size, self.dtype, self.device = op.size, op.dtype, op.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        check_stop(self.should_stop, self.dist)
        return self.op.matvec(v)

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        """A block in one pass: one stop check for the whole block."""
        check_stop(self.should_stop, self.dist)
        return apply_block(self.op, vs)


@dataclass
class Solve:
    """One computation on a block of a problem: its result and what it cost (Hessian-vector
    products and wall time, the operator's construction included)."""

    block: str
    quantity: str  # "eigenvalue", "trace" or "density"
    result: EigenResult | TraceResult | DensityResult
    n_hvp: int
    seconds: float
    size: int      # parameters in the block
    note: str | None = None  # what the caller should be told (a fallback, a cost in accuracy)

    def rows(self, checkpoint: str, step: int | None) -> list[SpectrumRow]:
        """Its rows of spectrum.csv: one per eigenvalue, one for a trace or a density (the
        trace the density implies, with its standard error)."""
        def row(index, value, residual, converged=None) -> SpectrumRow:
            return SpectrumRow(checkpoint, step, self.block, self.quantity, index, float(value),
                               float(residual), converged, int(self.n_hvp), self.note or "",
                               self.seconds)

        r = self.result
        if self.quantity == "eigenvalue":
            return [row(i + 1, lam, res, bool(conv)) for i, (lam, res, conv)
                    in enumerate(zip(r.eigenvalues.tolist(), r.residuals.tolist(),
                                     r.converged.tolist()))]
        if self.quantity == "trace":
            return [row(0, r.estimate, r.stderr)]
        return [row(0, *implied_trace(r, self.size))]

    def curve(self, checkpoint: str, step: int | None) -> list[dict]:
        """density.csv rows: the smoothed density on its grid (density solves only)."""
        if self.quantity != "density":
            return []
        return [{"checkpoint": checkpoint, "step": step, "eigenvalue": float(t),
                 "density": float(d), "block": self.block}
                for t, d in zip(self.result.grid.tolist(), self.result.density.tolist())]


def implied_trace(res: DensityResult, size: int) -> tuple[float, float]:
    """The trace a density implies, n·∫tφ(t)dt = n·mean over runs of Σᵢwᵢθᵢ (each run's
    Σᵢwᵢθᵢ = vᵀHv for its unit probe v, so this is Hutchinson over the SLQ probes), and its
    standard error."""
    per_run = size * (res.weights * res.nodes).sum(dim=1)
    runs = len(per_run)
    stderr = float(per_run.std() / math.sqrt(runs)) if runs > 1 else math.nan
    return float(per_run.mean()), stderr
