"""`SharpnessCallback` for the Hugging Face `Trainer` (docs/guides/callbacks.md#hf).

Where it measures. A `TrainerCallback` is not given the batch, and at `on_step_end` the
update is done and the gradients zeroed; `on_pre_optimizer_step` (transformers ≥ 4.45) comes
after the step's accumulated gradient and its clipping (`max_grad_norm`), before
`optimizer.step()`, with `state.global_step` = t updates done and the scheduler's η of
update t in the param groups: the weights w_t, where a hand-written loop calls
`Tracker.step(t)`. So that is where it measures, on the fixed measurement set given at
construction; ‖g‖ is of the clipped gradient the update uses. The model and optimizer are
the ones the callback events carry (the optimizer unwrapped from accelerate's). The weights
after the last update have no gradient of their own and are not measured.

The loss. By default the model's own `.loss` on a batch (a dict holding `labels`, called as
`model(**batch)`: a Hugging Face model computes its loss); a `loss_fn(outputs, targets)`
measures `model(inputs)` on `(inputs, targets)` batches instead. For a per-token loss give
`num_terms` (a batch's unpadded tokens), so that every token weighs the same. Under
torchrun every process measures its share and rank 0 writes.

Logging. Each row's scalars (docs/reference/formats.md#logged-scalars) go through the
Trainer's own `log`, as its loss does: into `state.log_history` and to every `report_to`
integration's `on_log`, at `state.global_step` = t, the step measured (the integrations
prefix them `train/`). The callback events do not carry the Trainer, so `on_train_begin`
finds it on the call stack: the Trainer whose training loop raised the event.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable

from sharpcli.integrations.measurer import Measurer

try:
    from transformers import Trainer, TrainerCallback
except ImportError:
    raise ImportError("sharpcli.integrations.hf needs transformers: "
                      "pip install -e '.[hf]' in sharpcli's clone") from None


class SharpnessCallback(TrainerCallback):
    """Measures the sharpness of a `transformers.Trainer` training every `every` optimizer steps into
    `run_dir`: the run folder (config.json, metrics.csv) that `sharp eos`, `sharp plot` and
    `sharp summarize` read. The optimizer is the trainer's (one); its param groups give η and
    the edges at each measured step.

    Each measured row's scalars also go through the Trainer's `log` to its `report_to`
    integrations (docs/guides/callbacks.md#logging).

    Args:
        data: The fixed measurement set, as `data` for `sharpcli.Tracker`: one `(x, y)`
            pair of tensors, or a source of batches (a list, a DataLoader with
            shuffle=False, a callable returning an iterator).
        loss_fn: None measures the model's own loss, `model(**batch).loss` on dict
            batches holding `labels`; a `loss_fn(outputs, targets)` measures `model(inputs)` on
            `(inputs, targets)` batches.
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

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        loss_fn = self.measurer.loss_fn
        trainer = _calling_trainer()
        self.measurer.start(model, optimizer, loss_fn=loss_fn,
                            batch_loss="model" if loss_fn is None else None,
                            loggers=[TrainerLog(trainer)] if trainer is not None else [])
        self._steps_per_epoch = _steps_per_epoch(args, kwargs.get("train_dataloader"))

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        epoch = state.global_step / self._steps_per_epoch if self._steps_per_epoch else None
        self.measurer.step(state.global_step, epoch)

    def on_train_end(self, args, state, control, **kwargs):
        self.measurer.close()


class TrainerLog:
    """A logger that hands a row's scalars to `trainer.log`, which logs them at the
    Trainer's current step: the callback calls it at step t with global_step = t."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        assert step == self.trainer.state.global_step, (step, self.trainer.state.global_step)
        self.trainer.log(dict(metrics))  # log() adds `epoch` to the dict it is given


def _calling_trainer(depth: int = 12) -> Trainer | None:
    """The Trainer whose method is on the call stack (`train` raising on_train_begin
    through its callback handler), or None when the callback is driven by hand."""
    frame = sys._getframe(1)
    for _ in range(depth):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, Trainer):
            return owner
        frame = frame.f_back
    return None


def _steps_per_epoch(args, loader) -> int | None:
    """Optimizer steps per epoch: ⌈batches / gradient_accumulation_steps⌉ (None where the
    loader has no length)."""
    try:
        batches = len(loader)
    except TypeError:
        return None
    return math.ceil(batches / args.gradient_accumulation_steps) or None
