"""What both trainer callbacks share: a Tracker made when training starts, from the
trainer's model and optimizer, fed the trainer's optimizer-step count, closed at the end.

The trainers hand over the weights at the one moment the Tracker needs them — after the
step's (accumulated) gradient, before the update — so a row at step t describes w_t exactly
as a hand-written loop's would (docs/reference/formats.md#metrics-csv).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from torch import nn

from sharpcli.errors import SharpError
from sharpcli.hessian.finite_difference import is_fsdp2, reshard
from sharpcli.training.loggers import parse_loggers
from sharpcli.training.tracker import Tracker

# The Tracker's arguments a callback fills itself, from the trainer or its own signature.
_SET_BY_THE_CALLBACK = {"model", "loss_fn", "data", "y", "run_dir", "optimizer", "every"}


def tracker_options(options: dict) -> dict:
    """The Tracker's own keyword arguments among `options`; any other name is an error
    now, not when training starts."""
    accepted = set(inspect.signature(Tracker).parameters) - _SET_BY_THE_CALLBACK
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise SharpError(f"SharpnessCallback got unknown option {unknown[0]!r}; the options are "
                         f"the Tracker's: {', '.join(sorted(accepted))}")
    return dict(options)


def unwrap(optimizer):
    """The torch optimizer inside a trainer's wrapper (accelerate's AcceleratedOptimizer, itself
    a torch Optimizer, holds it as `.optimizer`): its class names the update rule."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


class Measurer:
    """A Tracker on `data` around a trainer: `start` when training starts, `step` at every
    optimizer step, `close` at the end."""

    def __init__(self, data, loss_fn, run_dir: str | Path, every: int, options: dict):
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise SharpError(f"every must be a positive whole number of optimizer steps, got {every!r}")
        self.data, self.loss_fn, self.run_dir, self.every = data, loss_fn, Path(run_dir), every
        self.options = tracker_options(options)
        parse_loggers(self.options.get("loggers"))  # a bad name is refused now
        self.tracker: Tracker | None = None

    def start(self, model: nn.Module, optimizer, *, loss_fn=None, batch_loss=None,
              loggers: list | None = None) -> None:
        """The Tracker of this training (under torchrun: every process makes it); its rows
        also go to the trainer's `loggers`, after any the caller named in `loggers=`."""
        self.close()
        if self.options.get("checkpoint_every") and is_fsdp2(model):
            # rank 0 writes the checkpoint, and holds only its shards of this model
            raise SharpError("checkpoint_every: the callback's checkpoints hold the whole model, "
                             "which no process holds when it is sharded by FSDP2; leave "
                             "checkpoints to the trainer (torch.distributed.checkpoint)")
        options = dict(self.options)
        options["loggers"] = parse_loggers(options.get("loggers")) + list(loggers or [])
        if batch_loss is not None and "batch_loss" not in options:
            options["batch_loss"] = batch_loss
        self.tracker = Tracker(model, loss_fn, self.data, run_dir=self.run_dir,
                               optimizer=unwrap(optimizer), every=self.every, **options)

    def step(self, step: int, epoch: float | None) -> dict | None:
        """Step t: w_t, after the step's gradient and before its update."""
        if self.tracker is None:
            return None
        with torch.enable_grad():  # a trainer may call back under no_grad
            row = self.tracker.step(step, epoch)
        # An evaluation's forward without backward leaves FSDP2's root gathered, and its
        # next forward would not gather the shards the update is about to change.
        reshard(self.tracker.model)
        return row

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
