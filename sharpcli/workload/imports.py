"""Code sharpcli did not write, imported on purpose: `--model-factory`, `--loss`,
`--batch-loss`, `--num-terms` and `--data` given as MODULE:CALLABLE.

The module is imported as `python -m` would import it (the current folder first, then
PYTHONPATH): that runs the module's code, which is the point. Weights and data files are
never imported or unpickled (sharpcli.workload.weights, sharpcli.workload.user_data).
"""

from __future__ import annotations

import importlib
import json
import os
import sys

from torch import nn

from sharpcli.errors import SharpError
from sharpcli.hessian.calls import Call


def import_object(spec: str, param: str):
    """MODULE:NAME imported as Python would (the current folder first, as `python -m`);
    errors name the argument `param` that gave it (SharpError.param)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SharpError(f"{{{param}}} {spec!r}: expected MODULE:CALLABLE, e.g. mymodels:make_net",
                         param=param)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the module's own code may raise anything while importing
        raise SharpError(f"{{{param}}} {spec!r}: cannot import {module_name!r} "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})",
                         param=param) from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SharpError(f"{{{param}}} {spec!r}: module {module_name!r} has no {attr!r}",
                             param=param)
        obj = getattr(obj, part)
    if not callable(obj):
        raise SharpError(f"{{{param}}} {spec!r}: {attr!r} is a {type(obj).__name__}, not callable",
                         param=param)
    return obj


def build_user_model(factory: str, kwargs_json: str | None = None) -> nn.Module:
    """The model a --model-factory returns, called with --model-kwargs."""
    make = import_object(factory, "model_factory")
    try:
        kwargs = json.loads(kwargs_json) if kwargs_json else {}
    except ValueError as err:
        raise SharpError(f"{{model_kwargs}} is not JSON: {err}", param="model_kwargs") from None
    if not isinstance(kwargs, dict):
        raise SharpError(f"{{model_kwargs}} must be a JSON object, got {kwargs_json!r}",
                         param="model_kwargs")
    try:
        model = make(**kwargs)
    except Exception as err:
        raise SharpError(f"{{model_factory}} {factory!r} failed: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}",
                         param="model_factory") from None
    if not isinstance(model, nn.Module):
        raise SharpError(f"{{model_factory}} {factory!r} returned a {type(model).__name__}, "
                         "not a torch.nn.Module", param="model_factory")
    return model


def resolve_call(loss: str = "mse", batch_loss: str | None = None) -> Call:
    """The Call of --loss (mse, ce, model: the model's own `.loss`, or MODULE:CALLABLE
    (outputs, targets) → mean loss) or of --batch-loss MODULE:CALLABLE (model, batch) → mean
    loss."""
    if batch_loss is not None:
        if loss not in ("mse", "model"):
            raise SharpError(f"{{loss}} {loss} and {{batch_loss}}: give one of them",
                             param=("loss", "batch_loss"))
        return Call(batch_loss=import_object(batch_loss, "batch_loss"))
    if loss == "model":
        return Call(batch_loss="model")
    if loss in ("mse", "ce"):
        return Call(loss)
    return Call(import_object(loss, "loss"))
