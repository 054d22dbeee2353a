"""The base optimizer and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import Iterable

import torch

from sharpcli.config import TrainConfig


def build_base_optimizer(config: TrainConfig,
                         params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """torch.optim's own Adam (coupled weight decay), AdamW (decoupled) or RMSProp (its
    smoothing constant `alpha` is --beta2, its momentum --momentum, weight decay coupled);
    otherwise SGD with heavy-ball or Nesterov momentum and (coupled) weight decay, which gd
    is when fed full-batch gradients and SAM steps around."""
    c = config
    if c.optimizer in ("adam", "adamw"):
        adam = torch.optim.Adam if c.optimizer == "adam" else torch.optim.AdamW
        return adam(params, lr=c.lr, betas=(c.beta1, 0.999 if c.beta2 is None else c.beta2),
                    eps=c.eps, weight_decay=c.weight_decay)
    if c.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=c.lr, alpha=0.99 if c.beta2 is None else c.beta2,
                                   eps=c.eps, weight_decay=c.weight_decay, momentum=c.momentum)
    return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov,
                           weight_decay=c.weight_decay)


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
