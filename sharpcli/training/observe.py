"""What a Tracker reads off a hand-written training loop: the update rule and its edges from
the optimizer's param groups, the step size of the moment, and the run's record.

Known rules: torch.optim.SGD (gd when the loop is full batch, sgd with a batch size;
momentum and Nesterov enter the GD edge), SAM around SGD (below: the SAM edge), and
torch.optim's Adam, AdamW and RMSprop (the adaptive edge, and λ₁(P⁻¹H) with P from their
state). Any other optimizer is logged under its own name, with no edge: sharpcli does not
guess a threshold it does not know.

SAM is recognised by what the optimizer is, never by its settings (torch.optim.Adadelta's
param groups carry a `rho` too): an object with the interface of davda54/sam, the SAM
implementation most code copies — callable `first_step` and `second_step`, a
`base_optimizer` that is a torch.optim.SGD, and the radius `rho` in its param groups
(`SamOptimizer`). A SAM around another base optimizer (Adam, ...) has no edge sharpcli
knows: it is logged under its class name (docs/guides/own-model.md#tracker).
"""

from __future__ import annotations

import math
import platform
from typing import Protocol, runtime_checkable

import torch
from torch import nn

import sharpcli
from sharpcli.config import Phase
from sharpcli.edges import EdgeRule

BUILT_BY = "sharpcli.Tracker"  # config.json's mark of a run whose model sharpcli did not build


def _group(optimizer: torch.optim.Optimizer | None) -> dict:
    return optimizer.param_groups[0] if optimizer is not None and optimizer.param_groups else {}


@runtime_checkable
class SamOptimizer(Protocol):
    """The interface of a SAM optimizer in davda54/sam's style: `first_step` moves w to
    w + ε, `second_step` restores w and steps `base_optimizer` with ∇L(w + ε); the radius
    ρ is in its param groups."""

    base_optimizer: torch.optim.Optimizer
    param_groups: list

    def first_step(self, *args, **kwargs): ...

    def second_step(self, *args, **kwargs): ...


def is_sam(optimizer) -> bool:
    """SAM around SGD: a SamOptimizer whose base is a torch.optim.SGD and whose param
    groups hold ρ (module docstring)."""
    return (isinstance(optimizer, SamOptimizer)
            and isinstance(optimizer.base_optimizer, torch.optim.SGD)
            and "rho" in _group(optimizer))


def adaptive_phase(optimizer) -> str | None:
    """adam, adamw or rmsprop for torch.optim's own (AdamW first: it may subclass Adam)."""
    for cls, phase in ((torch.optim.AdamW, Phase.adamw), (torch.optim.Adam, Phase.adam),
                       (torch.optim.RMSprop, Phase.rmsprop)):
        if isinstance(optimizer, cls):
            return phase.value
    return None


def has_preconditioner(optimizer) -> bool:
    """Whether the optimizer's state defines P (Adam, AdamW, RMSprop)."""
    return adaptive_phase(optimizer) is not None


def _known(optimizer) -> bool:
    if isinstance(optimizer, SamOptimizer):  # SAM around SGD only
        return is_sam(optimizer)
    return (optimizer is None or isinstance(optimizer, torch.optim.SGD)
            or has_preconditioner(optimizer))


def phase_of(optimizer, batch_size: int | None) -> str:
    """The phase a row records: gd/sgd for SGD, sam for SAM around SGD, adam/adamw/rmsprop,
    else the optimizer's name (`unknown_name`)."""
    if is_sam(optimizer):
        return Phase.sam.value
    if not _known(optimizer):
        return unknown_name(optimizer)
    if optimizer is None or isinstance(optimizer, torch.optim.SGD):
        return Phase.gd.value if batch_size is None else Phase.sgd.value
    return adaptive_phase(optimizer)


def unknown_name(optimizer) -> str:
    """An optimizer with no known edge, named so that no reader mistakes it for a known
    rule: its class name in lower case, `sam+adam` for a SAM around Adam, and `<name>-like`
    where the class name is a known phase's (a `SAM` without davda54's interface, an `Adam`
    that is not torch's)."""
    name = type(optimizer).__name__.lower()
    if isinstance(optimizer, SamOptimizer):
        name = f"{name}+{type(optimizer.base_optimizer).__name__.lower()}"
    return f"{name}-like" if name in {p.value for p in Phase} else name


def edge_rule(optimizer) -> EdgeRule | None:
    """The edges of the optimizer's update, from its first param group (momentum, Nesterov,
    ρ, Adam's β₁, RMSprop's momentum); None for a rule whose edge sharpcli does not know."""
    if not _known(optimizer):
        return None
    group = _group(optimizer)
    return EdgeRule.from_param_groups([group], rho=float(group["rho"]) if is_sam(optimizer) else None)


def current_lr(optimizer) -> float | None:
    lr = _group(optimizer).get("lr")
    return float(lr) if isinstance(lr, (int, float)) or torch.is_tensor(lr) else None


def loop_record(model: nn.Module, optimizer, train_size: int | None, input_shape: list | None,
                test_size: int | None, *, run_name: str,
                reports_dir: str, checkpoint_dir: str, batch_size: int | None,
                settings: dict) -> dict:
    """config.json of a hand-written loop's run: what can be known of it. `optimizer` is the
    rule's name (as `phase`); its class and the scalar hyperparameters of its first param
    group are kept beside it, so `sharp summarize` groups runs by them."""
    group = {k: v for k, v in _group(optimizer).items()
             if k != "params" and (isinstance(v, (bool, int, str)) or
                                   (isinstance(v, float) and math.isfinite(v)))}
    cls = type(optimizer) if optimizer is not None else None
    return {"built_by": BUILT_BY, "run_name": run_name, "reports_dir": reports_dir,
            "checkpoint_dir": checkpoint_dir,
            "model": type(model).__name__, "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "num_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "optimizer": phase_of(optimizer, batch_size),
            "optimizer_class": f"{cls.__module__}.{cls.__qualname__}" if cls else None,
            **group, "batch_size": batch_size, "train_size": train_size,
            "test_size": test_size, "input_shape": input_shape, **settings,
            "versions": {"sharpcli": sharpcli.__version__, "torch": str(torch.__version__),
                         "python": platform.python_version()}}
