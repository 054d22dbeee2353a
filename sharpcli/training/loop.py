"""The training loop of `sharp train`: GD, SGD, SAM and Eigen-SAM, with sharpness tracked.

Order within step t (so that a checkpoint, a logged row and a resume all agree):
  1. checkpoint w_t if due (before anything at step t touches the model or RNG);
  2. g = ∇L_B(w_t) on the step's batch (the full training set for gd);
  3. if step t is logged: evaluate, measure λ₁ and v₁ at w_t, write the row;
  4. update w_t → w_{t+1} with the phase's rule.
In SAM phases, between 2 and 3, ε is built from g (Eigen-SAM first refreshes its estimate
of v₁ if due); step 4 is then the SAM step of sharpcli.training.sam: the base optimizer moves w
with ∇L_B(w + ε). Late-phase SAM keeps the same base optimizer, momentum buffers included.
The last step T only measures and checkpoints: the final row describes the final weights.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

import sharpcli
from sharpcli.formats.atomic import atomic_write_json
from sharpcli.formats.checkpoints import (checkpoint_path, list_checkpoints, read_checkpoint,
                                  save_checkpoint, set_rng_state)
from sharpcli.config import TrainConfig
from sharpcli.formats.csvlog import METRICS_COLUMNS, CsvLog
from sharpcli.workload.data import load_dataset
from sharpcli.edges import gd_edge, sam_edge
from sharpcli.errors import DivergedError, Interrupted, SharpError
from sharpcli.hessian import HessianOperator
from sharpcli.interrupt import stop_on_signals
from sharpcli.hessian.losses import get_loss
from sharpcli.workload.models import build_model
from sharpcli.hessian.objective import accumulate_gradient, evaluate, gradient_norm, gradient_vector
from sharpcli.training.optim import build_base_optimizer, lr_at, set_lr
from sharpcli.hessian.params import trainable_params
from sharpcli.training.sam import EigenEstimate, check_sam_settings, perturbation, sam_step
from sharpcli.hessian.sharpness import alignment, measure_sharpness
from sharpcli.training.setup import (SAM_OPTIMIZERS, StepPlan, choose_run_name, plan_steps,
                                  resolve_device, validate_config)

# Settings that may differ when a run is resumed: they do not change what is computed.
TOP_EIGENVALUE_COLUMNS = ["step", "index", "eigenvalue", "residual"]

RESUMABLE_CHANGES = {"resume", "quiet", "device", "steps", "epochs", "data_dir", "keep_last",
                     "reports_dir", "checkpoints_dir"}  # a moved run can be resumed


@dataclass
class TrainResult:
    run_name: str
    report_dir: Path
    checkpoint_dir: Path
    total_steps: int
    last_step: int
    rows: list[dict] = field(default_factory=list)  # the rows logged by this invocation
    seconds: float = 0.0
    stopped_early: str | None = None

    @property
    def last_row(self) -> dict:
        return self.rows[-1] if self.rows else {}

    def last_measured(self, column: str):
        """The latest non-empty value of a column among this invocation's rows."""
        for row in reversed(self.rows):
            if row.get(column) is not None:
                return row[column]
        return None


ProgressFn = Callable[[int, int, dict | None], None]  # (step, total, row or None)


def phase_at(config: TrainConfig, plan: StepPlan, step: int) -> str:
    """The update rule used at `step`: the base optimizer before --sam-start, then SAM."""
    base = "gd" if config.batch_size is None else "sgd"
    if config.optimizer in SAM_OPTIMIZERS:
        if plan.sam_start_step is None or step >= plan.sam_start_step:
            return config.optimizer
    return base


class BatchSampler:
    """Minibatches as index slices of one on-device permutation per epoch, seeded by
    (seed, epoch) so that a resumed run draws exactly the batches it would have drawn."""

    def __init__(self, n: int, batch_size: int | None, steps_per_epoch: int, seed: int, device):
        self.n, self.batch_size, self.per_epoch = n, batch_size, steps_per_epoch
        self.seed, self.device = seed, device
        self._epoch, self._perm = None, None

    def indices(self, step: int) -> slice | torch.Tensor:
        if self.batch_size is None:
            return slice(0, self.n)
        epoch, i = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.n, generator=gen).to(self.device)
            self._epoch = epoch
        return self._perm[i * self.batch_size:(i + 1) * self.batch_size]


def _versions() -> dict:
    import numpy

    # str(): torch.__version__ is a TorchVersion, which weights_only loading refuses.
    return {"sharpcli": sharpcli.__version__, "torch": str(torch.__version__),
            "numpy": str(numpy.__version__), "python": platform.python_version()}


def _check_resumable(stored: dict, config: TrainConfig, where: Path) -> None:
    current = config.to_dict()
    diffs = [f"--{k.replace('_', '-')} {current[k]!r} (run has {stored.get(k)!r})"
             for k in current if k not in RESUMABLE_CHANGES and k in stored
             and stored.get(k) != current[k] and k != "run_name"]
    if diffs:
        raise SharpError(f"--resume with settings that differ from {where}: {'; '.join(diffs)}")


