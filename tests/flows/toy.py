"""A loss whose central flow is known in closed form: two valleys, each a sharp direction xᵢ
whose curvature Sᵢ(yᵢ) = cᵢyᵢ² grows along a slow direction yᵢ that the loss pulls forward,

    L(x, y) = Σᵢ ½ cᵢ yᵢ² xᵢ² − yᵢ.

From x = 0, ∇L = (0, −1), so gradient flow has x = 0 and yᵢ(t) = yᵢ(0) + ηt exactly, and its
sharpness max cᵢyᵢ² rises for ever. The central flow is the same until cᵢyᵢ² reaches 2/η; from
then on Σ = σᵢ² eₓᵢeₓᵢᵀ holds it there: 0 = ẏᵢ = −η(−1 + ½σᵢ² Sᵢ'(yᵢ)) gives
yᵢ* = √(2/(ηcᵢ)), σᵢ² = 2/Sᵢ'(yᵢ*) = 1/(cᵢyᵢ*), and the predicted loss
Σᵢ −yᵢ* + ½(2/η)σᵢ². Each substep is a Newton step on Sᵢ(yᵢ) = 2/η, so the integrated flow
reaches these values to rounding within a few substeps of the crossing.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sharpcli.hessian.calls import Call
from sharpcli.sources.data import as_data

LR = 0.1
C = (1.0, 1.5)
Y0 = (3.5, 2.5)


class Valleys(nn.Module):
    def __init__(self):
        super().__init__()
        self.x = nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.y = nn.Parameter(torch.tensor(Y0, dtype=torch.float64))

    def loss(self) -> torch.Tensor:
        c = torch.tensor(C, dtype=torch.float64)
        return (0.5 * c * self.y ** 2 * self.x ** 2 - self.y).sum()


def problem():
    """The model, its Call (a closure: the loss ignores the batch) and one dummy batch."""
    model = Valleys()
    call = Call(batch_loss=lambda m, batch: m.loss())
    return model, call, as_data(torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1))


def crossing(i: int) -> float:
    """The time at which valley i's curvature reaches 2/η under gradient flow."""
    return (held(i) - Y0[i]) / LR


def held(i: int) -> float:
    """yᵢ*: Sᵢ(yᵢ*) = 2/η."""
    return math.sqrt(2 / (LR * C[i]))


def sigma2(i: int) -> float:
    return 1 / (C[i] * held(i))
