"""What `sharp spectrum` computes, as plain settings and rows: no torch here, so the CLI
starts fast and `--help` costs nothing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sharpcli.checks import check_positive
from sharpcli.config import (Backend, Dataset, HessianMode, Method, Split, TraceMethod,
                             coerce_choices)
from sharpcli.errors import SharpError
from sharpcli.sizes import parse_size
from sharpcli.spectra.block_spec import parse_blocks

# sharpcli's trace stops once stderr ≤ this·|trace|: ±3 standard errors within ±1%
NATIVE_TRACE_TOL = 3e-3


@dataclass
class SpectrumConfig:
    """What to compute at each checkpoint; the fields are the flags of `sharp spectrum`."""

    top_k: int = 5
    method: Method | None = None   # None: lanczos (native); pyhessian has power iteration only
    tol: float = 1e-3              # lanczos, block: residual ≤ tol·|λ₁|; power: relative change of λ
    check_missed: bool = True      # lanczos: restarts on the deflated operator (lanczos_top_k)
    max_iter: int | None = None    # lanczos, block: per run (default max(100, 2k)); power: per pair (100)
    block_size: int | None = None  # block: vectors per block (default top_k)
    warm_start: bool = True        # a run's checkpoints: start from the previous one's vectors
    compile: bool = False          # forward-over-reverse products through torch.compile
    hvp: str = "auto"              # exact, finite-difference; auto: finite differences for FSDP2
    trace: bool = False
    trace_probes: int = 100
    trace_method: TraceMethod = TraceMethod.auto  # gauss-newton where outputs are per example
    trace_tol: float | None = None  # None: NATIVE_TRACE_TOL natively, all probes for pyhessian
    density: bool = False
    density_runs: int = 5
    density_iters: int = 80
    density_grid: int = 1000
    density_sigma: float = 0.01    # Gaussian width relative to the spectrum's range
    per_layer: bool = False
    blocks: str | None = None      # groups of parameters by name patterns, or a preset (gpt2)
    max_memory: int | str | None = None  # what each solver keeps beyond the model and a product
    samples: int | None = None     # None: the whole split
    split: Split = Split.train
    batch_size: int | None = None  # HVP chunk; None: the run's physical_batch_size
    backend: Backend = Backend.native
    hessian_mode: HessianMode = HessianMode.eval
    preconditioned: bool = False   # P^{-1/2} H P^{-1/2}, P from an adaptive checkpoint's state
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        coerce_choices(self)

    @property
    def native_trace_tol(self) -> float | None:
        """The early-stop tolerance of sharpcli's own trace: --trace-tol, its default when
        not given, and None (every probe) for 0."""
        if self.trace_tol is None:
            return NATIVE_TRACE_TOL
        return self.trace_tol or None

    @property
    def memory_bytes(self) -> int | None:
        """--max-memory in bytes (None: no budget)."""
        return None if self.max_memory is None else parse_size(self.max_memory, "max_memory")

    @property
    def eigen_method(self) -> Method:
        if self.method is not None:
            return self.method
        return Method.power if self.backend is Backend.pyhessian else Method.lanczos


    def validate(self) -> None:
        """A SharpError naming the field (SharpError.param) for any value out of range or
        combination we refuse."""
        for name in ("top_k", "max_iter", "trace_probes", "density_runs", "density_iters",
                     "samples", "batch_size", "block_size"):
            check_positive(getattr(self, name), name, optional=True, integer=True)
        if self.density_grid < 2:
            raise SharpError(f"{{density_grid}} must be at least 2, got {self.density_grid}",
                             param="density_grid")
        for name in ("tol", "trace_tol"):
            check_positive(getattr(self, name), name, allow_zero=True, optional=True)
        check_positive(self.density_sigma, "density_sigma")
        # --max-iter's default is the solver's (sharpcli.eigs: at least 2k for Lanczos)
        if (self.eigen_method is not Method.power and self.max_iter is not None
                and self.max_iter < self.top_k):
            raise SharpError(f"{{max_iter}} {self.max_iter} is below {{top_k}} {self.top_k}: "
                             "Lanczos needs at least k iterations for k eigenvalues",
                             param=("max_iter", "top_k"))
        if self.block_size is not None and self.eigen_method is not Method.block:
            raise SharpError(f"{{block_size}} applies to {{method}} block, not {{method}} "
                             f"{self.eigen_method}", param=("block_size", "method"))
        if self.trace_method is TraceMethod.hutchpp and self.trace_probes < 3:
            raise SharpError(f"{{trace_method}} hutch++ needs {{trace_probes}} ≥ 3, got "
                             f"{self.trace_probes}", param=("trace_method", "trace_probes"))
        self.memory_bytes  # a SharpError for a size that is not one
        if self.blocks is not None:
            parse_blocks(self.blocks)
            if self.per_layer:
                raise SharpError("{blocks} and {per_layer} both choose the blocks: give one",
                                 param=("blocks", "per_layer"))
        if self.preconditioned and self.trace and self.trace_method is TraceMethod.gauss_newton:
            raise SharpError("{trace_method} gauss-newton estimates the trace of H itself; with "
                             "{preconditioned} use hutchinson or hutch++",
                             param=("trace_method", "preconditioned"))
        if self.backend is Backend.pyhessian:
            check_pyhessian_supported(self)


def check_pyhessian_supported(cfg: SpectrumConfig) -> None:
    """One SharpError listing every requested thing pyhessian cannot compute."""
    lacks = []  # (the argument, what its value asks that pyhessian cannot)
    if cfg.per_layer or cfg.blocks is not None:
        lacks.append(("per_layer" if cfg.per_layer else "blocks", "(it has no per-block Hessians)"))
    if cfg.max_memory is not None:
        lacks.append(("max_memory", "(its solvers keep what they keep)"))
    if cfg.density:
        lacks.append(("density", "(pyhessian 0.1's density() calls torch.eig, which current "
                                 "torch has removed)"))
    if cfg.method in (Method.lanczos, Method.block):
        lacks.append(("method", f"{cfg.method} (it computes eigenvalues by power iteration "
                                "only: use {method} power or leave {method} out)"))
    if cfg.compile:
        lacks.append(("compile", "(it takes its own products)"))
    if cfg.trace_method in (TraceMethod.hutchpp, TraceMethod.gauss_newton):
        lacks.append(("trace_method", f"{cfg.trace_method} (it has Hutchinson only)"))
    if cfg.hessian_mode is HessianMode.train:
        lacks.append(("hessian_mode", "train (it always puts the model in eval mode)"))
    if cfg.preconditioned:
        lacks.append(("preconditioned", "(it knows the Hessian only)"))
    if lacks:
        raise SharpError("{backend} pyhessian cannot do "
                         + "; ".join(f"{{{name}}} {why}" for name, why in lacks)
                         + "; use {backend} native",
                         param=("backend", *dict.fromkeys(name for name, _ in lacks)))


@dataclass
class SpectrumRow:
    """One row of spectrum.csv."""

    checkpoint: str
    step: int | None
    block: str
    quantity: str          # eigenvalue, trace or density
    index: int             # eigenvalues: rank, 1 = largest; trace and density: 0
    value: float
    residual: float        # ‖Hv − λv‖ for eigenpairs; standard error for trace and density
    converged: bool | None
    n_hvp: int
    note: str              # what the computation cost or fell back to (max_memory, a method); "" if nothing
    seconds: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ModelSource:
    """Where the model, data and loss come from when sharpcli did not build the model:
    `--model-factory` and its companions (docs/guides/own-model.md#any-model). With no factory, each checkpoint's
    own config says everything and these flags are errors."""

    model_factory: str | None = None  # MODULE:CALLABLE returning a torch.nn.Module
    model_kwargs: str | None = None   # JSON object of keyword arguments for the factory
    weights: str | None = None        # a state dict or a sharpcli checkpoint
    data: str | None = None           # .pt or .npz with x, y (and x_test, y_test), or MODULE:CALLABLE
    dataset: Dataset | None = None    # or one of the built-in sets
    data_dir: str = "data"
    train_size: int | None = None     # with --dataset: the first N examples, as sharp train
    test_size: int | None = None
    loss: str = "mse"                 # mse, ce, model or MODULE:CALLABLE
    batch_loss: str | None = None     # MODULE:CALLABLE (model, batch) → mean loss
    num_terms: str | None = None      # MODULE:CALLABLE batch → its loss terms
    check_deterministic: bool = True  # refuse a --data source whose passes differ
    fsdp: str | None = None           # CLASS[,CLASS]: shard those modules, then the root (FSDP2);
    #                                   "factory": the factory's model is sharded already

    def __post_init__(self) -> None:
        coerce_choices(self)

    @property
    def custom(self) -> bool:
        return self.model_factory is not None

    def validate(self, n_targets: int) -> None:
        """Errors name the fields (SharpError.param); `sharp spectrum` says their flags."""
        if not self.custom:
            given = [f for f in ("model_kwargs", "weights", "data", "dataset", "train_size",
                                 "test_size", "batch_loss", "num_terms", "fsdp")
                     if getattr(self, f) is not None]
            if self.loss != "mse":
                given.append("loss")
            if not self.check_deterministic:
                given.append("check_deterministic=False")
            if given:
                names = [g.partition("=")[0] for g in given]
                raise SharpError(f"{', '.join('{' + g + '}' for g in given)} apply with "
                                 "{model_factory}; a sharpcli checkpoint's own config names its "
                                 "model, data and loss", param=(*names, "model_factory"))
            return
        if self.fsdp is not None and not [c for c in self.fsdp.split(",") if c.strip()]:
            raise SharpError("{fsdp} needs module class names, such as GPT2Block or Block,Linear",
                             param="fsdp")
        if (self.data is None) == (self.dataset is None):
            raise SharpError("{model_factory} needs the examples: give {data} FILE or {dataset} "
                             "NAME (one of them)", param=("data", "dataset", "model_factory"))
        if self.data is not None and (self.train_size or self.test_size):
            raise SharpError("{train_size} and {test_size} apply to {dataset}, not {data}",
                             param=("train_size", "test_size", "dataset", "data"))
        if self.weights is None and n_targets == 0:
            raise SharpError("{model_factory} needs weights: give {weights} FILE or checkpoint "
                             "files / run folders as arguments", param=("weights", "model_factory"))
        for name in ("train_size", "test_size"):
            check_positive(getattr(self, name), name, optional=True, integer=True)
