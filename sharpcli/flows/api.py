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
from sharpcli.sources.data import as_data
from sharpcli.spectra.api import api_message


def flow(run: str | Path, *, model: nn.Module | None = None, loss_fn: Callable | str | None = "mse",
         data: Any = None, y: torch.Tensor | None = None,
         num_terms: Callable[[Any], int] | None = None,
         batch_loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
         chunk_size: int = 4096, substeps: int = 4, threshold: float = 1.95,
         steps: int | None = None, start: int | None = None, tol: float = 1e-3, max_iter: int = 100, seed: int = 0,
         sdcp: str = "native", device: str = "cpu", out: str | Path | None = None,
         resume: bool = False, save_every: int = 10) -> list[dict]:
    """The rows flow.csv holds (docs/reference/formats.md#flow-csv) for the central and the
    stable flow of `run` (a run folder or name of full-batch GD or RMSProp), as dicts.

    A run of `sharp train` needs nothing else: its step-0 checkpoint names its model, data
    and loss. A run of sharpcli.Tracker needs `model` (of the run's architecture; a copy is
    given the step-0 weights, the model itself is left alone) and the examples it trained
    on: in-memory `data, y`, or `data` a source of batches, with `loss_fn` or `batch_loss`
    and `num_terms` as in `sharpcli.spectrum`. The other arguments are those of
    `sharp flow` (docs/guides/flow.md#flags). With `out`, a folder, flow.csv,
    flow_eigenvalues.csv and flow-state.pt are written there too (and `resume` continues
    them); otherwise nothing is written."""
    cfg = FlowConfig(substeps=substeps, threshold=threshold, steps=steps, start=start, tol=tol,
                     max_iter=max_iter, seed=seed, sdcp=sdcp, save_every=save_every,
                     device=device, resume=resume)
    try:
        objective = None if model is None else _objective(model, loss_fn, data, y, num_terms,
                                                          batch_loss, chunk_size, device)
        if model is None and data is not None:
            raise SharpError("data is read with model=, for a sharpcli.Tracker run; a sharp train "
                             "run's checkpoint names its own data")
        from sharpcli.flows.run import run_flow
        return run_flow(run, cfg, out=None if out is None else Path(out), write=out is not None,
                        objective=objective)
    except SharpError as err:
        raise type(err)(api_message(str(err))) from None


def _objective(model, loss_fn, data, y, num_terms, batch_loss, chunk_size, device) -> Objective:
    if not isinstance(model, nn.Module):
        raise SharpError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if data is None:
        raise SharpError("model= needs data= (and y= for tensors): the examples the run trained on")
    try:
        call = Call(None if batch_loss is not None else loss_fn, batch_loss=batch_loss)
    except ValueError as err:
        raise SharpError(str(err)) from None
    model = copy.deepcopy(model).to(device)
    source = as_data(data, y, num_terms=num_terms, chunk_size=chunk_size, device=device)
    check_objective(model, call, source)
    return Objective(model, call, source)
