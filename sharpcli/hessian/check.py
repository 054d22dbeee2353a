"""One look at the first batch before a long measurement: the model takes its inputs, the
loss is a scalar, the labels lie within the outputs. Each fault becomes one line that names
the caller's arguments by their Python names (SharpError.param: the CLI says its flags),
and the check leaves the model's mode, its buffers and the random number generators as it
found them."""

from __future__ import annotations

import torch
from torch import nn

from sharpcli.errors import SharpError
from sharpcli.hessian.calls import IGNORE_INDEX, Call, convention
from sharpcli.hessian.params import measurement_mode
from sharpcli.sources.data import Data
from sharpcli.sources.structure import describe



def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200] if text else ''}"


def check_objective(model: nn.Module, call: Call, data: Data) -> None:
    """SharpError for a batch the model cannot take, a loss that fails or is not a scalar, or
    integer labels outside the outputs (other than the padding label -100)."""
    batch = data.first_batch()
    devices = [d.index for d in {p.device for p in model.parameters()} if d.type == "cuda"]
    with torch.no_grad(), measurement_mode(model, "eval"), torch.random.fork_rng(devices=devices):
        if call.batch_loss is not None:
            loss = _run(lambda: call.batch_loss(model, batch), "batch_loss", batch)
        else:
            loss = _check_pair(model, call, batch)
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        name = "batch_loss" if call.batch_loss is not None else "loss_fn"
        raise SharpError(f"{{{name}}} must return a scalar tensor (the mean over the batch's "
                         f"loss terms), got {shape}", param=name)


def _run(fn, name: str, batch):
    """fn(), its failure a SharpError naming the argument `name` whose code failed."""
    try:
        return fn()
    except SharpError:
        raise
    except Exception as err:  # the user's code may raise anything
        raise SharpError(f"{{{name}}} fails on a batch {describe(batch)}: {_first_line(err)}",
                         param=name) from None


def _check_pair(model: nn.Module, call: Call, batch) -> torch.Tensor:
    try:
        inputs, targets = Call.split(batch)
    except ValueError:
        raise SharpError(f"{{data}}: a batch is {describe(batch)}, not an (inputs, targets) "
                         "pair; make it one, or give {batch_loss} (model, batch) → loss "
                         "instead of a loss of the outputs", param=("data", "batch_loss")) from None
    try:
        outputs = call.outputs(model, batch)
    except Exception as err:
        how = "forward(model, batch)" if call.forward is not None else convention(inputs)
        raise SharpError(f"the model cannot take a batch of {describe(inputs)} as {how}: "
                         f"{_first_line(err)}") from None
    _check_labels(call.predictions(outputs), targets)
    try:
        return call.loss_of_outputs(outputs, targets)
    except Exception as err:
        raise SharpError(f"{{loss_fn}}: the loss fails on the model's outputs "
                         f"{describe(outputs)} and targets {describe(targets)}: "
                         f"{_first_line(err)}", param="loss_fn") from None


def _check_labels(predictions, targets) -> None:
    """Integer targets index the last dimension of the predictions (padding aside)."""
    if not isinstance(predictions, torch.Tensor) or not isinstance(targets, torch.Tensor) \
            or targets.is_floating_point() or predictions.ndim < 2:
        return
    classes = predictions.shape[-1]
    bad = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= classes))
    if bool(bad.any()):
        raise SharpError(f"labels outside the model's {classes} outputs: {int(targets[bad][0])} "
                         f"(labels must lie in 0…{classes - 1}, or be {IGNORE_INDEX} for padding)")
