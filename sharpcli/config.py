"""Typed settings: every choice list as an enum (the CLI's choices, the validation and the
record all read these), and the flat dataclass of a training run, saved with the run and in
every checkpoint so that a checkpoint alone rebuilds its model and data. No torch here:
`sharp --help` must not pay for importing it."""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from enum import Enum

from sharpcli.errors import SharpError


class Choice(str, Enum):
    """One of a fixed set of strings. It compares, hashes, prints and serialises as its value
    ("eigen-sam", not "Optimizer.eigen_sam"), so code and files can use plain strings."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def parse(cls, value, param: str):
        """`value` as a member; a SharpError naming the argument `param` (its Python name)
        and the choices otherwise."""
        try:
            return cls(getattr(value, "value", value))
        except ValueError:
            raise SharpError(f"unknown {{{param}}} {value!r}; expected one of "
                             f"{', '.join(c.value for c in cls)}", param=param) from None


# Seconds a process of a torchrun launch waits for the others in a collective.
DEFAULT_DIST_TIMEOUT = 600.0


class Dataset(Choice):
    mnist1d = "mnist1d"
    digits = "digits"
    cifar10 = "cifar10"
    cifar100 = "cifar100"
    fashion_mnist = "fashion-mnist"
    mnist = "mnist"
    svhn = "svhn"


class Model(Choice):
    mlp = "mlp"
    cnn = "cnn"
    resnet18 = "resnet18"
    resnet50 = "resnet50"
    wrn28_10 = "wrn28-10"


class Loss(Choice):
    mse = "mse"
    ce = "ce"


class Optimizer(Choice):
    gd = "gd"
    sgd = "sgd"
    sam = "sam"
    eigen_sam = "eigen-sam"
    adam = "adam"
    adamw = "adamw"
    rmsprop = "rmsprop"


# The update rule used at a step (metrics.csv's `phase`): an optimizer's own, so the same
# list; a sharpness-aware run's steps before --sam-start are its base's, gd or sgd.
Phase = Optimizer


# The sharpness-aware optimizers and phases: their edge is the SAM edge
# (docs/reference/mathematics.md#sam-edge).
SAM_PHASES = frozenset({Phase.sam.value, Phase.eigen_sam.value})
# The adaptive optimizers and phases: measured by the preconditioned sharpness λ₁(P⁻¹H)
# against the adaptive edge (docs/reference/mathematics.md#adaptive-edge).
ADAPTIVE_PHASES = frozenset({Phase.adam.value, Phase.adamw.value, Phase.rmsprop.value})


class Measure(Choice):
    """The quantity `sharp eos` compares with an edge (eos.csv's `measure`): auto picks the
    preconditioned sharpness in adaptive phases, the batch sharpness in sgd phases of a run
    that measured it, and λ₁ otherwise."""

    auto = "auto"
    sharpness = "sharpness"
    preconditioned_sharpness = "preconditioned_sharpness"
    batch_sharpness = "batch_sharpness"


class SamSync(Choice):
    """Which gradient a SAM step perturbs with under torchrun
    (docs/reference/processes.md#sam-sync)."""

    global_ = "global"  # the all-reduced gradient: the update one process computes
    local = "local"     # each process its own shard's gradient (m-sharpness)


class Schedule(Choice):
    constant = "constant"
    cosine = "cosine"


class HessianMode(Choice):
    """How a Hessian or evaluation treats BatchNorm: running statistics, or each chunk's own."""

    eval = "eval"
    train = "train"


class Augment(Choice):
    """Data augmentation of the training batches (sharpcli.workload.augment)."""

    auto = "auto"                          # resolved per data set: DEFAULT_AUGMENT
    none = "none"
    crop = "crop"                          # a random window of the image padded by 4
    flip_crop = "flip-crop"                # and a horizontal flip with probability 1/2
    flip_crop_cutout = "flip-crop-cutout"  # and Cutout (a 16×16 square, probability 1/2)


class Precision(Choice):
    """The arithmetic of the training passes; measurements are fp32, or fp64 in an fp64 run."""

    fp32 = "fp32"
    bf16 = "bf16"  # autocast to bfloat16 for the forward and backward passes of training
    # weights, data and every pass (measurements included) in float64: for comparisons that
    # float32 rounding would blur, as at the edge of stability, which amplifies it
    fp64 = "fp64"


class Method(Choice):
    lanczos = "lanczos"
    block = "block"      # block Lanczos (sharpcli.linalg.block_lanczos)
    power = "power"


class TraceMethod(Choice):
    auto = "auto"
    gauss_newton = "gauss-newton"
    hutchinson = "hutchinson"
    hutchpp = "hutch++"


class Split(Choice):
    train = "train"
    test = "test"


class Backend(Choice):
    native = "native"
    pyhessian = "pyhessian"


def coerce_choices(config) -> None:
    """Turn the string values of a dataclass's enum-typed fields into members (SharpError
    naming the field, which the CLI calls by its flag, for an unknown value), so that `TrainConfig(optimizer="sam")`, a config
    read from JSON and the CLI's parsed flags all hold the same thing."""
    for name, kind in _choice_fields(type(config)).items():
        value = getattr(config, name)
        if value is not None:
            setattr(config, name, kind.parse(value, name))


@functools.cache
def _choice_fields(cls) -> dict[str, type[Choice]]:
    fields = {}
    for name, hint in typing.get_type_hints(cls).items():
        for t in (hint, *typing.get_args(hint)):  # `Dataset` or `Method | None`
            if isinstance(t, type) and issubclass(t, Choice):
                fields[name] = t
    return fields


def plain(value):
    """A config value as JSON and weights_only checkpoints hold it: members become strings."""
    return value.value if isinstance(value, Choice) else value


@dataclass
class TrainConfig:
    """The settings of one `sharp train` run, one field per flag (`--train-size` is
    `train_size`); choices are enums that also accept their strings. `train_size` and
    `test_size` of None or 0 mean the whole split, recorded as None. The checks that need no
    data run when training starts (`sharpcli.training.setup.validate_config`); a recipe's
    fields are merged by `sharpcli.recipes.train_config`. Saved resolved in config.json and
    in every checkpoint (docs/reference/formats.md#config-json)."""

    # data
    dataset: Dataset = Dataset.mnist1d
    data_dir: str = "data"
    download: bool = False
    train_size: int | None = 1000  # the first N training examples; None or 0: all of them
    test_size: int | None = None  # None or 0: the whole test split (mnist1d: 1000, digits: 360)
    # model
    model: Model = Model.mlp
    width: int | None = None  # None: the model's own default (mlp 100, cnn 32, resnet 64, wrn 16)
    depth: int = 2
    activation: str | None = None  # None: the model's own default (tanh for mlp/cnn, relu for ResNets)
    # loss
    loss: Loss = Loss.mse
    # optimizer
    optimizer: Optimizer = Optimizer.gd
    lr: float = 0.3  # with the defaults, λ₁ reaches 2/η ≈ 6.7 by step ~300 and hovers there
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    # adam, adamw, rmsprop (torch.optim's own); beta2 is also RMSProp's smoothing constant
    # (torch's `alpha`, which is not --alpha: that is Eigen-SAM's α). None: the optimizer's
    # own default, 0.999 for adam/adamw and 0.99 for rmsprop.
    beta1: float = 0.9
    beta2: float | None = None
    eps: float = 1e-8
    batch_sharpness: bool = False  # measure E_B[g_Bᵀ H_B g_B / ‖g_B‖²] with λ₁ (minibatch runs)
    batch_size: int | None = None  # None: full batch
    physical_batch_size: int = 4096
    steps: int | None = None
    epochs: int | None = None
    schedule: Schedule = Schedule.constant
    rho: float = 0.05
    adaptive: bool = False
    alpha: float = 0.2
    eig_every: int = 100
    eig_iters: int = 5
    sam_start: int | None = None
    sam_sync: SamSync = SamSync.global_
    sync_bn: bool = False
    # the papers' CIFAR workloads: augmentation, label smoothing, precision, Eigen-SAM's
    # power-iteration mode, and the recipe (if any) that filled the flags not given
    augment: Augment = Augment.auto  # auto: resolve_augment (recorded resolved in config.json)
    label_smoothing: float = 0.0     # with --loss ce: targets (1 − ε)·onehot + ε/C
    precision: Precision = Precision.fp32
    eig_mode: HessianMode = HessianMode.eval  # eval: BatchNorm running statistics (official code)
    recipe: str | None = None        # a record: the recipe's flags are in the fields above
    # measurement
    sharpness_every: int = 20
    sharpness_samples: int | None = None  # None: the whole training subset
    sharpness_k: int = 1
    sharpness_iters: int = 100
    sharpness_tol: float = 1e-3  # relative accuracy of each logged λ (estimated error ≤ tol·λ)
    compile: bool = False  # torch.compile the training passes (measurements stay eager)
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
    log: str | None = None  # "tensorboard,wandb": dashboards written inside the run folder
    dist_timeout: float = DEFAULT_DIST_TIMEOUT  # seconds a process waits for the others

    def __post_init__(self) -> None:
        coerce_choices(self)
        # 0 means the whole split, as `--train-size 0` does on the command line; the config
        # records it as None, so a run and its checkpoints say "all" one way only.
        for name in ("train_size", "test_size"):
            value = getattr(self, name)
            if value == 0 and not isinstance(value, bool):
                setattr(self, name, None)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Rebuild from config.json or a checkpoint; keys this version does not know are an
        error, record-only keys are skipped, and missing keys take today's defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - RECORD_ONLY_KEYS)
        if unknown:
            raise SharpError(f"unknown config keys {unknown}; this sharpcli knows {sorted(names)}")
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict:
        return {k: plain(v) for k, v in dataclasses.asdict(self).items()}

    @property
    def sam(self) -> bool:
        """Whether the optimizer is sharpness-aware (in some phase of the run)."""
        return self.optimizer.value in SAM_PHASES

    @property
    def adaptive_optimizer(self) -> bool:
        """Whether the optimizer is Adam, AdamW or RMSProp (a diagonal preconditioner P)."""
        return self.optimizer.value in ADAPTIVE_PHASES


# Keys written into config.json beside the settings, for the record; not settings themselves.
RECORD_ONLY_KEYS = {"versions", "resolved_device", "created", "total_steps", "steps_per_epoch",
                    "num_params", "command", "input_shape", "num_classes", "world_size",
                    "memory_format"}

# Settings that do not change what is computed: runs differing only in these are repeats.
NON_SETTING_KEYS = {"seed", "run_name", "reports_dir", "checkpoints_dir", "checkpoint_dir",
                    "resume", "quiet",
                    "device", "data_dir", "download", "physical_batch_size", "keep_last",
                    "dist_timeout", "recipe", "compile", "log"} | RECORD_ONLY_KEYS

# Settings that a given optimizer never reads: leaving them out of a run's setting keeps,
# say, a gd run and a gd run with a different (unused) --rho in one group.
_SAM_ONLY = {"rho", "adaptive", "alpha", "eig_every", "eig_iters", "eig_mode", "sam_start",
             "sam_sync"}
_ADAPTIVE_ONLY = {"beta1", "beta2", "eps"}
UNUSED_BY_OPTIMIZER = {
    Optimizer.gd.value: _SAM_ONLY | _ADAPTIVE_ONLY,
    Optimizer.sgd.value: _SAM_ONLY | _ADAPTIVE_ONLY,
    Optimizer.sam.value: {"alpha", "eig_every", "eig_iters", "eig_mode"} | _ADAPTIVE_ONLY,
    Optimizer.eigen_sam.value: {"adaptive"} | _ADAPTIVE_ONLY,
    Optimizer.adam.value: _SAM_ONLY | {"momentum", "nesterov"},
    Optimizer.adamw.value: _SAM_ONLY | {"momentum", "nesterov"},
    Optimizer.rmsprop.value: _SAM_ONLY | {"beta1", "nesterov"},
}


# --augment auto: the standard augmentation of each data set's papers for minibatch training
# (flip and crop for CIFAR; crop only for SVHN, whose digits a flip would turn into other
# symbols); none for the rest. Full-batch runs never augment: GD studies one fixed function.
DEFAULT_AUGMENT = {Dataset.cifar10.value: Augment.flip_crop,
                   Dataset.cifar100.value: Augment.flip_crop,
                   Dataset.svhn.value: Augment.crop}


def resolve_augment(augment, dataset, batch_size: int | None) -> Augment:
    """The augmentation a run uses: `augment` itself unless it is auto."""
    augment = Augment.parse(augment, "augment")
    if augment is not Augment.auto:
        return augment
    if batch_size is None:
        return Augment.none
    return DEFAULT_AUGMENT.get(plain(dataset), Augment.none)


def sam_start_step(sam_start: int | None, in_epochs: bool, steps_per_epoch: int | None) -> int | None:
    """The first step of the SAM phase: --sam-start counts epochs when the run is given in
    epochs (docs/reference/mathematics.md#late-phase-sam). None: SAM from the start (or unknown steps per epoch)."""
    if sam_start is None or not in_epochs:
        return sam_start
    return sam_start * steps_per_epoch if steps_per_epoch else None


def phase_at(optimizer: str, batch_size: int | None, start: int | None, step: int) -> str:
    """The update rule used at `step`: a sharpness-aware optimizer runs its base (gd when
    full batch, sgd with a batch size) before the SAM phase's first step `start`; every other
    optimizer is its own phase throughout."""
    optimizer = plain(optimizer)
    if optimizer in SAM_PHASES and start is not None and step < start:
        return Phase.gd.value if batch_size is None else Phase.sgd.value
    return optimizer
