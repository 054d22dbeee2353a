"""How a batch becomes a loss: the calling conventions every measurement uses.

A batch is an `(inputs, targets)` pair. The model is called with the inputs as PyTorch code
calls models — `model(x)` for a tensor, `model(*x)` for a tuple or list, `model(**x)` for a
mapping — or through a `forward(model, batch)` of the caller's; the loss is
`loss_fn(outputs, targets)`, the mean over that batch's loss terms. Models that compute
their own loss (a Hugging Face model given `labels` returns `.loss`) take a closure
`batch_loss(model, batch)` instead, and then a batch may be any structure.

Outputs may be a tensor, a dict or a ModelOutput. The loss gets them as the model returned
them; what the accuracy and the Gauss–Newton trace need, the predictions, is
`output_fn(outputs)`: by default the outputs themselves when they are a tensor, else their
`logits`. A named loss ("mse", "ce") is applied to the predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call

from sharpcli.errors import SharpError
from sharpcli.hessian.losses import LOSSES, LossFn, accuracy
from sharpcli.sources.structure import plain

IGNORE_INDEX = -100  # the label torch's cross_entropy and Hugging Face skip: padding


class CallError(SharpError, ValueError):
    """A loss, closure or forward a Call cannot use, naming the argument (SharpError.param);
    a ValueError too, for code that builds Calls and catches those."""


def call_model(model: nn.Module, inputs):
    """model(x), model(*x) or model(**x) by the structure of the inputs."""
    if isinstance(inputs, torch.Tensor):
        return model(inputs)
    inputs = plain(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, Sequence) and not isinstance(inputs, str):
        return model(*inputs)
    return model(inputs)


def convention(inputs) -> str:
    """The call `call_model` makes, in words, for error messages."""
    if isinstance(inputs, torch.Tensor):
        return "model(inputs)"
    if isinstance(plain(inputs), Mapping):
        return "model(**inputs)"
    return "model(*inputs)" if isinstance(inputs, Sequence) else "model(inputs)"


def default_predictions(outputs):
    """A tensor as it is; else the `logits` of a ModelOutput or dict; else None."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping) and isinstance(outputs.get("logits"), torch.Tensor):
        return outputs["logits"]
    logits = getattr(outputs, "logits", None)
    return logits if isinstance(logits, torch.Tensor) else None


