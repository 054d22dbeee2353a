"""The training loop of `sharp train`: GD, SGD, SAM and Eigen-SAM, measured by a Tracker.

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

from sharpcli.config import SAM_PHASES, Phase, TrainConfig
from sharpcli.edges import EdgeRule
from sharpcli.errors import Interrupted
from sharpcli.formats.checkpoints import checkpoint_path
from sharpcli.hessian import HessianOperator
from sharpcli.hessian.objective import accumulate_gradient, gradient_norm, gradient_vector
from sharpcli.interrupt import stop_on_signals
from sharpcli.training.optim import lr_at, set_lr
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


def train(config: TrainConfig, progress: ProgressFn | None = None) -> TrainResult:
    """Run `sharp train` as a library call; returns what was logged. Raises SharpError on bad
    settings, DivergedError on NaN/inf, Interrupted on SIGINT/SIGTERM (after saving)."""
    run = prepare(config)
    resumed = restore(run)
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

            # a stop request (Ctrl-C, SIGTERM): save w_t and leave
            if stop.requested:
                tracker.checkpoint(step, epoch, {"eigen_vector": eigen.v}, force=True)
                raise Interrupted(f"stopped by {stop.signal_name} at step {step}; saved "
                                  f"{checkpoint_path(run.checkpoint_dir, step)}; continue with --resume")

            # checkpoint w_t before anything at step t touches the model
            tracker.checkpoint(step, epoch, {"eigen_vector": eigen.v}, final=final)

            # forward and backward on the step's batch: g = ∇L_B(w_t)
            info, batch = gradient_at(run, sampler, step)
            tracker.check_finite(info)

            # the perturbation of a SAM step (Eigen-SAM refreshes its v₁ estimate first)
            if info.sam_phase or tracker.sharpness_due(step):
                info.direction = gradient_vector(run.params)  # g: the flat copy only when read
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
                         run.config.physical_batch_size)
            else:
                run.optimizer.step()
    result.seconds = tracker.elapsed()
    return result


def tracker_for(run: RunSetup, resumed: Resumed | None) -> Tracker:
    """The Tracker of `sharp train`'s measurement flags, continuing a resumed run's files."""
    c, data = run.config, run.data
    return Tracker(run.model, run.loss_fn, data.x_train, data.y_train, run_dir=run.report_dir,
                   optimizer=run.optimizer, every=c.sharpness_every, k=c.sharpness_k,
                   test=(data.x_test, data.y_test), eval_every=c.eval_every,
                   samples=c.sharpness_samples, tol=c.sharpness_tol, max_iter=c.sharpness_iters,
                   chunk_size=c.physical_batch_size, seed=c.seed,
                   checkpoint_every=c.checkpoint_every, checkpoint_dir=run.checkpoint_dir,
                   keep_last=c.keep_last, edges=EdgeRule(c.momentum, c.nesterov, c.rho),
                   record=run.record, resume_step=resumed.step if resumed else None,
                   top_vector=resumed.top_vector if resumed else None,
                   elapsed=resumed.elapsed if resumed else 0.0)


def gradient_at(run: RunSetup, sampler: BatchSampler, step: int):
    """.grad ← ∇L_B(w_t) on step t's batch in train mode (BatchNorm updates its statistics
    as in any training step); the step's StepInfo (with the loss) and its batch."""
    c = run.config
    idx = sampler.indices(step)
    xb, yb = run.data.x_train[idx], run.data.y_train[idx]
    if not run.model.training:  # a guard only: the recursive call costs as much as a layer
        run.model.train()
    loss = accumulate_gradient(run.model, run.loss_fn, xb, yb, c.physical_batch_size)
    phase = run.phase_at(step)
    sam_phase = phase.value in SAM_PHASES
    info = StepInfo(step, phase.value, lr_at(step, run.plan.total_steps, c.lr, c.schedule),
                    gradient_norm(run.params), run.plan.epoch_at(step), loss,
                    rho=c.rho if sam_phase else None, sam_phase=sam_phase)
    return info, (xb, yb)


def eigen_sam_refresh(run: RunSetup, eigen: EigenState, step: int, batch) -> EigenState:
    """Eigen-SAM's estimate of v₁, refreshed on the batch's Hessian when due."""
    if not refresh_due(eigen, step, run.config.eig_every):
        return eigen
    op = HessianOperator(run.model, run.loss_fn, *batch, chunk_size=run.config.physical_batch_size,
                         mode="train")
    return refresh(eigen, op, iters=run.config.eig_iters, seed=run.config.seed + step)


def early_stop(config: TrainConfig, row: dict | None) -> str | None:
    if row is None or row.get("train_loss") is None:
        return None
    if config.stop_loss is not None and row["train_loss"] <= config.stop_loss:
        return f"train loss {row['train_loss']:.4g} ≤ --stop-loss {config.stop_loss:g}"
    if config.stop_acc is not None and row["train_acc"] >= config.stop_acc:
        return f"train accuracy {row['train_acc']:.4g} ≥ --stop-acc {config.stop_acc:g}"
    return None
