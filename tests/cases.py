"""The small (model, loss) problems the tests of the Hessian core share, in the manner of
curvlinops' test/cases.py: each case builds its model and its examples from a seed, in
float64 unless asked otherwise, small enough for a dense Hessian (about 150 parameters).

`CASES` are the problems whose Hessian does not depend on the train/eval mode; the
BatchNorm cases (`BN_CASES`) are kept apart because every test of them has to say which mode
it measures. Models are nn.Sequential, so a parameter block's name is its index ("4" is the
MLP's output layer). Tests that need a special model (a quadratic with a chosen spectrum,
tied weights, a layer called twice) build it where they use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import nn

from sharpcli.hessian.losses import ce_loss, mse_loss

N = 23  # examples: 23 is prime, so every chunk size below 23 leaves a shorter last chunk
CLASSES = 3


def mlp(hidden: int = 8) -> nn.Module:
    """6 → hidden → hidden → 3 with tanh: 155 parameters at hidden = 8."""
    return nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, CLASSES))


def cnn(channels: int = 3) -> nn.Module:
    """Two 3×3 convolutions on 1×6×6 images, then a linear head: 153 parameters."""
    return nn.Sequential(nn.Conv2d(1, channels, 3), nn.Tanh(), nn.Conv2d(channels, channels, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(channels * 2 * 2, CLASSES))


def bn_net() -> nn.Module:
    """BatchNorm (running statistics to keep or not) and dropout (randomness in train mode)
    between two linear layers: 69 parameters; the BatchNorm block is "1", dropout "3"."""
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.5),
                         nn.Linear(6, CLASSES))


class Instance(NamedTuple):
    model: nn.Module
    loss_fn: Callable
    x: torch.Tensor
    y: torch.Tensor


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    loss_fn: Callable

    def __call__(self, n: int = N, seed: int = 0, dtype: torch.dtype = torch.float64,
                 **sizes) -> Instance:
        """A fresh model (weights from `seed`, `sizes` passed to its builder) and n examples
        (from seed + 1), both in `dtype`; labels in 0..CLASSES-1."""
        torch.manual_seed(seed)
        model = self.build(**sizes).to(dtype)
        gen = torch.Generator().manual_seed(seed + 1)
        x = torch.randn(n, *self.input_shape, generator=gen, dtype=dtype)
        y = torch.randint(0, CLASSES, (n,), generator=gen)
        return Instance(model, self.loss_fn, x, y)


MLP_MSE = Case("mlp-mse", mlp, (6,), mse_loss)
MLP_CE = Case("mlp-ce", mlp, (6,), ce_loss)
CNN_MSE = Case("cnn-mse", cnn, (1, 6, 6), mse_loss)
CNN_CE = Case("cnn-ce", cnn, (1, 6, 6), ce_loss)
BN_MSE = Case("bn-mse", bn_net, (5,), mse_loss)
BN_CE = Case("bn-ce", bn_net, (5,), ce_loss)

CASES = [MLP_MSE, MLP_CE, CNN_MSE, CNN_CE]
BN_CASES = [BN_MSE, BN_CE]
