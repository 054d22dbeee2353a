"""`sharpcli.hessian`: the Hessian of a model's mean loss as a public operator, the front door
to the solvers (`sharpcli.eigs`, `sharpcli.trace`, `sharpcli.density`) and to scipy's.

It builds the same HessianOperator `sharpcli.spectrum` measures with, after the same checks
(the model takes the first batch, the loss is a scalar); every argument is honoured or
refused, by its Python name.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from sharpcli.distributed import SINGLE, Dist
from sharpcli.errors import SharpError
from sharpcli.hessian.calls import Call
from sharpcli.hessian.check import check_objective
from sharpcli.hessian.finite_difference import is_fsdp2, reshard, resolve_hvp
from sharpcli.hessian.operator import HessianOperator
from sharpcli.hessian.params import full_precision, trainable_params
from sharpcli.sources.data import DEFAULT_CHUNK, as_data, check_chunk_size

# What a product is: "exact" is double backward (Pearlmutter); "finite-difference" central
# differences of the gradient (models whose gradient cannot be differentiated, FSDP2);
# "auto" is exact unless the model is sharded by FSDP2.
HVP = ("auto", "exact", "finite-difference")
HESSIAN_MODES = ("eval", "train")


def hessian(model: nn.Module, loss_fn: Callable | str | None, data: Any,
            y: torch.Tensor | None = None, *, params: Sequence[nn.Parameter] | None = None,
            num_terms: Callable[[Any], int] | None = None, total_terms: int | None = None,
            batch_loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
            forward: Callable[[nn.Module, Any], Any] | None = None,
            output_fn: Callable[[Any], torch.Tensor] | None = None,
            check_deterministic: bool = True, chunk_size: int | None = None,
            hvp: str = "auto", mode: str = "eval") -> HessianOperator:
    """The Hessian H = ∇²L(w) of the mean loss over `data` at the model's current weights,
    as an operator on flat parameter vectors.

    `op @ v` is Hv for a vector v of length `op.size`, `op @ V` the products with the
    columns of a (size, m) block in one pass over the data; `op.n_products` counts them,
    `op.dtype` and `op.device` are the parameters'; `op.to_scipy()` is a
    scipy.sparse.linalg.LinearOperator on float64 numpy arrays. The operator is a snapshot:
    build a new one after the weights change. The model's mode, buffers and gradients are
    left as found.

    Args:
        model: the network.
        loss_fn: `loss_fn(outputs, targets)` → the mean over the batch's loss terms, or
            "mse" / "ce"; None with `batch_loss`.
        data: in-memory inputs (with `y`), or a source of `(inputs, targets)` batches: a
            DataLoader, a list, a callable returning an iterator, a map-style Dataset.
        y: the targets of in-memory `data`.
        params: the parameters whose diagonal block of H this is (default: all trainable).
        num_terms: `num_terms(batch)` counts a batch's loss terms (default: its examples).
        total_terms: the whole data set's terms, when `num_terms` is given and they are
            known (else one pass counts them).
        batch_loss: `batch_loss(model, batch)` → the mean loss, for models computing their own.
        forward: `forward(model, batch)` → outputs, replacing model(x) / model(*x) / model(**x).
        output_fn: `output_fn(outputs)` → the predictions (default: the outputs or `.logits`).
        check_deterministic: compare two passes of a stream and refuse one that differs.
        chunk_size: examples per batch of in-memory data or of a map-style Dataset
            (default 4096); a stream comes in its own batches.
        hvp: "exact" (double backward), "finite-difference" (central differences of the
            gradient), or "auto" (exact unless the model is sharded by FSDP2).
        mode: "eval" (the default: dropout off, BatchNorm's running statistics) or "train".

    Returns:
        The HessianOperator.

    Raises:
        SharpError: an argument out of range or one that would be ignored, named as here;
            a model that cannot take the data, a loss that is not a scalar.
    """
    if not isinstance(model, nn.Module):
        raise SharpError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if mode not in HESSIAN_MODES:
        raise SharpError(f"mode must be one of {HESSIAN_MODES}, got {mode!r}")
    chosen = _params(reshard(model), params)
    product = _product(hvp, model)
    call = Call(loss_fn, batch_loss=batch_loss, forward=forward, output_fn=output_fn)
    check_chunk_size(data, y, chunk_size)
    source = as_data(data, y, num_terms=num_terms, total_terms=total_terms,
                     chunk_size=chunk_size or DEFAULT_CHUNK, device=chosen[0].device,
                     check_deterministic=check_deterministic,
                     # an FSDP2 model's processes each read their share of the data
                     dist=Dist.current() if is_fsdp2(model) else SINGLE)
    check_objective(model, call, source)
    with full_precision():  # the cached gradient graph in fp32 with TF32 off, as every product
        return HessianOperator(model, call, source, params=chosen, mode=mode, hvp=product)


def _params(model: nn.Module, params) -> list[nn.Parameter]:
    """`params` checked to be trainable parameters of `model` (default: all of them)."""
    if params is None:
        chosen = trainable_params(model)
        if not chosen:
            raise SharpError("model has no trainable parameters")
        return chosen
    chosen = list(params)
    owned = {id(p) for p in model.parameters()}
    if not chosen:
        raise SharpError("params is empty: give at least one parameter, or leave it out for all")
    if any(not isinstance(p, torch.Tensor) or id(p) not in owned for p in chosen):
        raise SharpError("params must be parameters of model (model.parameters())")
    if any(not p.requires_grad for p in chosen):
        raise SharpError("params must require gradients (a frozen parameter has no Hessian block)")
    if len({id(p) for p in chosen}) != len(chosen):
        raise SharpError("params names a parameter twice")
    return chosen


def _product(hvp: str, model: nn.Module) -> str:
    """The internal operator's product for `hvp`, "auto" resolved (finite differences for
    an FSDP2 model, whose gradient cannot be differentiated again)."""
    if hvp not in HVP:
        raise SharpError(f"hvp must be one of {HVP}, got {hvp!r}")
    return resolve_hvp(hvp, model)
