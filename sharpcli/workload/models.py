"""The networks: an MLP, a small CNN, and the CIFAR ResNets and Wide ResNet.

All use PyTorch's default initialisation (as Cohen et al. 2021 do) and no in-place
operations, so the Hessian code can differentiate through them twice
(`torch.autograd.grad(..., create_graph=True)`). Every model uses the activation it is
given; without one, tanh for the MLP and CNN (Cohen et al.'s setting) and relu for the
ResNets and the WRN (DEFAULT_ACTIVATION). The ResNets and the WRN end with adaptive average
pooling, so they accept any image size, 8×8 digits included. Parameter counts with 10
classes on CIFAR: resnet18 11,173,962; resnet50 23,520,842; wrn28-10 36,479,194.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable

from torch import Tensor, nn

from sharpcli.checks import check_positive
from sharpcli.errors import SharpError

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,  # never inplace=True: it would break double backward
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
    "identity": nn.Identity,  # a deep linear network
    "linear": nn.Identity,
}

MODELS = ("mlp", "cnn", "resnet18", "resnet50", "wrn28-10")
DEFAULT_WIDTH = {"mlp": 100, "cnn": 32, "resnet18": 64, "resnet50": 64, "wrn28-10": 16}
# tanh for the small nets (Cohen et al.'s edge-of-stability setting), relu for the ResNets.
DEFAULT_ACTIVATION = {"mlp": "tanh", "cnn": "tanh", "resnet18": "relu", "resnet50": "relu",
                      "wrn28-10": "relu"}
DEFAULT_DEPTH = 2  # only the mlp and the cnn have a variable depth


def build_model(name: str, input_shape: tuple, num_classes: int, *, width: int | None = None,
                depth: int = DEFAULT_DEPTH, activation: str | None = None) -> nn.Module:
    """The network `name` for examples of shape `input_shape` and `num_classes` outputs.

    `width`: hidden units (mlp), channels (cnn), base channels (resnets: 64, wrn: 16);
    None takes the default; so does `activation` (DEFAULT_ACTIVATION). `depth`: hidden layers (mlp) or conv layers (cnn); the ResNets
    and the WRN have a fixed depth, so any other value than the default is refused rather
    than silently ignored.
    """
    name = str(getattr(name, "value", name))
    if name not in MODELS:
        raise SharpError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    activation = DEFAULT_ACTIVATION[name] if activation is None else str(getattr(activation, "value", activation))
    if activation not in ACTIVATIONS:
        raise SharpError(f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}")
    act = ACTIVATIONS[activation]
    width = DEFAULT_WIDTH[name] if width is None else width
    check_positive(width, "width", integer=True)
    check_positive(depth, "depth", integer=True)
    check_positive(num_classes, "the number of classes", integer=True)
    input_shape = tuple(int(s) for s in input_shape)
    if not input_shape or min(input_shape) < 1:
        raise SharpError(f"input shape {input_shape} has an empty dimension")

    if name == "mlp":
        return MLP(input_shape, num_classes, width, depth, act)
    if name == "cnn":
        if len(input_shape) > 3:
            raise SharpError(f"the cnn takes inputs of shape (L,), (C, L) or (C, H, W); "
                             f"got {input_shape}")
        return CNN(input_shape, num_classes, width, depth, act)
    if len(input_shape) != 3:
        raise SharpError(f"model {name} needs an image data set (inputs of shape (C, H, W)) such as "
                         f"cifar10 or digits; this data set has inputs of shape {input_shape}")
    if depth != DEFAULT_DEPTH:
        raise SharpError(f"{{depth}} {depth}: {name} has a fixed depth; {{depth}} applies to mlp "
                         "and cnn", param="depth")
    if name == "resnet18":
        return ResNet(BasicBlock, [2, 2, 2, 2], input_shape[0], num_classes, width, act)
    if name == "resnet50":
        return ResNet(Bottleneck, [3, 4, 6, 3], input_shape[0], num_classes, width, act)
    return WideResNet(28, 10, input_shape[0], num_classes, width, act)


# ---------------------------------------------------------------- MLP and CNN

class MLP(nn.Sequential):
    """flatten → `depth` × (linear `width`, activation) → linear head."""

    def __init__(self, input_shape, num_classes, width, depth, act):
        layers = [("flatten", nn.Flatten())]
        fan_in = math.prod(input_shape)
        for i in range(1, depth + 1):
            layers += [(f"fc{i}", nn.Linear(fan_in, width)), (f"act{i}", act())]
            fan_in = width
        layers.append(("head", nn.Linear(fan_in, num_classes)))
        super().__init__(OrderedDict(layers))


class CNN(nn.Sequential):
    """`depth` × (3-wide conv of `width` channels, activation, max-pool 2) → linear head.

    1-D inputs (L,) such as mnist1d are read as one channel, (C, L) as C channels, and use
    Conv1d; images (C, H, W) use Conv2d. Pooling stops once a side would drop below 1.
    """

    def __init__(self, input_shape, num_classes, width, depth, act):
        layers = []
        if len(input_shape) == 1:
            layers.append(("unflatten", nn.Unflatten(1, (1, input_shape[0]))))
            input_shape = (1, input_shape[0])
        conv, pool = (nn.Conv1d, nn.MaxPool1d) if len(input_shape) == 2 else (nn.Conv2d, nn.MaxPool2d)
        channels, size = input_shape[0], list(input_shape[1:])
        for i in range(1, depth + 1):
            layers += [(f"conv{i}", conv(channels, width, 3, padding=1)), (f"act{i}", act())]
            if min(size) >= 2:
                layers.append((f"pool{i}", pool(2)))
                size = [s // 2 for s in size]
            channels = width
        layers += [("flatten", nn.Flatten()),
                   ("head", nn.Linear(channels * math.prod(size), num_classes))]
        super().__init__(OrderedDict(layers))


# ---------------------------------------------------------------- CIFAR ResNets (He et al. 2016)

def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


def _projection(c_in: int, c_out: int, stride: int) -> nn.Module:
    """The shortcut: identity when shapes agree, else a strided 1×1 conv with BatchNorm."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, act):
        super().__init__()
        self.conv1, self.bn1, self.act1 = _conv3x3(c_in, planes, stride), nn.BatchNorm2d(planes), act()
        self.conv2, self.bn2, self.act2 = _conv3x3(planes, planes), nn.BatchNorm2d(planes), act()
        self.shortcut = _projection(c_in, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))  # not `out += ...`: in-place breaks autograd


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, act):
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)  # 1×1 reduce
        self.bn1, self.act1 = nn.BatchNorm2d(planes), act()
        self.conv2 = _conv3x3(planes, planes, stride)  # the stride sits on the 3×3 conv
        self.bn2, self.act2 = nn.BatchNorm2d(planes), act()
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)  # 1×1 expand
        self.bn3, self.act3 = nn.BatchNorm2d(c_out), act()
        self.shortcut = _projection(c_in, c_out, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(out + self.shortcut(x))


class ResNet(nn.Module):
    """The CIFAR variant: 3×3 stride-1 stem, no max-pool, four stages of width
    `width`·(1, 2, 4, 8) with strides (1, 2, 2, 2), global average pool, linear head."""

    def __init__(self, block, blocks_per_stage, in_channels, num_classes, width, act):
        super().__init__()
        self.stem = nn.Sequential(_conv3x3(in_channels, width), nn.BatchNorm2d(width), act())
        stages, c_in = [], width
        for i, n_blocks in enumerate(blocks_per_stage):
            planes = width * 2 ** i
            blocks = []
            for j in range(n_blocks):
                blocks.append(block(c_in, planes, 2 if (i > 0 and j == 0) else 1, act))
                c_in = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.stages(self.stem(x))))


