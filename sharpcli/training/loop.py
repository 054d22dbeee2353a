"""The training loop of `sharp train`: GD, SGD, SAM, Eigen-SAM, Adam, AdamW and RMSProp,
measured by a Tracker.

Order within step t, so that a checkpoint, a logged row and a resume all agree:
  1. checkpoint w_t if due (before anything at step t touches the model or RNG);
  2. g = ∇L_B(w_t) on the step's batch (the full training set for gd); stop if not finite;
  3. in SAM phases ε from g (Eigen-SAM first refreshes its estimate of v₁ when due);
  4. measure at w_t when due: evaluation, λ₁ and v₁, alignment, edges, the row (Tracker);
  5. update w_t → w_{t+1}: the base optimizer with g, or the SAM step with ∇L_B(w + ε).
The last step T only measures and checkpoints: the final row describes the final weights.
Late-phase SAM keeps the same base optimizer, momentum buffers included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from sharpcli.config import SAM_PHASES, Phase, SamSync, TrainConfig
from sharpcli.distributed import Dist
from sharpcli.edges import PRECONDITIONER_OF, EdgeRule
from sharpcli.errors import Interrupted
from sharpcli.formats.checkpoints import checkpoint_path
from sharpcli.hessian import HessianOperator
from sharpcli.hessian.objective import gradient_norm, gradient_vector
from sharpcli.interrupt import stop_on_signals
from sharpcli.training.loggers import parse_loggers
from sharpcli.training.optim import lr_at, set_lr
from sharpcli.training.parallel import average_running_stats, batch_gradient
from sharpcli.training.restore import Resumed, restore
from sharpcli.training.sam import EigenState, perturbation, refresh, refresh_due, sam_step
from sharpcli.training.setup import BatchSampler, RunSetup, prepare
from sharpcli.training.tracker import StepInfo, Tracker


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


ProgressFn = Callable[[int, int, dict | None], None]  # (step, total, row or None)


def train(config: TrainConfig, progress: ProgressFn | None = None,
          dist: Dist | None = None) -> TrainResult:
    """Run `sharp train` as a library call; returns what was logged. Raises SharpError on bad
    settings, DivergedError on NaN/inf, Interrupted on SIGINT/SIGTERM (after saving). Under
    torchrun (`dist`, by default the process group torch.distributed was started with) every
    process runs this same loop on its shards and rank 0 writes."""
    dist = dist or Dist.current()
    run = prepare(config, dist)
    resumed = restore(run)
    dist.barrier()  # every process has looked for the run's files before rank 0 writes any
    start = resumed or Resumed()
    tracker = tracker_for(run, resumed)
    sampler = BatchSampler(len(run.data.x_train), run.config.batch_size,
                           run.plan.steps_per_epoch, run.config.seed, run.device)
    eigen = start.eigen
    result = TrainResult(run.config.run_name, run.report_dir, run.checkpoint_dir,
                         run.plan.total_steps, start.step, tracker.rows)
    run.model.train()  # every measurement below restores the mode it found
    with stop_on_signals() as stop, tracker:
        for step in range(start.step, run.plan.total_steps + 1):
            final = step == run.plan.total_steps
            epoch = run.plan.epoch_at(step)

            # a stop request (Ctrl-C, SIGTERM) to any process: save w_t, all leave together
            if dist.any(stop.requested):
                tracker.checkpoint(step, epoch, {"eigen_vector": eigen.v}, force=True)
                dist.barrier()  # no process exits before rank 0 has saved
                raise Interrupted(f"stopped by {stop.signal_name or 'a signal'} at step {step}; "
                                  f"saved {checkpoint_path(run.checkpoint_dir, step)}; "
                                  "continue with {resume}", param="resume")

            # checkpoint w_t before anything at step t touches the model
            tracker.checkpoint(step, epoch, {"eigen_vector": eigen.v}, final=final)

            # forward and backward on the step's batch: g = ∇L_B(w_t)
            info, batch = gradient_at(run, sampler, step)
            tracker.check_finite(info)

            # the perturbation of a SAM step (Eigen-SAM refreshes its v₁ estimate first)
            if info.sam_phase or tracker.sharpness_due(step):
                info.direction = gradient_vector(run.params)  # g: the flat copy only when read
            if local_perturbation(run, info) and tracker.row_due(step, final):
                info.grad_norm = global_gradient(run, info.direction, len(batch[0])).norm()
            if info.sam_phase:
                eigen = eigen_sam_refresh(run, eigen, step, batch) if info.phase == Phase.eigen_sam else eigen
                info.direction = perturbation(info.phase, info.direction, run.params,
                                              rho=run.config.rho, adaptive=run.config.adaptive,
                                              alpha=run.config.alpha, v=eigen.v)

            # measure and log at w_t
            row = tracker.measure(info, final=final)
            result.last_step = step
            if progress:
                progress(step, run.plan.total_steps, row)

            # termination: the last step only measures; --stop-loss/--stop-acc end early
            reason = early_stop(run.config, row)
            if reason and not final:
                tracker.checkpoint(step, epoch, {"eigen_vector": eigen.v}, force=True)
                result.stopped_early = reason
                break
            if final:
                break

            # the update w_t → w_{t+1}
            set_lr(run.optimizer, info.lr)
            if info.sam_phase:  # the base optimizer moves w with ∇L_B(w + ε) instead of g
                sam_step(run.model, run.loss_fn, *batch, info.direction, run.optimizer,
                         gradient=lambda: training_gradient(run, *batch))
            else:
                run.optimizer.step()
    result.seconds = tracker.elapsed()
    return result


def tracker_for(run: RunSetup, resumed: Resumed | None) -> Tracker:
    """The Tracker of `sharp train`'s measurement flags, continuing a resumed run's files."""
    c, data = run.config, run.data
    return Tracker._for_training(
        run.model, run.loss_fn, data.x_train, data.y_train, run_dir=run.report_dir,
        optimizer=run.optimizer, every=c.sharpness_every, k=c.sharpness_k,
        test=(data.x_test, data.y_test), eval_every=c.eval_every, samples=c.sharpness_samples,
        tol=c.sharpness_tol, max_iter=c.sharpness_iters, chunk_size=c.physical_batch_size,
        seed=c.seed, checkpoint_every=c.checkpoint_every, checkpoint_dir=run.checkpoint_dir,
        keep_last=c.keep_last, batch_size=c.batch_size,
        edges=EdgeRule(c.momentum, c.nesterov, c.rho, PRECONDITIONER_OF.get(c.optimizer.value),
                       c.beta1),
        batch_sharpness=c.batch_size if c.batch_sharpness else None,
        record=run.record, resume_step=resumed.step if resumed else None,
        top_vector=resumed.top_vector if resumed else None,
        elapsed=resumed.elapsed if resumed else 0.0, dist=run.dist,
        preconditioned_vector=resumed.preconditioned_vector if resumed else None,
        loggers=parse_loggers(c.log, "log"))


def gradient_at(run: RunSetup, sampler: BatchSampler, step: int):
    """.grad ← ∇L_B(w_t) on step t's batch in train mode (BatchNorm updates its statistics
    as in any training step); the step's StepInfo (with the loss) and its batch, augmented
    (--augment: a minibatch run trains on augmented images, measures on the originals). Under
    torchrun each process takes its shard of the batch, and the gradient is all-reduced
    unless SAM perturbs with each shard's own (--sam-sync local)."""
    c = run.config
    idx = sampler.indices(step)
    # the whole global batch, augmented by (seed, step): the same on any number of processes
    xb, yb = run.training_batch(run.data.x_train[idx], step), run.data.y_train[idx]
    if not run.model.training:  # a guard only: the recursive call costs as much as a layer
        run.model.train()
    phase = run.phase_at(step)
    sam_phase = phase.value in SAM_PHASES
    sync = not (sam_phase and c.sam_sync is SamSync.local)
    loss = training_gradient(run, xb, yb, sync=sync)
    average_running_stats(run.model, run.dist)
    info = StepInfo(step, phase.value, lr_at(step, run.plan.total_steps, c.lr, c.schedule),
                    gradient_norm(run.params), run.plan.epoch_at(step), loss,
                    rho=c.rho if sam_phase else None, sam_phase=sam_phase)
    return info, (xb, yb)


