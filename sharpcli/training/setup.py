"""Everything `sharp train` resolves before the first step: checks on the settings, the step
plan, the run's name and folders, and the data, model and optimizer themselves."""

from __future__ import annotations

import dataclasses
import math
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import sharpcli
from sharpcli.checks import check_positive
from sharpcli.config import (Augment, Optimizer, Phase, SamSync, TrainConfig, phase_at,
                             resolve_augment, sam_start_step)
from sharpcli.device import resolve_device
from sharpcli.distributed import SINGLE, Dist, process_device
from sharpcli.errors import SharpError
from sharpcli.hessian.losses import LossFn, get_loss
from sharpcli.hessian.params import trainable_params
from sharpcli.training.optim import build_base_optimizer
from sharpcli.training.parallel import data_parallel
from sharpcli.training.precision import check_precision, training_autocast, uses_channels_last
from sharpcli.workload.augment import augment, check_kind
from sharpcli.workload.data import DataSplits, load_dataset
from sharpcli.workload.rebuild import build_run_model, run_dtype

DEFAULT_STEPS = 1000


def validate_config(c: TrainConfig) -> None:
    """Every check that does not need the data: bad settings fail before any work starts.
    (Choices were checked when the config was made: its fields are enums.) Errors name the
    TrainConfig fields (SharpError.param); `sharp train` says their flags."""
    check_positive(c.lr, "lr")
    for name in ("steps", "epochs", "batch_size", "train_size", "test_size", "width",
                 "sharpness_samples", "keep_last"):
        check_positive(getattr(c, name), name, optional=True)
    for name in ("physical_batch_size", "depth", "eig_every", "eig_iters", "sharpness_k",
                 "sharpness_iters", "sharpness_tol", "eval_every", "checkpoint_every"):
        check_positive(getattr(c, name), name)
    for name in ("weight_decay", "alpha", "sharpness_every"):
        check_positive(getattr(c, name), name, allow_zero=True)
    check_positive(c.rho, "rho", allow_zero=not c.sam)
    if c.steps is not None and c.epochs is not None:
        raise SharpError("give {steps} or {epochs}, not both", param=("steps", "epochs"))
    if not 0 <= c.momentum < 1:
        raise SharpError(f"{{momentum}} must be in [0, 1), got {c.momentum}", param="momentum")
    _check_adaptive(c)
    if c.nesterov and c.momentum == 0:
        raise SharpError("{nesterov} needs {momentum} > 0", param=("nesterov", "momentum"))
    if c.optimizer is Optimizer.gd and c.batch_size is not None:
        raise SharpError("{optimizer=gd} is full-batch; drop {batch_size} or use {optimizer=sgd}",
                         param=("batch_size", "optimizer"))
    if c.adaptive and c.optimizer is not Optimizer.sam:
        raise SharpError(f"{{adaptive}} (ASAM) applies to {{optimizer=sam}}, not {c.optimizer}",
                         param=("adaptive", "optimizer"))
    if c.sam_start is not None:
        if not c.sam:
            raise SharpError("{sam_start} needs {optimizer=sam} or eigen-sam",
                             param=("sam_start", "optimizer"))
        check_positive(c.sam_start, "sam_start", allow_zero=True)
    if c.sam_sync is SamSync.local and not c.sam:
        raise SharpError("{sam_sync=local} applies to {optimizer=sam} or eigen-sam",
                         param=("sam_sync", "optimizer"))
    check_positive(c.dist_timeout, "dist_timeout")
    get_loss(c.loss, c.label_smoothing)  # label_smoothing: ce only, in [0, 1)
    if c.batch_size is None and c.augment not in (Augment.auto, Augment.none):
        raise SharpError(f"{{augment={c.augment}}} applies to minibatch training; full-batch "
                         "runs train on the un-augmented examples (give {batch_size}, or drop "
                         "{augment})", param=("augment", "batch_size"))
    if c.run_name is not None and not re.fullmatch(r"[A-Za-z0-9._=+-]+", c.run_name):
        raise SharpError(f"{{run_name}} {c.run_name!r} may only use letters, digits and . _ = + -",
                         param="run_name")


