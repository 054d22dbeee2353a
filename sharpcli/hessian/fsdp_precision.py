"""FSDP2's mixed precision set aside for a measurement: gradients in the weights' own dtype.

Under `MixedPrecisionPolicy(param_dtype=torch.bfloat16)` FSDP2 all-gathers each block's
weights cast to bf16 and computes forward and backward in bf16. A difference of two bf16
gradients errs by 5e-3 to 2e-1 on an eigenvalue (benchmarks/RESULTS.md §10), while the
weights FSDP2 keeps, its shards, are float32. So for the length of one product every FSDP2
parameter is given the default policy (gather and reduce in the weights' dtype) and the
user's policy is put back afterwards: the product is taken in float32, as sharpcli takes
every unsharded product (hessian/params.full_precision), and training goes on in bf16.

FSDP2 has no public setter for its policy. It keeps it in three places, all read again at
each all-gather: every `FSDPParam.mp_policy` (torch 2.14: the group's `mp_policy`), resolved
into `param_dtype` / `reduce_dtype` by `FSDPParamGroup._init_mp_dtypes`; the state's
`_mp_policy` (the cast of forward inputs and outputs); and the buffers of the first all-gather
(`all_gather_outputs`, and `_unsharded_param`, a view of them), made once in that
gather's dtype and reused. The switch replaces the first two, and sets the buffers aside so
that the next gather makes float32 ones; restoring puts all three back. Every FSDP2 module
is resharded on both sides of the switch, so that no gathered weight of one dtype outlives
it. Where those internals are not found (another torch), `supported` is False and the
products stay in the policy's dtype, which their note then names.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


def _modules(model: nn.Module) -> list:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _states(model: nn.Module) -> list:
    """The FSDP2 states of the model's modules, each once."""
    states = []
    for module in _modules(model):
        state = module._get_fsdp_state()
        if all(state is not s for s in states):
            states.append(state)
    return states


def _reshard(model: nn.Module) -> None:
    for module in _modules(model):
        module.reshard()


def _mixed(state) -> bool:
    policy = getattr(state, "_mp_policy", None)
    return policy is not None and (policy.param_dtype is not None or policy.reduce_dtype is not None)


def supported(model: nn.Module) -> bool:
    """Whether this torch's FSDP2 keeps its policy where the switch looks for it."""
    for state in _states(model):
        if not hasattr(state, "_mp_policy") or not hasattr(state, "_fsdp_param_groups"):
            return False
        for group in state._fsdp_param_groups:
            if not hasattr(group, "_init_mp_dtypes"):
                return False
            if not all(hasattr(p, "mp_policy") and hasattr(p, "all_gather_outputs")
                       for p in group.fsdp_params):
                return False
    return True


def mixed_precision(model: nn.Module) -> bool:
    """Whether some FSDP2 module of the model computes or reduces in another dtype."""
    return any(_mixed(state) for state in _states(model))


@contextmanager
def weights_dtype(model: nn.Module) -> Iterator[None]:
    """Inside: every FSDP2 module gathers, computes and reduces in its weights' dtype.
    Afterwards: the user's policies and the buffers of their dtype, exactly as found."""
    states = [s for s in _states(model) if _mixed(s)]
    if not states or not supported(model):
        yield
        return
    from torch.distributed.fsdp import MixedPrecisionPolicy

    _reshard(model)
    saved = [_switch(state, MixedPrecisionPolicy()) for state in states]
    try:
        yield
    finally:
        _reshard(model)
        for state, kept in zip(states, saved):
            _restore(state, kept)


def _switch(state, plain) -> tuple:
    """`plain` for the state and each of its parameters; returns what it replaced."""
    groups = state._fsdp_param_groups
    params = [p for group in groups for p in group.fsdp_params]
    kept = (state._mp_policy, [_group_policy(g) for g in groups],
            [(p.mp_policy, p.all_gather_outputs, p.__dict__.pop("_unsharded_param", None))
             for p in params])
    state._mp_policy = plain
    for group in groups:
        _set_group_policy(group, plain)
    for p in params:
        p.mp_policy, p.all_gather_outputs = plain, []  # the next gather makes float32 buffers
    _resolve(state)
    return kept


# torch 2.14's groups resolve their parameters' dtypes from the group's own policy
# (`FSDPParamGroup.mp_policy`); 2.15's from each parameter's: both are switched.
def _group_policy(group):
    return getattr(group, "mp_policy", None)


def _set_group_policy(group, policy) -> None:
    if hasattr(group, "mp_policy"):
        group.mp_policy = policy


def _restore(state, kept: tuple) -> None:
    policy, group_policies, per_param = kept
    groups = state._fsdp_param_groups
    params = [p for group in groups for p in group.fsdp_params]
    state._mp_policy = policy
    for group, group_policy in zip(groups, group_policies):
        _set_group_policy(group, group_policy)
    for p, (p_policy, outputs, unsharded) in zip(params, per_param):
        p.mp_policy, p.all_gather_outputs = p_policy, outputs
        p.__dict__.pop("_unsharded_param", None)  # the float32 one, freed by the reshard
        if unsharded is not None:
            p._unsharded_param = unsharded
    _resolve(state)


def _resolve(state) -> None:
    """param_dtype and reduce_dtype from the policies, as FSDP2's lazy init does; before
    the model's first forward its lazy init will do it."""
    if state._is_root is None:
        return
    for group in state._fsdp_param_groups:
        group._init_mp_dtypes()