def training_gradient(run: RunSetup, x: torch.Tensor, y: torch.Tensor, *, sync: bool = True):
    """.grad ← ∇L_B on the batch (x, y) in the run's training arithmetic (--precision);
    returns this process's share of the loss."""
    with run.autocast():
        return batch_gradient(run.train_model, run.loss_fn, x, y, run.config.physical_batch_size,
                              run.dist, sync=sync)


def local_perturbation(run: RunSetup, info: StepInfo) -> bool:
    """Whether this step's gradient is each process's own (SAM under --sam-sync local)."""
    return info.sam_phase and run.config.sam_sync is SamSync.local and run.dist.enabled


def global_gradient(run: RunSetup, local: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The batch gradient Σ_r (n_r/B)·g_r from each process's flat shard gradient g_r: what
    the row's ‖g‖ and SAM edge are of when SAM perturbed with the shards' own."""
    n_r = len(range(batch_size)[run.dist.shard(batch_size)])
    return run.dist.sum_(local * (n_r / batch_size))


def eigen_sam_refresh(run: RunSetup, eigen: EigenState, step: int, batch) -> EigenState:
    """Eigen-SAM's estimate of v₁, refreshed on the batch's Hessian when due (under torchrun
    the Hessian of the whole batch, its products summed over the processes). The batch is
    the step's training batch, augmented; --eig-mode eval (the official code) normalises by
    BatchNorm's running statistics, train by the batch's own; fp32 either way."""
    if not refresh_due(eigen, step, run.config.eig_every):
        return eigen
    op = HessianOperator(run.model, run.loss_fn, *batch, chunk_size=run.config.physical_batch_size,
                         mode=run.config.eig_mode.value, dist=run.dist)
    return refresh(eigen, op, iters=run.config.eig_iters, seed=run.config.seed + step)


def early_stop(config: TrainConfig, row: dict | None) -> str | None:
    if row is None or row.get("train_loss") is None:
        return None
    if config.stop_loss is not None and row["train_loss"] <= config.stop_loss:
        return f"train loss {row['train_loss']:.4g} ≤ --stop-loss {config.stop_loss:g}"
    if config.stop_acc is not None and (row.get("train_acc") or 0.0) >= config.stop_acc:
        return f"train accuracy {row['train_acc']:.4g} ≥ --stop-acc {config.stop_acc:g}"
    return None
