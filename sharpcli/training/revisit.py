"""λ₁ and ‖g‖ (and for adam, adamw and rmsprop λ₁(P⁻¹H)) measured again at every checkpoint
of a run, for `sharp eos --from-checkpoints`: a metrics-like table that the edge analysis
reads exactly as it reads metrics.csv. Its λ columns come from the Tracker's row path
(`sharpness_columns`), so a checkpoint's row means what training's row of that step means."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import pandas as pd

from sharpcli.config import SAM_PHASES, phase_at, sam_start_step
from sharpcli.device import resolve_device
from sharpcli.distributed import SINGLE, Dist, process_device
from sharpcli.errors import SharpError
from sharpcli.formats.runs import checkpoint_files, read_config, read_metrics
from sharpcli.formats.schema import METRICS_COLUMNS
from sharpcli.hessian.objective import full_batch_gradient, objective_of
from sharpcli.training.tracker import sharpness_columns
from sharpcli.workload.targets import Target, load_targets
from sharpcli.workload.rebuild import Checkpoint


def measure_checkpoints(run_dir: str | Path, *, device: str = "cpu", samples: int | None = None,
                        tol: float = 1e-3, max_iter: int = 100, seed: int = 0,
                        chunk_size: int | None = None,
                        should_stop: Callable[[], bool] | None = None,
                        on_checkpoint: Callable[[Path, dict], None] | None = None,
                        dist: Dist = SINGLE) -> pd.DataFrame:
    """λ₁ (Lanczos on the training-loss Hessian) and the full-batch ‖g‖ at every checkpoint
    of a run, as a metrics-like DataFrame (step, phase, lr, rho, train_loss, grad_norm,
    sharpness, preconditioned_sharpness from the saved optimizer state of adam, adamw and
    rmsprop runs after their first update, and sharpness_converged as the Tracker sets it;
    the other metrics.csv columns empty).

    The examples are the first `samples` of the run's training subset (default: the run's
    sharpness_samples, else all of it). phase and lr are those of the last metrics.csv row at
    or before the checkpoint's step (from the config when there is none); rho is the
    config's in SAM phases. grad_norm is the full-batch gradient norm, even for runs that
    trained on minibatches. Lanczos starts from a Gaussian vector drawn from `seed`.
    `on_checkpoint(path, row)` is called after each one (progress). Under torchrun every
    process measures its shard of the examples; the table is the same on every process.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    targets = [Target(p, run_dir) for p in checkpoint_files(run_dir, config)]
    logged = _logged_steps(run_dir)
    rows = []
    for target, ckpt, splits in load_targets(targets, resolve_device(process_device(device, dist)),
                                             should_stop=should_stop, dist=dist):
        s = ckpt.settings
        n = samples or s.sharpness_samples or len(splits.x_train)
        x, y = splits.x_train[:n], splits.y_train[:n]
        chunk = chunk_size or s.physical_batch_size
        call, data = objective_of(ckpt.model, ckpt.loss_fn, x, y, chunk_size=chunk, dist=dist)
        loss, grad = full_batch_gradient(ckpt.model, call, data)
        columns, _, _ = sharpness_columns(
            ckpt.model, call, data, k=1, tol=tol, max_iter=max_iter, seed=seed,
            preconditioner=ckpt.preconditioner() if s.adaptive_optimizer else None)
        phase, lr = _phase_and_lr(logged, ckpt, ckpt.step)
        row = {"step": ckpt.step, "phase": phase, "lr": lr,
               "rho": float(s.rho) if phase in SAM_PHASES else math.nan,
               "train_loss": loss, "grad_norm": float(grad.norm()),
               **{c: v for c, v in columns.items() if v is not None}}  # None: no P yet
        rows.append(row)
        if on_checkpoint is not None:
            on_checkpoint(target.checkpoint, row)
    return pd.DataFrame(rows, columns=list(METRICS_COLUMNS))


def _logged_steps(run_dir: Path) -> pd.DataFrame | None:
    try:
        metrics = read_metrics(run_dir, required=("step", "phase", "lr"))
    except SharpError:
        return None
    return metrics[["step", "phase", "lr"]].sort_values("step", kind="stable")


def _phase_and_lr(logged: pd.DataFrame | None, ckpt: Checkpoint, step: int) -> tuple[str, float]:
    """The phase and lr of the last logged row at or before `step`, else the config's."""
    s = ckpt.settings
    start = sam_start_step(s.sam_start, s.epochs is not None, ckpt.config.get("steps_per_epoch"))
    phase, lr = phase_at(s.optimizer, s.batch_size, start, step), s.lr
    if logged is not None:
        before = logged[logged["step"] <= step]
        if len(before):
            last = before.iloc[-1]
            phase = last["phase"] if isinstance(last["phase"], str) else phase
            lr = lr if pd.isna(last["lr"]) else float(last["lr"])
    return phase, float(lr)
