"""Training losses, each the MEAN over examples so that chunked sums can be reweighted."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from sharpcli.errors import SharpError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mse_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """0.5·‖f(x) − onehot(y)‖² averaged over examples (Cohen et al. 2021): summed over
    classes, not averaged over them as torch's MSELoss would. Float labels are regression
    targets of the outputs' shape: 0.5·‖f(x) − y‖², averaged over examples."""
    if labels.is_floating_point():
        diff = (outputs - labels.to(outputs.dtype).reshape(outputs.shape)).reshape(len(outputs), -1)
        return 0.5 * diff.pow(2).sum(dim=-1).mean()
    target = F.one_hot(labels, outputs.shape[-1]).to(outputs.dtype)
    return 0.5 * (outputs - target).pow(2).sum(dim=-1).mean()


def ce_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over examples."""
    return F.cross_entropy(outputs, labels)


LOSSES: dict[str, LossFn] = {"mse": mse_loss, "ce": ce_loss}


def get_loss(name: str) -> LossFn:
    try:
        return LOSSES[name]
    except KeyError:
        raise SharpError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}") from None


def accuracy(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """Fraction of examples whose arg-max output is the label (a 0-d tensor: no sync); None
    for float labels (regression targets), which have no accuracy."""
    if labels.is_floating_point():
        return None
    return (outputs.argmax(dim=-1) == labels).to(outputs.dtype).mean()
