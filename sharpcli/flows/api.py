"""`sharpcli.flow`: `sharp flow` from Python, for notebooks and scripts. Errors name these
arguments, not the command's flags."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from sharpcli.errors import SharpError
from sharpcli.flows.central import Objective
from sharpcli.flows.config import FlowConfig
from sharpcli.hessian.calls import Call
from sharpcli.hessian.check import check_objective
from sharpcli.sources.data import DEFAULT_CHUNK, as_data, check_chunk_size


def flow(run: str | Path, *, model: nn.Module | None = None, loss_fn: Callable | str | None = "mse",
         data: Any = None, y: torch.Tensor | None = None,
         num_terms: Callable[[Any], int] | None = None,
         batch_loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
         chunk_size: int | None = None, substeps: int | None = None,
         threshold: float | None = None, steps: int | None = None, start: int | None = None,
         tol: float | None = None,
         max_iter: int | None = None, seed: int | None = None, sdcp: str | None = None,
         device: str | None = None, out: str | Path | None = None, resume: bool = False,
         save_every: int | None = None) -> list[dict]:
    """The central flow and the stable (gradient) flow of a full-batch GD, RMSProp or Scalar
    RMSProp run, from its step-0 weights (RMSProp: its first checkpoint after step 0, with
    the ν saved there): `sharp flow` from Python (docs/guides/flow.md).

    A run of `sharp train` needs nothing but `run`: its step-0 checkpoint names its model,
    data and loss. A run of `sharpcli.Tracker` needs `model` and the examples it trained on.
    Nothing is written unless `out` is given. The settings left out (None) take `sharp
    flow`'s defaults (FlowConfig's): substeps 4, threshold 1.95, tol 1e-3, max_iter 100,
    seed 0, sdcp "native", device "cpu", save_every 10.

    Args:
        run: The run folder (reports/<run>) or run name, trained by full-batch GD or
            RMSProp with a constant step, no momentum and no weight decay.
        model: For a Tracker's run: a model of the run's architecture; a copy is given the
            step-0 weights, the model itself is left alone.
        loss_fn: For a Tracker's run: `loss_fn(outputs, targets)`, or "mse" or "ce".
        data: For a Tracker's run: the examples it trained on, as for `sharpcli.spectrum`
            (a tensor of inputs with `y`, one `(x, y)` pair, or a source of batches).
        y: The targets of in-memory `data`.
        num_terms: `num_terms(batch)`, a batch's loss terms, as for `sharpcli.spectrum`.
        batch_loss: `batch_loss(model, batch)` with `loss_fn=None`, as for
            `sharpcli.spectrum`.
        chunk_size: Examples per forward pass of in-memory `data`.
        substeps: Euler substeps per GD step.
        threshold: Critical eigenvalues are those above threshold/η (below 2): the
            oscillations live on their eigenvectors.
        steps: Integrate to this step (default: the run's last).
        start: Start from this step's checkpoint (default: step 0 for GD, the first
            checkpoint after step 0 for RMSProp, whose ν is then saved state).
        tol: Relative accuracy of the eigenvalues at each substep.
        max_iter: Most Hessian-vector products per eigenvalue solve.
        seed: Seed of the solvers' random start vectors.
        sdcp: The complementarity solver: "native", or "cvxpy" to cross-check.
        device: "cpu", "cuda", "cuda:N" or "mps".
        out: A folder for flow.csv, flow_eigenvalues.csv and flow-state.pt (None: write
            nothing).
        resume: Continue the files in `out` from flow-state.pt.
        save_every: Steps between two saves of flow-state.pt.

    Returns:
        The rows of flow.csv as dicts, for the central and the stable flow
            (docs/reference/formats.md#flow-csv).

    Raises:
        SharpError: A run that is not full-batch GD, `data` without `model`, or an argument
            out of range; the message names the argument.
    """
    given = dict(substeps=substeps, threshold=threshold, steps=steps, start=start, tol=tol,
                 max_iter=max_iter,
                 seed=seed, sdcp=sdcp, save_every=save_every, device=device, resume=resume)
    cfg = FlowConfig(**{name: value for name, value in given.items() if value is not None})
    device = cfg.device
    if model is None:
        unread = [name for name, value in (("data", data), ("y", y), ("num_terms", num_terms),
                                           ("batch_loss", batch_loss),
                                           ("chunk_size", chunk_size)) if value is not None]
        if unread:
            raise SharpError(f"{{{unread[0]}}} is read with model=, for a sharpcli.Tracker run; "
                             "a sharp train run's checkpoint names its own data", param=unread[0])
    check_chunk_size(data, y, chunk_size)
    objective = None if model is None else _objective(model, loss_fn, data, y, num_terms,
                                                      batch_loss, chunk_size, device)
    from sharpcli.flows.run import run_flow
    return run_flow(run, cfg, out=None if out is None else Path(out), write=out is not None,
                    objective=objective)


def _objective(model, loss_fn, data, y, num_terms, batch_loss, chunk_size, device) -> Objective:
    if not isinstance(model, nn.Module):
        raise SharpError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if data is None:
        raise SharpError("model= needs data= (and y= for tensors): the examples the run trained on")
    call = Call(None if batch_loss is not None else loss_fn, batch_loss=batch_loss)
    model = copy.deepcopy(model).to(device)
    source = as_data(data, y, num_terms=num_terms, chunk_size=chunk_size or DEFAULT_CHUNK,
                     device=device)
    check_objective(model, call, source)
    return Objective(model, call, source)