def train(config: TrainConfig, progress: ProgressFn | None = None) -> TrainResult:
    """Run `sharp train` as a library call; returns what was logged. Raises SharpError on bad
    settings, DivergedError on NaN/inf, Interrupted on SIGINT/SIGTERM (after saving)."""
    validate_config(config)
    check_sam_settings(config.optimizer, config.adaptive)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    data = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download,
                        train_size=config.train_size, test_size=config.test_size, device=device)
    x, y = data.x_train, data.y_train
    plan = plan_steps(config, len(x))
    model = build_model(config.model, data.input_shape, data.num_classes, width=config.width,
                        depth=config.depth, activation=config.activation).to(device)
    params = trainable_params(model)
    n_params = sum(p.numel() for p in params)
    if config.sharpness_every and config.sharpness_k > n_params:
        raise SharpError(f"--sharpness-k {config.sharpness_k} exceeds the {n_params} parameters")
    loss_fn = get_loss(config.loss)
    optimizer = build_base_optimizer(config, params)
    n_sharp = min(config.sharpness_samples or len(x), len(x))
    x_sharp, y_sharp = x[:n_sharp], y[:n_sharp]
    chunk = config.physical_batch_size

    run_name = choose_run_name(config)
    config.run_name = run_name
    report_dir = Path(config.reports_dir) / run_name
    ckpt_dir = Path(config.checkpoints_dir) / run_name
    record = dict(config.to_dict(), resolved_device=str(device), versions=_versions(),
                  total_steps=plan.total_steps, steps_per_epoch=plan.steps_per_epoch,
                  num_params=n_params, input_shape=list(data.input_shape),
                  num_classes=data.num_classes)

    start_step, elapsed_before, top_vector = 0, 0.0, None
    eigen = EigenEstimate(config.eig_every, config.eig_iters)  # Eigen-SAM's estimate of v₁
    existing = list_checkpoints(ckpt_dir) if config.resume else []
    if existing:
        payload = read_checkpoint(existing[-1])
        _check_resumable(payload["config"], config, existing[-1])
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        set_rng_state(payload["rng"])
        start_step = payload["step"]
        extra = payload.get("extra", {})
        elapsed_before = float(extra.get("elapsed", 0.0))
        top_vector = extra.get("top_vector")
        if top_vector is not None:
            top_vector = top_vector.to(device)
        if extra.get("eigen_vector") is not None:
            eigen.v = extra["eigen_vector"].to(device)
    elif (report_dir / "metrics.csv").exists() and not config.resume:
        raise SharpError(f"run {run_name!r} already exists in {report_dir}; "
                         f"use --resume to continue it or another --run-name")
    atomic_write_json(report_dir / "config.json", record)

    result = TrainResult(run_name, report_dir, ckpt_dir, plan.total_steps, start_step)
    sampler = BatchSampler(len(x), config.batch_size, plan.steps_per_epoch, config.seed, device)
    t0 = time.perf_counter()
    elapsed = lambda: elapsed_before + time.perf_counter() - t0  # noqa: E731

    def checkpoint(step: int) -> None:
        save_checkpoint(checkpoint_path(ckpt_dir, step), step=step, epoch=plan.epoch_at(step),
                        config=record, model=model, optimizer=optimizer,
                        extra={"elapsed": elapsed(), "top_vector": top_vector,
                               "eigen_vector": eigen.v})

    def prune() -> None:
        """--keep-last, applied once the step's gradient is known to be finite: a checkpoint
        of diverged weights must never push out the last good one."""
        if config.keep_last:
            for old in list_checkpoints(ckpt_dir)[:-config.keep_last]:
                old.unlink(missing_ok=True)

    log = CsvLog(report_dir / "metrics.csv", METRICS_COLUMNS)
    log.open(fresh=not existing, keep_below_step=start_step)
    # λ₁…λ_k of each measurement when k > 1 (metrics.csv has room for λ₁ only).
    top_log = CsvLog(report_dir / "top_eigenvalues.csv", TOP_EIGENVALUE_COLUMNS)
    if config.sharpness_k > 1:
        top_log.open(fresh=not existing, keep_below_step=start_step)
    model.train()  # every measurement below restores the mode it found
    with stop_on_signals() as stop, log, top_log:
        for step in range(start_step, plan.total_steps + 1):
            is_last = step == plan.total_steps
            if stop.requested:
                checkpoint(step)
                prune()
                raise Interrupted(f"stopped by {stop.signal_name} at step {step}; saved "
                                  f"{checkpoint_path(ckpt_dir, step)}; continue with --resume")
            saved_now = ((step % config.checkpoint_every == 0 or is_last)
                         and not (existing and step == start_step))
            if saved_now:
                checkpoint(step)

            # 2. the gradient of the step's batch at w_t
            phase = phase_at(config, plan, step)
            lr = lr_at(step, plan.total_steps, config.lr, config.schedule)
            idx = sampler.indices(step)
            xb, yb = x[idx], y[idx]
            if not model.training:  # a guard only: the recursive call costs as much as a layer
                model.train()
            batch_loss = accumulate_gradient(model, loss_fn, xb, yb, chunk)
            grad_norm = gradient_norm(params)
            if not torch.isfinite(batch_loss + grad_norm):  # one host sync per step
                if saved_now:  # w_t itself is bad: not a checkpoint to resume from
                    checkpoint_path(ckpt_dir, step).unlink(missing_ok=True)
                saved = list_checkpoints(ckpt_dir)
                last_good = saved[-1] if saved else "none"
                log.write({"step": step, "epoch": plan.epoch_at(step), "phase": phase, "lr": lr,
                           "train_loss": float(batch_loss), "grad_norm": float(grad_norm),
                           "seconds": elapsed()})
                raise DivergedError(f"training diverged at step {step} (loss {float(batch_loss)}, "
                                    f"‖g‖ {float(grad_norm)}); last good checkpoint: {last_good}; "
                                    f"try a smaller --lr than {config.lr:g}")
            if saved_now:
                prune()

            # 3. measure and log
            measure_sharp = config.sharpness_every and step % config.sharpness_every == 0
            evaluate_now = step % config.eval_every == 0 or is_last

            # The perturbation direction this step's update is built from: ε in SAM phases
            # (SPEC §4), ∝ g otherwise. The flat g is only built when something reads it.
            direction = None
            if measure_sharp or phase in SAM_OPTIMIZERS:
                direction = g = gradient_vector(params)
            if phase in SAM_OPTIMIZERS:
                if phase == "eigen-sam" and eigen.due(step):
                    batch_hessian = HessianOperator(model, loss_fn, xb, yb, chunk_size=chunk, mode="train")
                    eigen.refresh(batch_hessian, seed=config.seed + step)
                direction = perturbation(phase, g, params, rho=config.rho, adaptive=config.adaptive,
                                         alpha=config.alpha, v=eigen.v)  # ε

            row = None
            if measure_sharp or evaluate_now:
                row = {"step": step, "epoch": plan.epoch_at(step), "phase": phase, "lr": lr,
                       "rho": config.rho if phase in SAM_OPTIMIZERS else None,
                       "grad_norm": float(grad_norm),
                       # lr reaches 0 at the end of a cosine schedule: no edge then.
                       "gd_edge": gd_edge(lr, config.momentum, config.nesterov) if lr > 0 else None}
                if phase in SAM_OPTIMIZERS and lr > 0:
                    row["sam_edge"] = sam_edge(lr, config.rho, float(grad_norm))
                if evaluate_now:
                    row["train_loss"], row["train_acc"] = evaluate(model, loss_fn, x, y, chunk)
                    row["test_loss"], row["test_acc"] = evaluate(model, loss_fn, data.x_test,
                                                                 data.y_test, chunk)
                if measure_sharp:
                    s = measure_sharpness(model, loss_fn, x_sharp, y_sharp, k=config.sharpness_k,
                                          tol=config.sharpness_tol, max_iter=config.sharpness_iters,
                                          v0=top_vector, seed=config.seed + step, chunk_size=chunk)
                    top_vector = s.top_vector
                    if config.sharpness_k > 1:
                        top_log.write_many({"step": step, "index": i + 1, "eigenvalue": float(lam),
                                            "residual": float(res)}
                                           for i, (lam, res) in enumerate(zip(s.eigenvalues, s.residuals)))
                    row["sharpness"] = s.value
                    row["alignment"] = alignment(direction, s.top_vector)
                row["seconds"] = elapsed()
                log.write(row)
                result.rows.append(row)
            result.last_step = step
            if progress:
                progress(step, plan.total_steps, row)

            stop_reason = _early_stop(config, row)
            if stop_reason and not is_last:
                checkpoint(step)
                prune()
                result.stopped_early = stop_reason
                break
            if is_last:
                break

            # 4. the update
            set_lr(optimizer, lr)
            if phase in SAM_OPTIMIZERS:
                # The SAM step: the base optimizer moves w with ∇L_B(w + ε) instead of g.
                sam_step(model, loss_fn, xb, yb, direction, optimizer, chunk)
            else:
                optimizer.step()
    result.seconds = elapsed()
    return result


def _early_stop(config: TrainConfig, row: dict | None) -> str | None:
    if row is None or row.get("train_loss") is None:
        return None
    if config.stop_loss is not None and row["train_loss"] <= config.stop_loss:
        return f"train loss {row['train_loss']:.4g} ≤ --stop-loss {config.stop_loss:g}"
    if config.stop_acc is not None and row["train_acc"] >= config.stop_acc:
        return f"train accuracy {row['train_acc']:.4g} ≥ --stop-acc {config.stop_acc:g}"
    return None
