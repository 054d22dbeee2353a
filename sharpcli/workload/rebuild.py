"""A run's model and data rebuilt from its config: what `sharpcli.load_checkpoint` gives a
notebook, and what `sharp spectrum` and `sharp eos --from-checkpoints` measure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sharpcli.config import Precision, TrainConfig
from sharpcli.errors import SharpError
from sharpcli.formats.checkpoints import read_checkpoint
from sharpcli.hessian.losses import LossFn, get_loss
from sharpcli.hessian.params import trainable_params
from sharpcli.hessian.preconditioner import preconditioner_from_state
from sharpcli.workload.data import DataSplits, load_dataset
from sharpcli.workload.models import build_model


@dataclass
class Checkpoint:
    """A checkpoint rebuilt for analysis: the model in eval mode, its config and its data."""

    path: Path
    step: int
    epoch: float
    config: dict          # as in config.json: the settings and the record-only keys
    model: nn.Module
    device: torch.device
    payload: dict

    @property
    def settings(self) -> TrainConfig:
        """The config as typed settings, today's defaults for keys an older run lacks."""
        return TrainConfig.from_dict(self.config)

    @property
    def loss_fn(self) -> LossFn:
        return get_loss(self.config["loss"], self.config.get("label_smoothing", 0.0))

    def data(self):
        """(x_train, y_train, x_test, y_test) exactly as the run used them."""
        splits = load_run_data(self.settings, self.device)
        return splits.x_train, splits.y_train, splits.x_test, splits.y_test

    def preconditioner(self) -> torch.Tensor | None:
        """diag(P) of an adam, adamw or rmsprop checkpoint from its saved optimizer state,
        the state before this step's update
        (docs/reference/mathematics.md#preconditioned-sharpness); None at step 0, before any update."""
        if not self.settings.adaptive_optimizer:
            raise SharpError(f"{self.path}: a preconditioner needs a checkpoint of an adam, adamw "
                             f"or rmsprop run; this run used {self.settings.optimizer}")
        return preconditioner_from_state(self.payload["optimizer"], trainable_params(self.model))


def run_dtype(precision) -> torch.dtype:
    """The dtype of a run's weights and inputs: float64 for --precision fp64, else float32
    (bf16 autocasts the training passes only; its weights stay float32)."""
    fp64 = Precision.parse(precision, "precision") is Precision.fp64
    return torch.float64 if fp64 else torch.float32


def load_run_data(settings: TrainConfig, device) -> DataSplits:
    """The data set of a run, after its --train-size and --test-size, never downloaded."""
    return load_dataset(settings.dataset, data_dir=settings.data_dir, download=False,
                        train_size=settings.train_size, test_size=settings.test_size,
                        device=device).to_dtype(run_dtype(settings.precision))


def build_run_model(settings: TrainConfig, input_shape, num_classes: int) -> nn.Module:
    model = build_model(settings.model, tuple(input_shape), num_classes, width=settings.width,
                        depth=settings.depth, activation=settings.activation)
    return model.to(run_dtype(settings.precision))


def load_checkpoint(path: str | Path, device: str | torch.device | None = None) -> Checkpoint:
    """Load a checkpoint of `sharp train` for analysis, its model rebuilt from its config.

    The file is read with `torch.load(weights_only=True)`: loading never executes code.

    Args:
        path: A checkpoint file, checkpoints/<run>/step-XXXXXXXX.pt.
        device: Where the model goes (default: the CPU).

    Returns:
        The checkpoint: `ckpt.model` (in eval mode), `ckpt.config`, `ckpt.step`,
            `ckpt.loss_fn` and `ckpt.data()`, the run's exact tensors.

    Raises:
        SharpError: The file is no sharpcli checkpoint, its weights do not fit the model
            its config describes, or it was saved by a `sharpcli.Tracker` around a model
            sharpcli did not build.
    """
    payload = read_checkpoint(path)
    config = payload["config"]
    if config.get("built_by") == "sharpcli.Tracker":
        raise SharpError(f"{path} was saved by sharpcli.Tracker around a model sharpcli did not "
                         f"build ({config.get('model_class') or 'unknown'}): give its "
                         "--model-factory MODULE:CALLABLE and --data FILE or --dataset NAME")
    settings = TrainConfig.from_dict(config)
    shape, classes = config.get("input_shape"), config.get("num_classes")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if shape is None or classes is None:
        splits = load_run_data(settings, "cpu")
        shape, classes = splits.input_shape, splits.num_classes
    model = build_run_model(settings, shape, classes)
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError) as err:
        raise SharpError(f"{path}: the weights do not fit the model its config describes "
                         f"({str(err).splitlines()[0][:160]})") from None
    model.to(dev).eval()
    return Checkpoint(Path(path), payload["step"], payload["epoch"], config, model, dev, payload)