# ---------------------------------------------------------------- WRN (Zagoruyko & Komodakis 2016)

class PreActBlock(nn.Module):
    """BN → act → conv3×3 → BN → act → conv3×3, plus the shortcut. When the shape changes,
    the shortcut is a 1×1 conv of the pre-activated input (He et al.'s identity mappings).
    No dropout: the loss must be a deterministic function of the weights."""

    def __init__(self, c_in: int, c_out: int, stride: int, act):
        super().__init__()
        self.bn1, self.act1, self.conv1 = nn.BatchNorm2d(c_in), act(), _conv3x3(c_in, c_out, stride)
        self.bn2, self.act2, self.conv2 = nn.BatchNorm2d(c_out), act(), _conv3x3(c_out, c_out)
        self.same_shape = stride == 1 and c_in == c_out
        self.shortcut = None if self.same_shape else nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = self.act1(self.bn1(x))
        out = self.conv2(self.act2(self.bn2(self.conv1(o))))
        return out + (x if self.same_shape else self.shortcut(o))


class WideResNet(nn.Module):
    """WRN-`depth`-`k`: a 3×3 stem of `width` channels, three groups of (depth − 4)/6
    pre-activation blocks of width `width`·k·(1, 2, 4) with strides (1, 2, 2), then
    BN → act → global average pool → linear head."""

    def __init__(self, depth, k, in_channels, num_classes, width, act):
        super().__init__()
        n = (depth - 4) // 6
        self.stem = _conv3x3(in_channels, width)
        groups, c_in = [], width
        for i in range(3):
            c_out = width * k * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(PreActBlock(c_in, c_out, 2 if (i > 0 and j == 0) else 1, act))
                c_in = c_out
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.Sequential(*groups)
        self.final = nn.Sequential(nn.BatchNorm2d(c_in), act(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.final(self.groups(self.stem(x))))