def _check_adaptive(c: TrainConfig) -> None:
    """Adam, AdamW and RMSProp settings, and batch sharpness (docs/guides/adaptive.md)."""
    for name in ("beta1", "beta2"):
        value = getattr(c, name)
        check_positive(value, name, allow_zero=True, optional=True)
        if value is not None and value >= 1:
            raise SharpError(f"{{{name}}} must be in [0, 1), got {value}", param=name)
    check_positive(c.eps, "eps")
    if c.optimizer in (Optimizer.adam, Optimizer.adamw) and (c.momentum or c.nesterov):
        raise SharpError(f"{{optimizer={c.optimizer}}} has no {{momentum}} or {{nesterov}}; its "
                         "momentum is {beta1}", param=("momentum", "nesterov", "optimizer", "beta1"))
    if c.optimizer is Optimizer.rmsprop and c.nesterov:
        raise SharpError("{optimizer=rmsprop} has heavy-ball {momentum} only, no {nesterov}",
                         param=("nesterov", "optimizer", "momentum"))
    if c.batch_sharpness and (c.batch_size is None or not c.sharpness_every):
        raise SharpError("{batch_sharpness} is measured on minibatches with λ₁: it needs "
                         "{batch_size} and {sharpness_every} > 0",
                         param=("batch_sharpness", "batch_size", "sharpness_every"))


@dataclass
class StepPlan:
    total_steps: int
    steps_per_epoch: int
    sam_start_step: int | None  # first step that uses SAM; None: SAM from the start (or no SAM)

    def epoch_at(self, step: int) -> float:
        return step / self.steps_per_epoch


def plan_steps(c: TrainConfig, n_train: int, world_size: int = 1) -> StepPlan:
    batch = c.batch_size or n_train
    if batch > n_train:
        raise SharpError(f"{{batch_size}} {batch} is larger than the {n_train} training examples",
                         param="batch_size")
    per_epoch = math.ceil(n_train / batch)
    smallest = n_train - (per_epoch - 1) * batch  # the last batch of an epoch
    if c.sam_sync is SamSync.local and min(batch, smallest) < world_size:
        raise SharpError(f"{{sam_sync=local}} needs at least one example per process in every "
                         f"batch; the batches of {batch} (the last of each epoch {smallest}) "
                         f"are split over {world_size} processes", param="sam_sync")
    if c.epochs is not None:
        total = c.epochs * per_epoch
    else:
        total = c.steps if c.steps is not None else DEFAULT_STEPS
    start = sam_start_step(c.sam_start, c.epochs is not None, per_epoch)
    if start is not None and start >= total:
        unit = "epochs" if c.epochs is not None else "steps"
        raise SharpError(f"{{sam_start}} {c.sam_start} is not before the end of training "
                         f"({total if unit == 'steps' else c.epochs} {unit})", param="sam_start")
    return StepPlan(total, per_epoch, start)


def default_run_name(c: TrainConfig) -> str:
    parts = [c.dataset, c.model, c.optimizer, f"lr{c.lr:g}"]
    if c.batch_size:
        parts.append(f"bs{c.batch_size}")
    if c.sam:
        parts.append(f"rho{c.rho:g}")
        if c.sam_start is not None:
            parts.append(f"start{c.sam_start}")
    parts.append(f"seed{c.seed}")
    return "-".join(str(p) for p in parts)


def choose_run_name(c: TrainConfig) -> str:
    """An explicit --run-name is used as given. A default name that is taken gets -2, -3…
    so that running the same command twice never overwrites a run (except with --resume,
    which continues the run of that name)."""
    base = c.run_name or default_run_name(c)
    if c.run_name or c.resume:
        return base
    name, i = base, 1
    while (Path(c.reports_dir) / name).exists() or (Path(c.checkpoints_dir) / name).exists():
        i += 1
        name = f"{base}-{i}"
    return name


