"""A weights file for a model sharpcli did not build: a state dict or a sharpcli checkpoint,
only ever read as data (`torch.load(weights_only=True)`), never executed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sharpcli.errors import SharpError
from sharpcli.formats.checkpoints import CHECKPOINT_FORMAT, check_payload, load_payload
from sharpcli.hessian.finite_difference import is_fsdp2


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
    check_fits(model, state, where)
    model.load_state_dict(state)


def check_fits(model: nn.Module, state: dict, where: str) -> None:
    """One line naming the first keys of `state` that do not fit `model`, if any."""
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


def load_sharded_weights(model: nn.Module, state: dict, where: str) -> None:
    """`--fsdp factory`: whole weights (a state dict, every process reading the file) into
    the model the factory sharded, each process keeping its shards
    (torch.distributed.checkpoint's full-state-dict loading); one line when the factory's
    model is not sharded or the weights do not fit it."""
    if not is_fsdp2(model):
        raise SharpError("{fsdp=factory}: the {model_factory} model is not sharded by FSDP2 "
                         "(no parameter is a DTensor); call fully_shard in the factory, or give "
                         "{fsdp} the module classes to shard", param=("fsdp", "model_factory"))
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    check_fits(model, state, where)  # DTensors have the whole shapes
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
