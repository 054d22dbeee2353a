"""The arithmetic and memory layout of the training passes (`--precision`), and only of them.

- fp32: the passes as written (on CUDA, convolutions may use TF32, PyTorch's default).
- bf16: the forward and backward passes of training under torch.autocast to bfloat16
  (matmuls and convolutions in bf16, reductions and losses in fp32); the weights, their
  gradients, the optimizer's state and the SAM perturbation stay fp32. bfloat16 has fp32's
  exponent range, so no loss scaling is needed.
- fp64: the weights, the data set's inputs and every pass, training and measurement, in
  float64 (`sharpcli.workload.rebuild.run_dtype`); checkpoints hold float64 weights and are
  rebuilt in float64. For comparisons float32 rounding would blur: at the edge of stability
  an instability amplifies a 1e-7 rounding difference a thousandfold
  (docs/reference/processes.md#invariance).
- Measurements never see bf16: λ₁, spectra, every Hessian-vector product (Eigen-SAM's
  power iteration included) and evaluation run in fp32 with TF32 off
  (sharpcli.hessian.params.full_precision, entered by every measurement). The GD and SAM
  edges are float64 formulas of η and of ‖g‖, the norm (summed in fp32) of the gradient
  the update used, as metrics.csv defines it (docs/reference/formats.md#metrics-csv): under bf16, the autocast pass's gradient.
- channels_last: convolutional networks on CUDA keep weights and the data set in NHWC
  layout (cuDNN's fast path, airbench's choice); the values, and so every flat vector and
  checkpoint, are the same. Not on the CPU, where it would change which kernels run.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import ContextManager

import torch
from torch import nn

from sharpcli.config import Precision
from sharpcli.errors import SharpError


def check_precision(precision, device: torch.device) -> None:
    """bf16 needs a device whose autocast supports it."""
    precision = Precision.parse(precision, "precision")
    if precision is Precision.fp64 and device.type == "mps":
        raise SharpError("{precision=fp64}: MPS has no float64; use {precision=fp32}",
                         param="precision")
    if precision is not Precision.bf16:
        return
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SharpError(f"{{precision=bf16}}: {torch.cuda.get_device_name(device)} has no "
                         "bfloat16; use {precision=fp32}", param="precision")
    if device.type not in ("cuda", "cpu", "mps"):
        raise SharpError(f"{{precision=bf16}} is not supported on {device.type}", param="precision")


def training_autocast(precision, device: torch.device) -> ContextManager:
    """The context of a training pass: autocast to bf16, or nothing for fp32."""
    if Precision.parse(precision, "precision") is not Precision.bf16:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def uses_channels_last(model: nn.Module, device: torch.device) -> bool:
    """Whether a run keeps NHWC layout: convolutional networks on CUDA."""
    return device.type == "cuda" and any(isinstance(m, nn.Conv2d) for m in model.modules())
