"""Which checkpoints the arguments of `sharp spectrum` (and `sharp eos --from-checkpoints`)
name, where their rows go, and each one loaded with its run's data — or, with
--model-factory, with the user's model, examples and loss."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from sharpcli.errors import SharpError
from sharpcli.formats.checkpoints import list_checkpoints
from sharpcli.formats.runs import checkpoint_files, is_run_dir
from sharpcli.hessian.params import trainable_params
from sharpcli.hessian.preconditioner import preconditioner_from_state
from sharpcli.interrupt import check_stop
from sharpcli.spectra.config import ModelSource
from sharpcli.hessian.calls import Call
from sharpcli.hessian.finite_difference import shard_by_class
from sharpcli.workload.imports import build_user_model, import_object, resolve_call
from sharpcli.workload.user_data import (UserData, UserSource, is_callable_spec,
                                         load_user_source, read_data)
from sharpcli.workload.weights import load_weights, read_weights
from sharpcli.workload.data import DataSplits, load_dataset
from sharpcli.workload.rebuild import Checkpoint, load_checkpoint, load_run_data


@dataclass
class Target:
    """A checkpoint to measure, and the run's report folder when the argument named it."""

    checkpoint: Path
    report_dir: Path | None = None


def expand_targets(args: Iterable[str | os.PathLike]) -> list[Target]:
    """Checkpoint files named by the arguments, argument order kept, each run's in step order,
    duplicates dropped. An argument is a checkpoint file, a checkpoint folder
    (checkpoints/<run>), a run folder (reports/<run>, whose config.json says where its
    checkpoints are) or a run name under reports/. Anything else is a SharpError."""
    targets: list[Target] = []
    for arg in args:
        path = Path(arg)
        if not path.exists() and len(path.parts) == 1 and is_run_dir(Path("reports") / path):
            path = Path("reports") / path
        if path.is_file():
            found = [Target(path)]
        elif path.is_dir() and list_checkpoints(path):
            found = [Target(p) for p in list_checkpoints(path)]
        elif is_run_dir(path):
            found = [Target(p, path) for p in checkpoint_files(path)]
        elif path.is_dir():
            raise SharpError(f"{str(arg)!r} holds no checkpoints (step-XXXXXXXX.pt) and is not a "
                             "run directory (config.json)")
        else:
            raise SharpError(f"{str(arg)!r} does not exist (expected a checkpoint file, "
                             "checkpoints/<run> or reports/<run>)")
        seen = {t.checkpoint.resolve() for t in targets}
        targets += [t for t in found if t.checkpoint.resolve() not in seen]
    return targets


def report_dir_for(target: Target, config: dict) -> Path:
    """Where a checkpoint's spectrum.csv goes by default: the run's report folder — the run
    folder that holds it as its config's relative `checkpoint_dir` (a Tracker's run), or
    <reports_dir>/<run_name> from its config, relative to the current folder or to the
    folder holding the checkpoints folder — else the folder that holds the checkpoint."""
    if target.report_dir is not None:
        return target.report_dir
    ckpt = target.checkpoint
    inside = config.get("checkpoint_dir")
    if inside and not Path(inside).is_absolute():
        run = ckpt.resolve().parent
        for _ in Path(inside).parts:
            run = run.parent
        if is_run_dir(run):
            return run
    reports = Path(config.get("reports_dir") or "reports")
    name = config.get("run_name") or ckpt.parent.name
    bases = [reports]
    if not reports.is_absolute() and len(ckpt.resolve().parents) > 2:
        bases.append(ckpt.resolve().parents[2] / reports)  # <root>/checkpoints/<run>/step-….pt
    for base in bases:
        if (base / name).is_dir():
            return base / name
    return ckpt.parent


def load_targets(targets: list[Target], device, *, should_stop: Callable[[], bool] | None = None,
                 on_start: Callable[[int, int, Path], None] | None = None, dist=None,
                 ) -> Iterator[tuple[Target, Checkpoint, DataSplits]]:
    """Each target's checkpoint rebuilt on `device` with its run's data. Runs that share a
    data set and subset share one copy of it, loaded once. A stop request ends the loop
    (Interrupted) before the next checkpoint; `on_start(i, n, path)` runs before each."""
    cache: dict[tuple, DataSplits] = {}
    for i, target in enumerate(targets):
        check_stop(should_stop, dist)
        if on_start is not None:
            on_start(i, len(targets), target.checkpoint)
        ckpt = load_checkpoint(target.checkpoint, device=device)
        s = ckpt.settings
        key = (s.dataset, s.data_dir, s.train_size, s.test_size)
        if key not in cache:
            cache[key] = load_run_data(s, device)
        yield target, ckpt, cache[key]


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
    model = build_user_model(source.model_factory, source.model_kwargs)
    call = resolve_call(source.loss, source.batch_loss)
    num_terms = import_object(source.num_terms, "--num-terms") if source.num_terms else None
    splits = _user_examples(source, model, device)
    for i, target in enumerate(targets):
        check_stop(should_stop, dist)
        if on_start is not None:
            on_start(i, len(targets), target.checkpoint)
        weights = read_weights(target.checkpoint)
        if source.fsdp and i:  # the last target's model is sharded: load into a fresh one
            model = build_user_model(source.model_factory, source.model_kwargs)
        load_weights(model, weights.state, str(target.checkpoint))
        model.to(device).eval()
        if source.fsdp:
            shard_by_class(model, source.fsdp, dist)
        yield Subject(target, weights.step, model, call, splits, 4096,
                      report_dir_for(target, weights.config) if weights.config
                      else target.checkpoint.parent, _saved_preconditioner(weights, model, target),
                      num_terms)


def _saved_preconditioner(weights, model: nn.Module, target: Target):
    """diag(P) from the optimizer state a checkpoint of an adaptive loop saved."""
    def diagonal():
        if not weights.optimizer:
            raise SharpError(f"{target.checkpoint}: --preconditioned needs an optimizer state; "
                             "give a checkpoint saved by sharp train or sharpcli.Tracker")
        try:
            return preconditioner_from_state(weights.optimizer, trainable_params(model))
        except ValueError as err:
            raise SharpError(f"{target.checkpoint}: --preconditioned: {err}") from None
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
