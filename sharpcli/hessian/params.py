"""Between the model's parameter tensors and the flat vectors eigensolvers want: one place."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator, Sequence

import torch
from torch import nn

from sharpcli.config import HessianMode


def trainable_params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def named_param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters grouped by the module that owns them ("0.weight", "0.bias" → "0"), in
    model order: the blocks of a per-layer spectrum."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(name.rpartition(".")[0] or name, []).append(p)
    return groups


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of `vec` shaped like each tensor of `like` (no copy)."""
    sizes = [t.numel() for t in like]
    return [piece.view_as(t) for piece, t in zip(torch.split(vec, sizes), like)]


def num_params(params: Sequence[torch.Tensor]) -> int:
    return sum(p.numel() for p in params)


@contextmanager
def running_stats_frozen(model: nn.Module) -> Iterator[nn.Module]:
    """BatchNorm normalises with the batch's statistics and leaves its running statistics (and
    num_batches_tracked) alone; every other module runs as it is set.

    In train mode, track_running_stats=False means "use the batch's statistics and pass no
    running buffers to update": no in-place write that would invalidate a cached autograd
    graph (momentum=0 would still count batches)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracked = [m.track_running_stats for m in norms]
    try:
        for m in norms:
            m.track_running_stats = False
        yield model
    finally:
        for m, t in zip(norms, tracked):
            m.track_running_stats = t


@contextmanager
def full_precision() -> Iterator[None]:
    """float32 as written for everything inside: autocast off (a bf16 training pass may
    enclose a measurement) and TF32 off for CUDA matmuls and cuDNN convolutions, which
    PyTorch enables for convolutions by default and which carry only 10 bits of mantissa.
    The flags are put back as they were. On the CPU none of this changes a number."""
    backends = torch.backends
    new_api = hasattr(backends.cudnn, "conv") and hasattr(backends.cudnn.conv, "fp32_precision")
    if new_api:  # torch ≥ 2.9; the legacy flags must not be mixed with these
        saved = (backends.cuda.matmul.fp32_precision, backends.cudnn.conv.fp32_precision)
    else:
        saved = (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32)
    try:
        if new_api:
            backends.cuda.matmul.fp32_precision = backends.cudnn.conv.fp32_precision = "ieee"
        else:
            backends.cuda.matmul.allow_tf32 = backends.cudnn.allow_tf32 = False
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            yield
    finally:
        if new_api:
            backends.cuda.matmul.fp32_precision, backends.cudnn.conv.fp32_precision = saved
        else:
            backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32 = saved


@contextmanager
def measurement_mode(model: nn.Module, mode: str = "eval") -> Iterator[nn.Module]:
    """Put the model in the state a Hessian or evaluation is taken in, then restore it exactly.

    "eval": BatchNorm uses its running statistics, Dropout is off — the function the
    trained network computes. "train": BatchNorm normalises each chunk with its own batch
    statistics (the function the optimizer differentiated) without updating its running
    ones, Dropout still off so the operator is deterministic. Either way in full precision
    (fp32, TF32 off: `full_precision`), whatever the training passes use, and attention on
    its plain kernel (math_attention), the one that can be differentiated twice. Measuring
    never changes the model (PyHessian leaves models in eval mode; we don't).
    """
    if mode not in tuple(HessianMode):
        raise ValueError(f"mode must be one of {[m.value for m in HessianMode]}, got {mode!r}")
    flags = [(m, m.training) for m in model.modules()]
    try:
        with math_attention():
            if mode == "eval":
                model.eval()
                with full_precision():
                    yield model
            else:
                model.train()
                for m in model.modules():
                    if isinstance(m, nn.modules.dropout._DropoutNd):
                        m.eval()
                with running_stats_frozen(model), full_precision():
                    yield model
    finally:
        for m, was_training in flags:
            m.training = was_training


def math_attention():
    """torch's scaled dot-product attention on its math kernel for the duration: the fused
    kernels (flash, memory-efficient, cuDNN) have no double backward, and every Hessian-
    vector product of a transformer differentiates attention twice."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3 chooses the math kernel under double backward itself
        return nullcontext()
    return sdpa_kernel(SDPBackend.MATH)
