"""The base optimizer and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import Iterable

import torch

from sharpcli.config import TrainConfig


def build_base_optimizer(config: TrainConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.SGD:
    """SGD with heavy-ball or Nesterov momentum and (coupled) weight decay; gd is the same
    optimizer fed full-batch gradients."""
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov, weight_decay=config.weight_decay)


def lr_at(step: int, total_steps: int, base_lr: float, schedule: str) -> float:
    """The step size used by update `step` (0-based) of `total_steps`."""
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        return 0.5 * base_lr * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))
    raise ValueError(f"unknown schedule {schedule!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
