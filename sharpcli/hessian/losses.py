"""Training losses, each the MEAN over examples so that chunked sums can be reweighted."""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

from sharpcli.errors import SharpError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mse_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """0.5·‖f(x) − onehot(y)‖² averaged over examples (Cohen et al. 2021): summed over
    classes, not averaged over them as torch's MSELoss would. Float labels are regression
    targets of the outputs' shape: 0.5·‖f(x) − y‖², averaged over examples. Always in
    float32 or wider: under bf16 autocast the outputs are bf16, the loss is not."""
    outputs = outputs.float() if outputs.dtype in (torch.float16, torch.bfloat16) else outputs
    if labels.is_floating_point():
        diff = (outputs - labels.to(outputs.dtype).reshape(outputs.shape)).reshape(len(outputs), -1)
        return 0.5 * diff.pow(2).sum(dim=-1).mean()
    target = F.one_hot(labels, outputs.shape[-1]).to(outputs.dtype)
    return 0.5 * (outputs - target).pow(2).sum(dim=-1).mean()


def ce_loss(outputs: torch.Tensor, labels: torch.Tensor,
            label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy averaged over examples; with label smoothing ε the target is
    (1 − ε)·onehot(y) + ε/C (Szegedy et al. 2016, as torch computes it)."""
    return F.cross_entropy(outputs, labels, label_smoothing=label_smoothing)


LOSSES: dict[str, LossFn] = {"mse": mse_loss, "ce": ce_loss}


def get_loss(name: str, label_smoothing: float = 0.0) -> LossFn:
    """The loss `name`; `label_smoothing` > 0 (ce only) gives the smoothed cross-entropy."""
    try:
        loss = LOSSES[str(getattr(name, "value", name))]
    except KeyError:
        raise SharpError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}") from None
    if not label_smoothing:
        return loss
    if loss is not ce_loss:
        raise SharpError(f"{{label_smoothing}} {label_smoothing:g} applies to {{loss=ce}}, not "
                         f"{name}", param=("label_smoothing", "loss"))
    if not 0 < label_smoothing < 1:
        raise SharpError(f"{{label_smoothing}} must be in [0, 1), got {label_smoothing}",
                         param="label_smoothing")
    return functools.partial(ce_loss, label_smoothing=float(label_smoothing))


def accuracy(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
    """Fraction of examples whose arg-max output is the label (a 0-d tensor: no sync); None
    for float labels (regression targets), which have no accuracy."""
    if labels.is_floating_point():
        return None
    return (outputs.argmax(dim=-1) == labels).to(outputs.dtype).mean()