class BatchSampler:
    """Minibatches as index slices of one on-device permutation per epoch, seeded by
    (seed, epoch) so that a resumed run draws exactly the batches it would have drawn."""

    def __init__(self, n: int, batch_size: int | None, steps_per_epoch: int, seed: int, device):
        self.n, self.batch_size, self.per_epoch = n, batch_size, steps_per_epoch
        self.seed, self.device = seed, device
        self._epoch, self._perm = None, None

    def indices(self, step: int) -> slice | torch.Tensor:
        if self.batch_size is None:
            return slice(0, self.n)
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.n, generator=gen).to(self.device)
            self._epoch = epoch
        return self._perm[i * self.batch_size:(i + 1) * self.batch_size]


@dataclass
class RunSetup:
    """A run ready to train: settings (run name resolved), data, model, loss, optimizer,
    step plan, folders, and the record written to config.json."""

    config: TrainConfig
    device: torch.device
    data: DataSplits
    model: nn.Module
    train_model: nn.Module  # what training passes go through: DDP around `model` under torchrun
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    plan: StepPlan
    report_dir: Path
    checkpoint_dir: Path
    record: dict
    dist: Dist = SINGLE
    channels_last: bool = False  # NHWC weights and batches (convolutional networks on CUDA)

    @property
    def params(self) -> list[nn.Parameter]:
        return trainable_params(self.model)

    def training_batch(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """The inputs step `step` trains on: augmented by (seed, step), in the run's layout."""
        x = augment(x, self.config.augment, seed=self.config.seed, step=step)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self):
        """The context of a training pass (--precision)."""
        return training_autocast(self.config.precision, self.device)

    def phase_at(self, step: int) -> Phase:
        c = self.config
        return Phase(phase_at(c.optimizer, c.batch_size, self.plan.sam_start_step, step))


def prepare(config: TrainConfig, dist: Dist = SINGLE) -> RunSetup:
    """Check the settings, load the data, build the model and optimizer (seeded), plan the
    steps and name the run; under torchrun every process does the same. The caller's
    config is left as it was."""
    validate_config(config)
    device = resolve_device(process_device(config.device, dist))
    check_precision(config.precision, device)
    config = dataclasses.replace(config, augment=resolve_augment(config.augment, config.dataset,
                                                                 config.batch_size))
    torch.manual_seed(config.seed)
    data = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download,
                        train_size=config.train_size, test_size=config.test_size,
                        device=device).to_dtype(run_dtype(config.precision))
    check_kind(config.augment, data.input_shape)
    plan = plan_steps(config, len(data.x_train), dist.world_size)
    model = build_run_model(config, data.input_shape, data.num_classes).to(device)
    channels_last = uses_channels_last(model, device)
    if channels_last:  # the same values in NHWC layout: cuDNN's fast path
        model = model.to(memory_format=torch.channels_last)
        data.x_train = data.x_train.contiguous(memory_format=torch.channels_last)
        data.x_test = data.x_test.contiguous(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in trainable_params(model))
    if config.sharpness_every and config.sharpness_k > n_params:
        raise SharpError(f"{{sharpness_k}} {config.sharpness_k} exceeds the {n_params} parameters",
                         param="sharpness_k")
    optimizer = build_base_optimizer(config, trainable_params(model))
    config = dataclasses.replace(config, run_name=dist.broadcast(choose_run_name(config)))
    record = dict(config.to_dict(), resolved_device=str(device), versions=_versions(),
                  total_steps=plan.total_steps, steps_per_epoch=plan.steps_per_epoch,
                  num_params=n_params, input_shape=list(data.input_shape),
                  num_classes=data.num_classes, world_size=dist.world_size,
                  memory_format="channels_last" if channels_last else "contiguous")
    train_model = data_parallel(model, dist, config.sync_bn)
    if config.compile:  # training passes only: measurements differentiate twice, which
        train_model = torch.compile(train_model)  # torch.compile cannot (no double backward)
    return RunSetup(config, device, data, model, train_model,
                    get_loss(config.loss, config.label_smoothing), optimizer, plan,
                    Path(config.reports_dir) / config.run_name,
                    Path(config.checkpoints_dir) / config.run_name, record, dist, channels_last)


def _versions() -> dict:
    import numpy

    # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses.
    return {"sharpcli": sharpcli.__version__, "torch": str(torch.__version__),
            "numpy": str(numpy.__version__), "python": platform.python_version()}
