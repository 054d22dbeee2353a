"""Measuring a run as it trains: the one path from the weights at step t to a row of
metrics.csv (SPEC §2), so that every run folder, whoever trained it, holds the same numbers.

At a measured step t (after the step's gradient, before its update) the Tracker records
‖g‖ of the update's gradient, λ₁…λ_k of the training-loss Hessian to a relative accuracy
`tol` (Lanczos, or block Lanczos for k > 1) warm-started from the previous measurement's
top-k eigenvectors, the alignment |cos(direction, v₁)| of the update's
direction, the edges (sharpcli.edges.EdgeRule), and train and test loss and accuracy; it
writes config.json once, one row per measured step, top_eigenvalues.csv when k > 1, and
checkpoints of w_t when due. `sharp train` calls it at every step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sharpcli.distributed import SINGLE, Dist
from sharpcli.edges import EdgeRule
from sharpcli.errors import DivergedError
from sharpcli.formats.atomic import atomic_write_json
from sharpcli.formats.checkpoints import checkpoint_path, list_checkpoints, save_checkpoint
from sharpcli.formats.csvlog import CsvLog
from sharpcli.formats.schema import (CONFIG_FILE, METRICS_COLUMNS, METRICS_FILE,
                                     TOP_EIGENVALUE_COLUMNS, TOP_EIGENVALUES_FILE)
from sharpcli.hessian.losses import LossFn
from sharpcli.hessian.objective import evaluate
from sharpcli.hessian.sharpness import alignment, measure_sharpness


@dataclass
class StepInfo:
    """What the training loop knows about step t that its row records."""

    step: int
    phase: str
    lr: float
    grad_norm: torch.Tensor | float         # ‖g‖ of the gradient the update uses
    epoch: float | None = None
    loss: torch.Tensor | float | None = None  # the loss of that gradient's forward pass
    rho: float | None = None                # the SAM radius, in SAM phases
    direction: torch.Tensor | None = None   # ε in SAM phases, else g (flat): for the alignment
    sam_phase: bool = False


class Tracker:
    """The measurement half of a training loop; see the module docstring.

    `x, y` are the examples whose Hessian is measured (the first `samples` of them) and on
    which train loss and accuracy are evaluated; `test=(x, y)` adds test loss and accuracy.
    λ₁ every `every` steps (0: never), evaluation every `eval_every` steps (default: `every`),
    checkpoints every `checkpoint_every` steps into `checkpoint_dir` (keeping the newest
    `keep_last`). `record` is written to config.json. `resume_step` continues the files of
    an interrupted run: rows from that step on are dropped and its checkpoint is kept;
    `top_vector` (v₁, or the top-k eigenvectors as columns) and `elapsed` carry the warm
    start and the clock over. Under torchrun
    (`dist`) every process measures its shard of the examples and takes the same decisions;
    rank 0 alone writes files.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, *,
                 run_dir: str | Path, optimizer: torch.optim.Optimizer | None = None,
                 every: int = 20, k: int = 1, test: tuple[torch.Tensor, torch.Tensor] | None = None,
                 eval_every: int | None = None, samples: int | None = None, tol: float = 1e-3,
                 max_iter: int = 100, chunk_size: int = 4096, seed: int = 0,
                 checkpoint_every: int | None = None, checkpoint_dir: str | Path | None = None,
                 keep_last: int | None = None, edges: EdgeRule = EdgeRule(),
                 record: dict | None = None, resume_step: int | None = None,
                 top_vector: torch.Tensor | None = None, elapsed: float = 0.0,
                 dist: Dist = SINGLE):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.x, self.y, self.test = x, y, test
        n = min(samples or len(x), len(x))
        self.x_sharp, self.y_sharp = x[:n], y[:n]
        self.every, self.k, self.tol, self.max_iter = every, k, tol, max_iter
        self.eval_every = eval_every or every
        self.chunk_size, self.seed, self.edges, self.dist = chunk_size, seed, edges, dist
        self.run_dir = Path(run_dir)
        self.checkpoint_every, self.keep_last = checkpoint_every, keep_last
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.resume_step = resume_step
        self.top_vectors = top_vector  # the warm start: (size, k), or v₁ from an older checkpoint
        self.rows: list[dict] = []  # the rows this tracker logged
        self._saved_now: Path | None = None
        self._clock = (elapsed, time.perf_counter())
        self.record = record or {}
        self.log = CsvLog(self.run_dir / METRICS_FILE, METRICS_COLUMNS)
        self.top_log = CsvLog(self.run_dir / TOP_EIGENVALUES_FILE, TOP_EIGENVALUE_COLUMNS)
        if dist.is_main:  # one writer
            if record is not None:
                atomic_write_json(self.run_dir / CONFIG_FILE, record)
            fresh = resume_step is None
            self.log.open(fresh=fresh, keep_below_step=resume_step)
            if k > 1:
                self.top_log.open(fresh=fresh, keep_below_step=resume_step)

    @property
    def top_vector(self) -> torch.Tensor | None:
        """v₁ of the last measurement (or of the warm start it was given)."""
        v = self.top_vectors
        return v[:, 0] if v is not None and v.ndim == 2 else v

    # ---------------------------------------------------------------- when

    def elapsed(self) -> float:
        """Training time in seconds, earlier invocations of a resumed run included."""
        before, start = self._clock
        return before + time.perf_counter() - start

    def sharpness_due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def evaluation_due(self, step: int, final: bool = False) -> bool:
        return final or step % self.eval_every == 0

    def row_due(self, step: int, final: bool = False) -> bool:
        return self.sharpness_due(step) or self.evaluation_due(step, final)

    # ---------------------------------------------------------------- checkpoints

    def checkpoint(self, step: int, epoch: float = 0.0, extra: dict | None = None, *,
                   final: bool = False, force: bool = False) -> Path | None:
        """Save w_t when due (every `checkpoint_every` steps and at the `final` step) or when
        `force`d; the resumed step's checkpoint exists already. Call it before anything at
        step t touches the model, so that resuming from it repeats step t exactly."""
        self._saved_now = None
        due = force or (self.checkpoint_every and (step % self.checkpoint_every == 0 or final))
        if not due or self.checkpoint_dir is None or (step == self.resume_step and not force):
            return None
        path = checkpoint_path(self.checkpoint_dir, step)
        if self.dist.is_main:  # every process holds the same weights and state
            # top_vectors: the whole warm start; top_vector (v₁ alone) as older readers know it
            state = {"elapsed": self.elapsed(), "top_vector": self.top_vector,
                     "top_vectors": self.top_vectors, **(extra or {})}
            save_checkpoint(path, step=step, epoch=epoch, config=self.record, model=self.model,
                            optimizer=self.optimizer, extra=state)
            self._saved_now = path
            if force:
                self._prune()
        return path

    def _prune(self) -> None:
        if self.keep_last and self.checkpoint_dir is not None and self.dist.is_main:
            for old in list_checkpoints(self.checkpoint_dir)[:-self.keep_last]:
                old.unlink(missing_ok=True)

    # ---------------------------------------------------------------- divergence

    def check_finite(self, info: StepInfo) -> None:
        """After step t's gradient: if the loss or ‖g‖ is NaN or inf, the checkpoint just
        saved (w_t itself is bad) is removed, a row records the divergence and
        DivergedError names the last good checkpoint. Otherwise older checkpoints beyond
        `keep_last` go: only a checkpoint known to be good may push out the last good one."""
        finite = bool(torch.isfinite(torch.as_tensor(info.loss + info.grad_norm)))  # a host sync
        if self.dist.enabled:  # every process stops, or none
            finite = not self.dist.any(not finite)
        if finite:
            if self._saved_now is not None:
                self._prune()
            return
        if self._saved_now is not None:
            self._saved_now.unlink(missing_ok=True)
        saved = list_checkpoints(self.checkpoint_dir) if self.checkpoint_dir else []
        loss = self.dist.sum(float(info.loss))  # each process holds its share
        self._write(self.log, {"step": info.step, "epoch": info.epoch, "phase": info.phase,
                               "lr": info.lr, "train_loss": loss,
                               "grad_norm": float(info.grad_norm), "seconds": self.elapsed()})
        raise DivergedError(f"training diverged at step {info.step} (loss {loss}, "
                            f"‖g‖ {float(info.grad_norm)}); last good checkpoint: "
                            f"{saved[-1] if saved else 'none'}; try a smaller --lr than "
                            f"{info.lr:g}")

    # ---------------------------------------------------------------- the row

    def measure(self, info: StepInfo, *, final: bool = False) -> dict | None:
        """Evaluate and measure at w_t when due and write the row; returns it (None when
        nothing was due). Leaves the model's mode, buffers and .grad as they were."""
        if not self.row_due(info.step, final):
            return None
        measure_sharp, evaluate_now = self.sharpness_due(info.step), self.evaluation_due(info.step, final)
        grad_norm = float(info.grad_norm)
        row = {"step": info.step, "epoch": info.epoch, "phase": info.phase, "lr": info.lr,
               "rho": info.rho, "grad_norm": grad_norm,
               **self.edges.at(info.lr, grad_norm, info.sam_phase)}
        if evaluate_now:
            row["train_loss"], row["train_acc"] = evaluate(self.model, self.loss_fn, self.x,
                                                           self.y, self.chunk_size, self.dist)
            if self.test is not None:
                row["test_loss"], row["test_acc"] = evaluate(self.model, self.loss_fn, *self.test,
                                                             self.chunk_size, self.dist)
        if measure_sharp:
            row.update(self._sharpness(info))
        row["seconds"] = self.elapsed()
        self._write(self.log, row)
        self.rows.append(row)
        return row

    def _sharpness(self, info: StepInfo) -> dict:
        """λ₁ (and λ₂…λ_k into top_eigenvalues.csv) warm-started from the last top-k
        eigenvectors, and the alignment of the step's direction with the new v₁."""
        s = measure_sharpness(self.model, self.loss_fn, self.x_sharp, self.y_sharp, k=self.k,
                              tol=self.tol, max_iter=self.max_iter, v0=self.top_vectors,
                              seed=self.seed + info.step, chunk_size=self.chunk_size,
                              dist=self.dist)
        self.top_vectors = s.top_vectors
        if self.k > 1:
            for i, (lam, res) in enumerate(zip(s.eigenvalues.tolist(), s.residuals.tolist())):
                self._write(self.top_log, {"step": info.step, "index": i + 1, "eigenvalue": lam,
                                           "residual": res})
        direction = info.direction
        return {"sharpness": s.value,
                "alignment": alignment(direction, s.top_vector) if direction is not None else None}

    # ---------------------------------------------------------------- files

    def _write(self, log: CsvLog, row: dict) -> None:
        if self.dist.is_main:
            log.write(row)

    def close(self) -> None:
        self.log.close()
        self.top_log.close()

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