def masked_accuracy(predictions: torch.Tensor, targets: torch.Tensor,
                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor | None:
    """The fraction of targets whose arg-max prediction is right, over the targets that are
    not `ignore_index` (a 0-d tensor); None for float targets or shapes that do not pair
    (predictions (..., C) against targets (...))."""
    if targets.is_floating_point() or predictions.shape[:-1] != targets.shape:
        return None
    keep = targets != ignore_index
    if bool(keep.all()):  # no padding: exactly the plain accuracy
        return accuracy(predictions, targets)
    hits = (predictions.argmax(dim=-1) == targets) & keep
    return hits.sum().to(predictions.dtype) / keep.sum().clamp(min=1)


def model_loss(model: nn.Module, batch) -> torch.Tensor:
    """The loss the model computes itself: the `loss` of its outputs when called with the
    whole batch by structure (a Hugging Face model given a dict batch with `labels`)."""
    outputs = call_model(model, batch)
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
    if not isinstance(loss, torch.Tensor):
        raise ValueError(f"the model's outputs ({type(outputs).__name__}) hold no loss: give it "
                         "the labels, or use a loss_fn")
    return loss


class Call:
    """The convention a measurement calls a model and its loss by (see the module docstring).

    Give `loss_fn` (a callable (outputs, targets) → mean loss, or "mse" / "ce"), or
    `batch_loss` (a callable (model, batch) → mean loss, or "model": the model's own
    `.loss`, `model_loss`), not both. `forward(model, batch)`
    replaces the call by structure; `output_fn(outputs)` picks the predictions."""

    def __init__(self, loss_fn: LossFn | str | None = None, *,
                 batch_loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
                 forward: Callable[[nn.Module, Any], Any] | None = None,
                 output_fn: Callable[[Any], torch.Tensor] | None = None):
        if (loss_fn is None) == (batch_loss is None):
            raise CallError("give {loss_fn} or {batch_loss} (one of them)",
                            param=("loss_fn", "batch_loss"))
        if batch_loss is not None and forward is not None:
            raise CallError("{forward} applies with {loss_fn}; {batch_loss} calls the model "
                            "itself", param=("forward", "loss_fn", "batch_loss"))
        if batch_loss == "model":
            batch_loss = model_loss
        self.named = isinstance(loss_fn, str)
        if self.named and loss_fn not in LOSSES:
            raise CallError(f"{{loss_fn}}={loss_fn!r}: expected a callable or one of "
                            f"{sorted(LOSSES)}", param="loss_fn")
        for name, fn in (("loss_fn", loss_fn), ("batch_loss", batch_loss), ("forward", forward),
                         ("output_fn", output_fn)):
            if fn is not None and not callable(fn) and not (name == "loss_fn" and self.named):
                raise CallError(f"{{{name}}} must be callable, got {type(fn).__name__}", param=name)
        self.loss_fn = LOSSES[loss_fn] if self.named else loss_fn
        self.batch_loss, self.forward, self.output_fn = batch_loss, forward, output_fn

    @classmethod
    def of(cls, loss) -> "Call":
        """`loss` as a Call: a Call as it is, a callable or a name as its loss_fn."""
        return loss if isinstance(loss, Call) else cls(loss)

    @property
    def plain(self) -> bool:
        """model(x) and loss_fn(outputs, y): the convention whose per-example pieces the
        Gauss–Newton trace and the PyHessian backend need."""
        return self.batch_loss is None and self.forward is None and self.output_fn is None

    # ---------------------------------------------------------------- one batch

    @staticmethod
    def split(batch) -> tuple[Any, Any]:
        """(inputs, targets) of a batch pair."""
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            return batch[0], batch[1]
        raise ValueError("a batch must be an (inputs, targets) pair")

    def outputs(self, model: nn.Module, batch):
        if self.forward is not None:
            return self.forward(model, batch)
        return call_model(model, self.split(batch)[0])

    def predictions(self, outputs) -> torch.Tensor | None:
        return self.output_fn(outputs) if self.output_fn is not None else default_predictions(outputs)

    def loss_of_outputs(self, outputs, targets) -> torch.Tensor:
        if self.named:
            return self.loss_fn(self.predictions(outputs), targets)
        return self.loss_fn(outputs, targets)

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        """The batch's mean loss at the model's weights."""
        if self.batch_loss is not None:
            return self.batch_loss(model, batch)
        return self.loss_of_outputs(self.outputs(model, batch), self.split(batch)[1])

    def loss_and_accuracy(self, model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's mean loss and accuracy from one forward pass (no accuracy for a
        batch_loss closure, whose targets sharpcli does not see)."""
        if self.batch_loss is not None:
            return self.batch_loss(model, batch), None
        outputs, targets = self.outputs(model, batch), self.split(batch)[1]
        loss = self.loss_of_outputs(outputs, targets)
        preds = self.predictions(outputs)
        if preds is None or not isinstance(targets, torch.Tensor):
            return loss, None
        return loss, masked_accuracy(preds, targets)

    def functional_loss(self, model: nn.Module, weights: dict[str, torch.Tensor], batch):
        """The batch's mean loss with the named parameters replaced by `weights` (the others
        and the buffers the module's own), for torch.func transforms."""
        if self.batch_loss is None and self.forward is None:
            inputs, targets = self.split(batch)
            if isinstance(inputs, torch.Tensor):  # the common case, as torch.compile likes it
                return self.loss_of_outputs(functional_call(model, weights, (inputs,)), targets)
        return functional_call(_Bound(model, self), {f"model.{n}": w for n, w in weights.items()},
                               (batch,))


class _Bound(nn.Module):
    """A model and a Call as one module, so that torch.func.functional_call can swap the
    model's weights under any convention, closures included."""

    def __init__(self, model: nn.Module, call: Call):
        super().__init__()
        self.model = model
        self.call = call

    def forward(self, batch):
        return self.call.loss(self.model, batch)
