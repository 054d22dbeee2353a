"""A model, weights, data and loss that sharpcli did not make: `sharp spectrum --model-factory`.

The factory is Python code and is imported as `python -m` would import it (the current
folder first, then PYTHONPATH): that runs the module's code, which is the point. Weights
and data files are only ever read as data (`torch.load(weights_only=True)`, or numpy's
`.npz` without pickles), never executed.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sharpcli.errors import SharpError
from sharpcli.formats.checkpoints import CHECKPOINT_FORMAT, check_payload, load_payload
from sharpcli.hessian.losses import LOSSES, LossFn


def import_object(spec: str, flag: str):
    """MODULE:NAME imported as Python would (the current folder first, as `python -m`)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SharpError(f"{flag} {spec!r}: expected MODULE:CALLABLE, e.g. mymodels:make_net")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the module's own code may raise anything while importing
        raise SharpError(f"{flag} {spec!r}: cannot import {module_name!r} "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SharpError(f"{flag} {spec!r}: module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SharpError(f"{flag} {spec!r}: {attr!r} is a {type(obj).__name__}, not callable")
    return obj


def build_user_model(factory: str, kwargs_json: str | None = None) -> nn.Module:
    """The model a --model-factory returns, called with --model-kwargs."""
    make = import_object(factory, "--model-factory")
    try:
        kwargs = json.loads(kwargs_json) if kwargs_json else {}
    except ValueError as err:
        raise SharpError(f"--model-kwargs is not JSON: {err}") from None
    if not isinstance(kwargs, dict):
        raise SharpError(f"--model-kwargs must be a JSON object, got {kwargs_json!r}")
    try:
        model = make(**kwargs)
    except Exception as err:
        raise SharpError(f"--model-factory {factory!r} failed: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}") from None
    if not isinstance(model, nn.Module):
        raise SharpError(f"--model-factory {factory!r} returned a {type(model).__name__}, "
                         "not a torch.nn.Module")
    return model


@dataclass
class Weights:
    """A weights file: the state dict, and when it is a sharpcli checkpoint its step, its
    run's config and its optimizer's state."""

    state: dict
    step: int | None = None
    config: dict | None = None
    optimizer: dict | None = None


def read_weights(path: str | Path) -> Weights:
    """A weights file read with weights_only=True: a sharpcli checkpoint (its model, step,
    run config and optimizer state), or a bare state dict."""
    path = Path(path)
    obj = load_payload(path)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        check_payload(obj, path)
        return Weights(obj["model"], obj["step"], obj["config"], obj["optimizer"] or None)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SharpError(f"{path} holds neither a state dict (a dict of tensors) nor a sharpcli "
                         "checkpoint")
    return Weights(obj)


def load_weights(model: nn.Module, state: dict, where: str) -> None:
    """Load `state` into `model`, or one line naming the first keys that do not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = ([f"missing {', '.join(missing[:3])}"] if missing else []) \
        + ([f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []) \
        + ([f"shape {', '.join(shapes[:3])}"] if shapes else [])
    if problems:
        raise SharpError(f"{where}: the weights do not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state)


@dataclass
class UserData:
    """Examples from a --data file: x, y and optionally x_test, y_test, as tensors."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None


def read_data(path: str | Path) -> UserData:
    """A `.pt` file (read with weights_only=True) or an `.npz` file (no pickles) holding x and
    y, optionally x_test and y_test. Integer labels become int64; everything else float."""
    path = Path(path)
    if not path.is_file():
        raise SharpError(f"--data {str(path)!r} does not exist")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: torch.from_numpy(f[k]) for k in f.files}
        else:
            arrays = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SharpError(f"--data {path}: not a readable .pt or .npz file ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:160] if str(err) else ''})") from None
    if not isinstance(arrays, dict) or "x" not in arrays or "y" not in arrays:
        keys = sorted(arrays) if isinstance(arrays, dict) else type(arrays).__name__
        raise SharpError(f"--data {path}: expected arrays named x and y (and optionally x_test, "
                         f"y_test), found {keys}")
    pairs = [("x", "y"), ("x_test", "y_test")]
    out = []
    for xk, yk in pairs:
        if xk not in arrays or yk not in arrays:
            out += [None, None]
            continue
        x, y = torch.as_tensor(arrays[xk]), torch.as_tensor(arrays[yk])
        if len(x) != len(y):
            raise SharpError(f"--data {path}: {xk} has {len(x)} examples and {yk} {len(y)}")
        out += [x, y.long() if not y.is_floating_point() else y]
    return UserData(*out)


def resolve_loss(name: str) -> LossFn:
    """mse or ce (sharpcli's), or MODULE:CALLABLE: a function (outputs, targets) → the mean
    loss over the examples, as a scalar tensor."""
    if name in LOSSES:
        return LOSSES[name]
    return import_object(name, "--loss")


def check_problem(model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor,
                  flag: str = "--loss") -> None:
    """One forward pass on the first examples: labels within the outputs, a scalar loss."""
    with torch.no_grad():
        out = model(x[:2])
        if not y.is_floating_point() and out.ndim >= 2:
            bad = (y < 0) | (y >= out.shape[-1])
            if bool(bad.any()):
                raise SharpError(f"labels outside the model's {out.shape[-1]} outputs: "
                                 f"{int(y[bad][0])} (labels must lie in 0…{out.shape[-1] - 1})")
        try:
            loss = loss_fn(out, y[:2])
        except Exception as err:
            raise SharpError(f"{flag}: the loss fails on the model's outputs "
                             f"{tuple(out.shape)} and targets {tuple(y[:2].shape)}: "
                             f"{type(err).__name__}: {str(err).splitlines()[0][:160]}") from None
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise SharpError(f"{flag}: the loss must return a scalar tensor (the mean over the "
                         f"examples), got {shape}")
