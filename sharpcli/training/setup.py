"""Everything `sharp train` resolves before the first step: checks on the settings, the
device, the step plan, and the run's folders."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from sharpcli.config import Dataset, Loss, Model, Optimizer, Schedule, TrainConfig
from sharpcli.errors import SharpError

DEFAULT_STEPS = 1000
SAM_OPTIMIZERS = ("sam", "eigen-sam")


def _choice(value: str, enum, flag: str) -> None:
    allowed = [e.value for e in enum]
    if value not in allowed:
        raise SharpError(f"unknown {flag} {value!r}; expected one of {', '.join(allowed)}")


def _positive(value, flag: str, *, allow_zero: bool = False, optional: bool = False) -> None:
    if value is None and optional:
        return
    if value is None or (value < 0 if allow_zero else value <= 0) or value != value:
        bound = "zero or more" if allow_zero else "positive"
        raise SharpError(f"{flag} must be {bound}, got {value}")
    if not math.isfinite(value):
        raise SharpError(f"{flag} must be a finite number, got {value}")


def validate_config(c: TrainConfig) -> None:
    """Every check that does not need the data: bad settings fail before any work starts."""
    _choice(c.dataset, Dataset, "--dataset")
    _choice(c.model, Model, "--model")
    _choice(c.loss, Loss, "--loss")
    _choice(c.optimizer, Optimizer, "--optimizer")
    _choice(c.schedule, Schedule, "--schedule")
    _positive(c.lr, "--lr")
    _positive(c.steps, "--steps", optional=True)
    _positive(c.epochs, "--epochs", optional=True)
    if c.steps is not None and c.epochs is not None:
        raise SharpError("give --steps or --epochs, not both")
    _positive(c.batch_size, "--batch-size", optional=True)
    _positive(c.physical_batch_size, "--physical-batch-size")
    _positive(c.train_size, "--train-size", optional=True)
    _positive(c.test_size, "--test-size", optional=True)
    _positive(c.width, "--width", optional=True)
    _positive(c.depth, "--depth")
    _positive(c.weight_decay, "--weight-decay", allow_zero=True)
    if not 0 <= c.momentum < 1:
        raise SharpError(f"--momentum must be in [0, 1), got {c.momentum}")
    if c.nesterov and c.momentum == 0:
        raise SharpError("--nesterov needs --momentum > 0")
    if c.optimizer == "gd" and c.batch_size is not None:
        raise SharpError("--optimizer gd is full-batch; drop --batch-size or use --optimizer sgd")
    if c.optimizer in SAM_OPTIMIZERS:
        _positive(c.rho, "--rho")
    else:
        _positive(c.rho, "--rho", allow_zero=True)
    _positive(c.alpha, "--alpha", allow_zero=True)
    _positive(c.eig_every, "--eig-every")
    _positive(c.eig_iters, "--eig-iters")
    if c.sam_start is not None:
        if c.optimizer not in SAM_OPTIMIZERS:
            raise SharpError("--sam-start needs --optimizer sam or eigen-sam")
        _positive(c.sam_start, "--sam-start", allow_zero=True)
    _positive(c.sharpness_every, "--sharpness-every", allow_zero=True)
    _positive(c.sharpness_samples, "--sharpness-samples", optional=True)
    _positive(c.sharpness_k, "--sharpness-k")
    _positive(c.sharpness_iters, "--sharpness-iters")
    _positive(c.sharpness_tol, "--sharpness-tol")
    _positive(c.eval_every, "--eval-every")
    _positive(c.checkpoint_every, "--checkpoint-every")
    _positive(c.keep_last, "--keep-last", optional=True)
    if c.run_name is not None and not re.fullmatch(r"[A-Za-z0-9._=+-]+", c.run_name):
        raise SharpError(f"--run-name {c.run_name!r} may only use letters, digits and . _ = + -")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SharpError(f"unknown --device {name!r}; expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SharpError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SharpError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise SharpError("--device mps: MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise SharpError(f"unsupported --device {name!r}; expected auto, cpu, cuda, cuda:N or mps")
    return device


@dataclass
class StepPlan:
    total_steps: int
    steps_per_epoch: int
    sam_start_step: int | None  # first step that uses SAM; None: SAM from the start (or no SAM)

    def epoch_at(self, step: int) -> float:
        return step / self.steps_per_epoch


def plan_steps(c: TrainConfig, n_train: int) -> StepPlan:
    batch = c.batch_size or n_train
    if batch > n_train:
        raise SharpError(f"--batch-size {batch} is larger than the {n_train} training examples")
    per_epoch = math.ceil(n_train / batch)
    if c.epochs is not None:
        total = c.epochs * per_epoch
    else:
        total = c.steps if c.steps is not None else DEFAULT_STEPS
    sam_start = None
    if c.sam_start is not None:
        sam_start = c.sam_start * per_epoch if c.epochs is not None else c.sam_start
        if sam_start >= total:
            unit = "epochs" if c.epochs is not None else "steps"
            raise SharpError(f"--sam-start {c.sam_start} is not before the end of training "
                             f"({total if unit == 'steps' else c.epochs} {unit})")
    return StepPlan(total, per_epoch, sam_start)


def default_run_name(c: TrainConfig) -> str:
    parts = [c.dataset, c.model, c.optimizer, f"lr{c.lr:g}"]
    if c.batch_size:
        parts.append(f"bs{c.batch_size}")
    if c.optimizer in SAM_OPTIMIZERS:
        parts.append(f"rho{c.rho:g}")
        if c.sam_start is not None:
            parts.append(f"start{c.sam_start}")
    parts.append(f"seed{c.seed}")
    return "-".join(parts)


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
