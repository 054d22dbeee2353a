"""Typed settings of a training run: one flat dataclass, saved with the run and in every
checkpoint so that a checkpoint alone rebuilds its model and data."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

from sharpcli.errors import SharpError


# How a Hessian or evaluation treats BatchNorm: running statistics, or each chunk's own.
MEASUREMENT_MODES = ("eval", "train")


class Dataset(str, Enum):
    mnist1d = "mnist1d"
    digits = "digits"
    cifar10 = "cifar10"
    cifar100 = "cifar100"
    fashion_mnist = "fashion-mnist"
    mnist = "mnist"
    svhn = "svhn"


class Model(str, Enum):
    mlp = "mlp"
    cnn = "cnn"
    resnet18 = "resnet18"
    resnet50 = "resnet50"
    wrn28_10 = "wrn28-10"


class Loss(str, Enum):
    mse = "mse"
    ce = "ce"


class Optimizer(str, Enum):
    gd = "gd"
    sgd = "sgd"
    sam = "sam"
    eigen_sam = "eigen-sam"


class Schedule(str, Enum):
    constant = "constant"
    cosine = "cosine"


@dataclass
class TrainConfig:
    # data
    dataset: str = "mnist1d"
    data_dir: str = "data"
    download: bool = False
    train_size: int | None = 1000
    test_size: int | None = None  # None: the whole test split (mnist1d: 1000, digits: 360)
    # model
    model: str = "mlp"
    width: int | None = None  # None: the model's own default (mlp 100, cnn 32, resnet 64, wrn 16)
    depth: int = 2
    activation: str | None = None  # None: the model's own default (tanh for mlp/cnn, relu for ResNets)
    # loss
    loss: str = "mse"
    # optimizer
    optimizer: str = "gd"
    lr: float = 0.3  # with the defaults, λ₁ reaches 2/η ≈ 6.7 by step ~300 and hovers there
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    batch_size: int | None = None  # None: full batch
    physical_batch_size: int = 4096
    steps: int | None = None
    epochs: int | None = None
    schedule: str = "constant"
    rho: float = 0.05
    adaptive: bool = False
    alpha: float = 0.2
    eig_every: int = 100
    eig_iters: int = 5
    sam_start: int | None = None
    # measurement
    sharpness_every: int = 20
    sharpness_samples: int | None = None  # None: the whole training subset
    sharpness_k: int = 1
    sharpness_iters: int = 100
    sharpness_tol: float = 1e-3
    eval_every: int = 20
    checkpoint_every: int = 100
    keep_last: int | None = None
    # run
    seed: int = 0
    device: str = "auto"
    run_name: str | None = None
    reports_dir: str = "reports"
    checkpoints_dir: str = "checkpoints"
    resume: bool = False
    quiet: bool = False
    stop_loss: float | None = None
    stop_acc: float | None = None

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Rebuild from config.json or a checkpoint; keys this version does not know are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - RECORD_ONLY_KEYS)
        if unknown:
            raise SharpError(f"unknown config keys {unknown}; this sharpcli knows {sorted(names)}")
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Keys written into config.json beside the settings, for the record; not settings themselves.
RECORD_ONLY_KEYS = {"versions", "resolved_device", "created", "total_steps", "steps_per_epoch",
                    "num_params", "command", "input_shape", "num_classes"}

# Settings that do not change what is computed: runs differing only in these are repeats.
NON_SETTING_KEYS = {"seed", "run_name", "reports_dir", "checkpoints_dir", "resume", "quiet",
                    "device", "data_dir", "download", "physical_batch_size", "keep_last"} | RECORD_ONLY_KEYS

# Settings that a given optimizer never reads: leaving them out of a run's setting keeps,
# say, a gd run and a gd run with a different (unused) --rho in one group.
UNUSED_BY_OPTIMIZER = {
    "gd": {"rho", "adaptive", "alpha", "eig_every", "eig_iters", "sam_start"},
    "sgd": {"rho", "adaptive", "alpha", "eig_every", "eig_iters", "sam_start"},
    "sam": {"alpha", "eig_every", "eig_iters"},
    "eigen-sam": {"adaptive"},
}
