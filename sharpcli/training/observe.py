"""What a Tracker reads off a hand-written training loop: the update rule and its edges from
the optimizer's param groups, the step size of the moment, and the run's record.

Known rules: torch.optim.SGD (gd when the loop is full batch, sgd with a batch size;
momentum and Nesterov enter the GD edge), SAM wrappers in the style of davda54/sam (a param
group with `rho`: the SAM edge), and torch.optim's Adam, AdamW and RMSprop (the adaptive
edge, and λ₁(P⁻¹H) with P from their state). Any other optimizer is logged under its own
name, with no edge: sharpcli does not guess a threshold it does not know.
"""

from __future__ import annotations

import math
import platform

import torch
from torch import nn

import sharpcli
from sharpcli.config import Phase
from sharpcli.edges import EdgeRule

BUILT_BY = "sharpcli.Tracker"  # config.json's mark of a run whose model sharpcli did not build


def _group(optimizer: torch.optim.Optimizer | None) -> dict:
    return optimizer.param_groups[0] if optimizer is not None and optimizer.param_groups else {}


def is_sam(optimizer) -> bool:
    """A SAM wrapper: its param groups carry the radius ρ (davda54/sam's convention)."""
    return "rho" in _group(optimizer)


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
    return (optimizer is None or isinstance(optimizer, torch.optim.SGD) or is_sam(optimizer)
            or has_preconditioner(optimizer))


def phase_of(optimizer, batch_size: int | None) -> str:
    """The phase a row records: gd/sgd for SGD, sam for a SAM wrapper, adam/adamw/rmsprop,
    else the optimizer's class name."""
    if is_sam(optimizer):
        return Phase.sam.value
    if optimizer is None or isinstance(optimizer, torch.optim.SGD):
        return Phase.gd.value if batch_size is None else Phase.sgd.value
    return adaptive_phase(optimizer) or type(optimizer).__name__.lower()


def edge_rule(optimizer) -> EdgeRule | None:
    """The edges of the optimizer's update, from its first param group (momentum, Nesterov,
    ρ, Adam's β₁, RMSprop's momentum); None for a rule whose edge sharpcli does not know."""
    if not _known(optimizer):
        return None
    group = _group(optimizer)
    return EdgeRule.from_param_groups([group], rho=float(group["rho"]) if "rho" in group else None)


def current_lr(optimizer) -> float | None:
    lr = _group(optimizer).get("lr")
    return float(lr) if isinstance(lr, (int, float)) or torch.is_tensor(lr) else None


def loop_record(model: nn.Module, optimizer, train_size: int | None, input_shape: list | None,
                test_size: int | None, *, run_name: str,
                reports_dir: str, checkpoints_dir: str, batch_size: int | None,
                settings: dict) -> dict:
    """config.json of a hand-written loop's run: what can be known of it. `optimizer` is the
    rule's name (as `phase`); its class and the scalar hyperparameters of its first param
    group are kept beside it, so `sharp summarize` groups runs by them."""
    group = {k: v for k, v in _group(optimizer).items()
             if k != "params" and (isinstance(v, (bool, int, str)) or
                                   (isinstance(v, float) and math.isfinite(v)))}
    cls = type(optimizer) if optimizer is not None else None
    return {"built_by": BUILT_BY, "run_name": run_name, "reports_dir": reports_dir,
            "checkpoints_dir": checkpoints_dir,
            "model": type(model).__name__, "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "num_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "optimizer": phase_of(optimizer, batch_size),
            "optimizer_class": f"{cls.__module__}.{cls.__qualname__}" if cls else None,
            **group, "batch_size": batch_size, "train_size": train_size,
            "test_size": test_size, "input_shape": input_shape, **settings,
            "versions": {"sharpcli": sharpcli.__version__, "torch": str(torch.__version__),
                         "python": platform.python_version()}}
