"""The subjects of `sharp spectrum` and `sharp flow`: each checkpoint the arguments name
(workload.targets) with its model, loss and examples — the run's own, or with
--model-factory the user's model, examples and loss."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from sharpcli.errors import SharpError
from sharpcli.hessian.params import trainable_params
from sharpcli.hessian.preconditioner import preconditioner_from_state
from sharpcli.interrupt import check_stop
from sharpcli.spectra.config import ModelSource
from sharpcli.hessian.calls import Call
from sharpcli.hessian.finite_difference import (FACTORY, require_processes,
                                                shard_by_class)
from sharpcli.workload.imports import build_user_model, import_object, resolve_call
from sharpcli.workload.user_data import (UserData, UserSource, is_callable_spec,
                                         load_user_source, read_data)
from sharpcli.workload.weights import load_sharded_weights, load_weights, read_weights
from sharpcli.workload.data import DataSplits, load_dataset
from sharpcli.workload.targets import Target, load_targets, report_dir_for


@dataclass
class Subject:
    """What one target of `sharp spectrum` is measured on: a model at its weights, its loss,
    its examples, and where its rows go."""

    target: Target
    step: int | None
    model: nn.Module
    call: Call
    splits: DataSplits | UserData | UserSource
    chunk_size: int
    report_dir: Path
    preconditioner: Callable[[], torch.Tensor | None]  # diag(P) of an adaptive run's state
    num_terms: Callable | None = None  # --num-terms: a batch's loss terms


def subjects(targets: list[Target], device, source: ModelSource | None = None, *,
             should_stop: Callable[[], bool] | None = None,
             on_start: Callable[[int, int, Path], None] | None = None,
             dist=None) -> Iterator[Subject]:
    """Each target as a Subject: a sharpcli checkpoint rebuilt from its own config, or, with
    a --model-factory source, the user's model loaded with the target's weights."""
    if source is None or not source.custom:
        for target, ckpt, splits in load_targets(targets, device, should_stop=should_stop,
                                                 on_start=on_start, dist=dist):
            yield Subject(target, ckpt.step, ckpt.model, Call(ckpt.loss_fn), splits,
                          ckpt.settings.physical_batch_size, report_dir_for(target, ckpt.config),
                          ckpt.preconditioner)
        return
    sharded = source.fsdp == FACTORY  # the factory returns the model sharded already
    if sharded:
        require_processes(dist)
    model = build_user_model(source.model_factory, source.model_kwargs)
    call = resolve_call(source.loss, source.batch_loss)
    num_terms = import_object(source.num_terms, "num_terms") if source.num_terms else None
    splits = _user_examples(source, model, device)
    for i, target in enumerate(targets):
        check_stop(should_stop, dist)
        if on_start is not None:
            on_start(i, len(targets), target.checkpoint)
        weights = read_weights(target.checkpoint)
        if source.fsdp and i:  # the last target's model is sharded: load into a fresh one
            model = build_user_model(source.model_factory, source.model_kwargs)
        if sharded:
            load_sharded_weights(model, weights.state, str(target.checkpoint))
            model.eval()  # its shards stay where the factory put them
        else:
            load_weights(model, weights.state, str(target.checkpoint))
            model.to(device).eval()
        if source.fsdp and not sharded:
            shard_by_class(model, source.fsdp, dist)
        yield Subject(target, weights.step, model, call, splits, 4096,
                      report_dir_for(target, weights.config) if weights.config
                      else target.checkpoint.parent, _saved_preconditioner(weights, model, target),
                      num_terms)


def _saved_preconditioner(weights, model: nn.Module, target: Target):
    """diag(P) from the optimizer state a checkpoint of an adaptive loop saved."""
    def diagonal():
        if not weights.optimizer:
            raise SharpError(f"{target.checkpoint}: {{preconditioned}} needs an optimizer state; "
                             "give a checkpoint saved by sharp train or sharpcli.Tracker",
                             param="preconditioned")
        try:
            return preconditioner_from_state(weights.optimizer, trainable_params(model))
        except ValueError as err:
            raise SharpError(f"{target.checkpoint}: {{preconditioned}}: {err}",
                             param="preconditioned") from None
    return diagonal


def _user_examples(source: ModelSource, model: nn.Module, device) -> DataSplits | UserData | UserSource:
    """The examples of --data (a file's, in the model's floating dtype, or a callable's
    source of batches) or of a built-in --dataset."""
    if source.dataset is not None:
        return load_dataset(source.dataset, data_dir=source.data_dir, train_size=source.train_size,
                            test_size=source.test_size, device=device)
    if is_callable_spec(source.data):
        return load_user_source(source.data)
    data = read_data(source.data)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)

    def move(t):
        if t is None:
            return None
        return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)

    return UserData(*(move(t) for t in (data.x_train, data.y_train, data.x_test, data.y_test)))
