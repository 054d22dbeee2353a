"""`SharpnessCallback` for PyTorch Lightning 2.x (docs/guides/callbacks.md#lightning).

Where it measures. Lightning calls `on_before_optimizer_step` once per optimizer step, after
the closure's backward pass — with gradient accumulation, after the last micro-batch's, so
`.grad` holds the accumulated gradient — and before gradient clipping and the update. The
weights are then w_t with t = `trainer.global_step` (the updates done so far) and the
optimizer's state is the one before update t: exactly where a hand-written loop calls
`Tracker.step(t)`. ‖g‖ is therefore the gradient before clipping. The weights after the last
update have no gradient of their own and are not measured.

The loss. By default a batch's loss is the LightningModule's own `training_step(batch, 0)`
(its `loss` when it returns a dict), with `self.log` silenced while it runs for a
measurement; a `loss_fn(outputs, targets)` measures `module(inputs)` instead. Under
Lightning's DDP strategy every process measures its share of the measurement data (every
process holds the same data; the data layer takes each one's share, weighted exactly) and
rank 0 writes.

Logging. Each row's scalars (docs/reference/formats.md#logged-scalars) also go to every
logger of the trainer (`trainer.loggers`: TensorBoard, W&B, CSV, MLflow, ...) through its
`log_metrics(metrics, step)`, at the step t measured; Lightning's loggers act on rank 0
only, and only rank 0 calls them.

Lightning is imported as `lightning`, else as `pytorch_lightning`; the callback works with
either's Trainer.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch

from sharpcli.errors import SharpError
from sharpcli.integrations.measurer import Measurer

try:
    from lightning.pytorch import Callback
except ImportError:  # the older package name
    try:
        from pytorch_lightning import Callback
    except ImportError:
        raise ImportError("sharpcli.integrations.lightning needs PyTorch Lightning: "
                          "pip install -e '.[lightning]' in sharpcli's clone") from None


class SharpnessCallback(Callback):
    """Measures the sharpness of a Lightning training every `every` optimizer steps into
    `run_dir`: the run folder (config.json, metrics.csv) that `sharp eos`, `sharp plot` and
    `sharp summarize` read. The optimizer is the trainer's (one); its param groups give η and
    the edges at each measured step.

    Each measured row's scalars also go to the trainer's loggers at the measured step
    (docs/guides/callbacks.md#logging).

    Args:
        data: The fixed measurement set, as `data` for `sharpcli.Tracker`: one `(x, y)`
            pair of tensors, or a source of batches (a list, a DataLoader with
            shuffle=False, a callable returning an iterator).
        loss_fn: None measures the LightningModule's own `training_step(batch, 0)` (its `loss` when it
            returns a dict); a `loss_fn(outputs, targets)` measures `module(inputs)`.
        run_dir: The run folder written.
        every: Measure every `every` optimizer steps (a positive whole number).
        **options: The other keyword arguments of `sharpcli.Tracker` (`num_terms`, `k`,
            `tol`, `max_iter`, `test`, `eval_every`, `samples`, `batch_size`,
            `checkpoint_every`, `max_memory`, `resume`, `overwrite`, `loggers`, ...).

    Raises:
        SharpError: `every` is not a positive whole number, or an option is no argument of
            the Tracker (at construction, not when training starts).
    """

    def __init__(self, data: Any, loss_fn: Callable | None, run_dir: str | Path, every: int = 20,
                 **options: Any):
        self.measurer = Measurer(data, loss_fn, run_dir, every, options)

    @property
    def rows(self) -> list[dict]:
        """The rows logged so far (on every process)."""
        return self.measurer.tracker.rows if self.measurer.tracker is not None else []

    def on_train_start(self, trainer, pl_module) -> None:
        if len(trainer.optimizers) != 1:
            raise SharpError(f"SharpnessCallback measures a training with one optimizer; this "
                             f"one has {len(trainer.optimizers)}")
        batch_loss = None if self.measurer.loss_fn is not None else _training_step_loss
        self.measurer.start(pl_module, trainer.optimizers[0], loss_fn=self.measurer.loss_fn,
                            batch_loss=batch_loss, loggers=list(trainer.loggers))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.measurer.step(trainer.global_step, _epoch(trainer))

    def on_train_end(self, trainer, pl_module) -> None:
        self.measurer.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.measurer.close()


def _training_step_loss(module, batch) -> torch.Tensor:
    """The module's training_step on one batch, as a loss: its tensor, or its dict's `loss`."""
    with _quiet(module):
        out = module.training_step(batch, 0) if _takes_batch_idx(module) else module.training_step(batch)
    loss = out.get("loss") if isinstance(out, Mapping) else out
    if not isinstance(loss, torch.Tensor):
        raise SharpError(f"training_step returned {type(out).__name__}, not a loss tensor (or a "
                         "dict with `loss`): give SharpnessCallback a loss_fn")
    return loss


def _takes_batch_idx(module) -> bool:
    params = inspect.signature(module.training_step).parameters.values()
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in params) >= 2


@contextmanager
def _quiet(module):
    """`self.log` and `self.log_dict` do nothing while training_step computes a measurement's
    loss: its values would otherwise be logged as the training's, many times a step."""
    def nothing(*args, **kwargs):
        return None

    module.log, module.log_dict = nothing, nothing
    try:
        yield
    finally:
        del module.log, module.log_dict


def _epoch(trainer) -> float | None:
    """Epochs at the current step: optimizer steps over the steps of an epoch
    (⌈batches / accumulate_grad_batches⌉), None where an epoch's batches are not known."""
    batches = trainer.num_training_batches
    if not batches or math.isinf(batches):
        return None
    return trainer.global_step / math.ceil(batches / trainer.accumulate_grad_batches)
