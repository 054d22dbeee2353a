"""Measuring a run as it trains: the one path from the weights at step t to a row of
metrics.csv (docs/reference/formats.md#metrics-csv), so that every run folder, whoever trained it, holds the same numbers.

At a measured step t (after the step's gradient, before its update) the Tracker records
‖g‖ of the update's gradient, λ₁…λₖ of the training-loss Hessian to a relative accuracy
`tol` (Lanczos, or block Lanczos for k > 1) warm-started from the previous measurement's
top-k eigenvectors, the alignment |cos(direction, v₁)| of the update's direction, the
edges (sharpcli.edges.EdgeRule), and train and test loss and accuracy; with Adam, AdamW or
RMSProp also λ₁(P⁻¹H) with P from the optimizer's state before update t
(sharpcli.hessian.preconditioner), and when asked the batch sharpness; it
writes config.json once, one row per measured step, top_eigenvalues.csv when k > 1, and
checkpoints of w_t when due. `sharp train` calls it at every step through `measure`; a
hand-written loop calls `step(t)` after backward() and before optimizer.step(), and gets the
same rows by construction (docs/guides/own-model.md#tracker):

    with sharpcli.Tracker(model, loss_fn, (x, y), optimizer=opt, run_dir="reports/my-run") as t:
        for step in range(T + 1):
            opt.zero_grad(); loss_fn(model(xb), yb).backward()
            t.step(step)
            opt.step()
"""

from __future__ import annotations

import csv
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from sharpcli.config import SAM_PHASES
from sharpcli.distributed import Dist
from sharpcli.edges import EdgeRule
from sharpcli.errors import DivergedError, SharpError, SharpWarning
from sharpcli.formats.atomic import atomic_write_json
from sharpcli.formats.checkpoints import (checkpoint_path, list_checkpoints, read_checkpoint,
                                          save_checkpoint)
from sharpcli.formats.csvlog import CsvLog
from sharpcli.formats.runs import is_run_dir
from sharpcli.formats.schema import (CONFIG_FILE, METRICS_COLUMNS, METRICS_FILE,
                                     TOP_EIGENVALUE_COLUMNS, TOP_EIGENVALUES_FILE)
from sharpcli.hessian.batch_sharpness import batch_sharpness, random_batches
from sharpcli.hessian.calls import Call
from sharpcli.hessian.objective import evaluate, gradient_norm, gradient_vector
from sharpcli.sources.data import DEFAULT_CHUNK, Data, as_data, check_chunk_size
from sharpcli.hessian.params import trainable_params
from sharpcli.hessian.preconditioner import preconditioner
from sharpcli.hessian.sharpness import Sharpness, alignment, measure_sharpness
from sharpcli.linalg.budget import MemoryBudget, require_minimum
from sharpcli.linalg.restart import minimum_vectors
from sharpcli.linalg.results import LinalgInputError
from sharpcli.training.loggers import close_loggers, open_loggers, parse_loggers, scalars
from sharpcli.training.observe import (current_lr, edge_rule, has_preconditioner, is_sam,
                                       loop_record, phase_of)


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
    """The measurement half of a training loop: λ₁ and the edges, ‖g‖ and evaluation at
    w_t every few steps, written as `sharp train` writes them, so that every `sharp`
    command reads the run (docs/guides/own-model.md#tracker).

    Call `step(t)` after `backward()` and before `optimizer.step()`, and `close()` at the
    end (or use it as a context manager). Nothing is written outside `run_dir` (and
    `checkpoint_dir` when given). Under torchrun (a process group is initialised) every
    process makes the same calls with the same examples: each measures its share of them,
    and rank 0 alone writes.

    Args:
        model: The model being trained; measured as it is at each due step.
        loss_fn: `loss_fn(outputs, targets)`, the mean over a batch's loss terms, or "mse"
            or "ce" by name; None with `batch_loss`.
        data: The examples whose Hessian is measured and on which train loss and accuracy
            are evaluated (for full-batch GD, the whole training set): a tensor of inputs
            with `y`; one `(x, y)` pair of tensors; or a source of batches as for
            `sharpcli.spectrum` (docs/guides/own-model.md#data-sources).
        y: The targets of in-memory `data` (None for a source of batches or a pair).
        run_dir: The run folder: config.json, metrics.csv and top_eigenvalues.csv go here.
        optimizer: The loop's optimizer: its param groups give η and the edges, its class
            the phase; with Adam, AdamW or RMSProp the row also has λ₁(P⁻¹H).
        batch_loss: `batch_loss(model, batch)` with `loss_fn=None`, as for
            `sharpcli.spectrum`.
        forward: `forward(model, batch)` gives the outputs, as for `sharpcli.spectrum`.
        output_fn: `output_fn(outputs)` gives the predictions, as for `sharpcli.spectrum`.
        num_terms: `num_terms(batch)`, a batch's loss terms, as for `sharpcli.spectrum`.
        total_terms: All the batches' terms together, when known.
        check_deterministic: Refuse a source of batches that differs between two passes.
        every: λ₁ (and λ₂…λₖ) every `every` steps; 0: never.
        k: Number of top eigenvalues measured (λ₂…λₖ go to top_eigenvalues.csv).
        test: Test examples, `(x, y)` or a source of batches: adds test loss and accuracy.
        eval_every: Train (and test) loss and accuracy every `eval_every` steps (default:
            `every`; 0: never).
        samples: Measure λ₁ on the first `samples` in-memory examples only (default: all).
        tol: Relative accuracy of λ₁…λₖ (residual ‖Hv − λv‖ ≤ tol·|λ₁|).
        max_iter: Most Hessian-vector products per measurement.
        chunk_size: Examples per forward pass of in-memory examples (default 4096; refused
            with a source of batches, which comes in its own).
        seed: Seed of the solver's random start vectors (the seed of step t is seed + t).
        checkpoint_every: A checkpoint of the model and optimizer every `checkpoint_every`
            steps (None: none).
        checkpoint_dir: Where checkpoints go (default: `<run_dir>/checkpoints`).
        keep_last: Keep only the newest `keep_last` checkpoints (None: all).
        batch_size: The loop's minibatch (None: full batch): names the phase (gd or sgd)
            and counts epochs.
        edges: An `EdgeRule` that fixes the edges (default: the optimizer's rule).
        batch_sharpness: Also the batch sharpness of random batches of this size.
        max_memory: What the eigensolver may keep beyond the model and one product: bytes,
            or a size such as "1.5GB" (docs/guides/large-models.md#memory-budget).
        loggers: Dashboards that receive each row's scalars at its step: "tensorboard" and
            "wandb" (offline) write inside `run_dir`; any object with
            `log_metrics(metrics, step)` (a Lightning logger, say) receives them
            (docs/guides/callbacks.md#logging).
        resume: Continue the run already in `run_dir`: rows from the first step this
            Tracker logs on are dropped and that step's checkpoint, if any, gives the warm
            start and the clock.
        overwrite: Replace the run already in `run_dir`: its files and checkpoints start
            afresh.

    Raises:
        SharpError: `run_dir` already holds a run and neither `resume` nor `overwrite` is
            given, or an argument is out of range; the message names the argument.

    Example:
        ```python
        with sharpcli.Tracker(model, loss_fn, (x, y), optimizer=opt, run_dir="reports/my-run") as t:
            for step in range(T + 1):
                opt.zero_grad(); loss_fn(model(x), y).backward()
                t.step(step)
                opt.step()
        ```
    """

    def __init__(self, model: nn.Module, loss_fn: Callable | str | None, data: Any,
                 y: torch.Tensor | None = None, *, run_dir: str | Path,
                 optimizer: torch.optim.Optimizer | None = None,
                 batch_loss: Callable[[nn.Module, Any], torch.Tensor] | str | None = None,
                 forward: Callable[[nn.Module, Any], Any] | None = None,
                 output_fn: Callable[[Any], torch.Tensor] | None = None,
                 num_terms: Callable[[Any], int] | None = None,
                 total_terms: int | None = None, check_deterministic: bool = True,
                 every: int = 20, k: int = 1, test: Any = None, eval_every: int | None = None,
                 samples: int | None = None, tol: float = 1e-3, max_iter: int = 100,
                 chunk_size: int | None = None, seed: int = 0,
                 checkpoint_every: int | None = None, checkpoint_dir: str | Path | None = None,
                 keep_last: int | None = None,
                 batch_size: int | None = None, edges: EdgeRule | None = None,
                 batch_sharpness: int | None = None, max_memory: int | str | None = None,
                 loggers: str | Sequence[Any] | None = None, resume: bool = False, overwrite: bool = False):
        if resume and overwrite:
            raise SharpError("resume=True continues a run and overwrite=True replaces it: give one")
        call = Call(loss_fn, batch_loss=batch_loss, forward=forward, output_fn=output_fn)
        check_chunk_size(data, y, chunk_size)  # a stream comes in its own batches
        run_dir = Path(run_dir)
        self._setup(model, call, data, y, run_dir=run_dir, optimizer=optimizer,
                    num_terms=num_terms, total_terms=total_terms,
                    check_deterministic=check_deterministic, every=every, k=k, test=test,
                    eval_every=eval_every, samples=samples, tol=tol, max_iter=max_iter,
                    chunk_size=chunk_size or DEFAULT_CHUNK, seed=seed,
                    checkpoint_every=checkpoint_every, checkpoint_dir=run_dir / "checkpoints" if checkpoint_dir is None else checkpoint_dir,
                    keep_last=keep_last, batch_size=batch_size, edges=edges,
                    batch_sharpness=batch_sharpness, max_memory=max_memory,
                    loggers=loggers, dist=Dist.current())
        self._claim(resume, overwrite)

    @classmethod
    def _for_training(cls, model: nn.Module, loss_fn, data, y, *, record: dict,
                      resume_step: int | None, top_vector: torch.Tensor | None,
                      elapsed: float, dist: Dist,
                      preconditioned_vector: torch.Tensor | None, **settings) -> "Tracker":
        """`sharp train`'s Tracker: `record` is its config.json; `resume_step` continues the
        files of an interrupted run (rows from that step on are dropped, its checkpoint
        kept), `top_vector` (v₁, or the top-k eigenvectors as columns),
        `preconditioned_vector` and `elapsed` carry the warm starts and the clock over;
        `dist` is the launch's processes. The caller has checked the run's folders."""
        tracker = cls.__new__(cls)
        tracker._setup(model, Call.of(loss_fn), data, y, record=record, dist=dist, **settings)
        tracker.top_vectors, tracker.preconditioned_vector = top_vector, preconditioned_vector
        tracker._clock = (elapsed, time.perf_counter())
        tracker._start(resume_step)
        return tracker

    def _setup(self, model: nn.Module, call: Call, data, y, *, run_dir: str | Path,
               optimizer, every: int, k: int, test, eval_every: int | None,
               samples: int | None, tol: float, max_iter: int, chunk_size: int, seed: int,
               checkpoint_every: int | None, checkpoint_dir: str | Path, keep_last: int | None,
               batch_size: int | None, edges: EdgeRule | None, batch_sharpness: int | None,
               dist: Dist, num_terms=None, total_terms: int | None = None,
               check_deterministic: bool = True, record: dict | None = None,
               max_memory: int | str | None = None, loggers: str | Sequence[Any] | None = None) -> None:
        self.model, self.optimizer, self.call = model, optimizer, call
        self.logger_items = parse_loggers(loggers)  # refused now, not at the first row
        self.loggers: list = []  # opened when the files open (rank 0)
        self.max_memory = _budget(max_memory, model, k)
        device = next(iter(model.parameters())).device
        self.data = as_data(data, y, num_terms=num_terms, total_terms=total_terms,
                            chunk_size=chunk_size, dist=dist, device=device,
                            check_deterministic=check_deterministic)
        self.test = None if test is None else _test_data(test, chunk_size, dist, device)
        self.data_sharp = self._sharpness_data(samples)
        if batch_sharpness is not None and not (self.data.in_memory
                                                and isinstance(self.data.source.inputs, torch.Tensor)):
            raise SharpError("batch_sharpness draws random batches of in-memory examples: give data, y "
                             "tensors (or data=(x, y))")
        self.every, self.k, self.tol, self.max_iter = every, k, tol, max_iter
        self.eval_every = eval_every or every
        self.chunk_size, self.seed, self.dist = chunk_size, seed, dist
        self.edges = edges  # None: the optimizer's rule's, read at each measurement
        self.preconditioned = has_preconditioner(optimizer)
        self.sharpness_batch = batch_sharpness
        self.run_dir, self.checkpoint_dir = Path(run_dir), Path(checkpoint_dir)
        self.checkpoint_every, self.keep_last, self.batch_size = checkpoint_every, keep_last, batch_size
        self.resume_step: int | None = None
        self.top_vectors = None  # the warm start: (size, k), or v₁ from an older checkpoint
        self.preconditioned_vector = None
        self.rows: list[dict] = []  # the rows this tracker logged
        self._saved_now: Path | None = None
        self._clock = (0.0, time.perf_counter())
        self._pending_resume = False  # resume=True on a run: its files open at the first step
        self._warned_unconverged = False
        if record is None:
            record = loop_record(model, optimizer, self._examples(), _input_shape(self.data),
                                 self.test.total if self.test is not None else None,
                                 run_name=self.run_dir.name,
                                 reports_dir=str(self.run_dir.parent),
                                 checkpoint_dir=_recorded_dir(self.checkpoint_dir, self.run_dir),
                                 batch_size=batch_size,
                                 settings={"sharpness_every": every, "sharpness_k": k,
                                           "sharpness_samples": samples, "eval_every": self.eval_every,
                                           "checkpoint_every": checkpoint_every, "seed": seed})
        self.record = record
        self.log = CsvLog(self.run_dir / METRICS_FILE, METRICS_COLUMNS)
        self.top_log = CsvLog(self.run_dir / TOP_EIGENVALUES_FILE, TOP_EIGENVALUE_COLUMNS)

    def _claim(self, resume: bool, overwrite: bool) -> None:
        """Refuse a run_dir that holds a run, unless resuming or overwriting it (rank 0
        looks: the others may not see its disk, or may look after it has written)."""
        exists = self.dist.broadcast(is_run_dir(self.run_dir))
        if exists and not (resume or overwrite):
            raise SharpError(f"run_dir {str(self.run_dir)!r} already holds a run ({CONFIG_FILE}, "
                             f"{METRICS_FILE}): pass resume=True to continue it or overwrite=True "
                             "to replace it")
        if exists and resume:
            self._pending_resume = True
            return
        if exists and self.dist.is_main:
            for path in [self.run_dir / n for n in (CONFIG_FILE, METRICS_FILE, TOP_EIGENVALUES_FILE)]:
                path.unlink(missing_ok=True)
            for path in list_checkpoints(self.checkpoint_dir):
                path.unlink()
        self._start(None)

    def _start(self, resume_step: int | None) -> None:
        """Write config.json and open the logs: afresh, or keeping the rows before
        `resume_step`."""
        self.resume_step = resume_step
        if self.dist.is_main:  # one writer
            atomic_write_json(self.run_dir / CONFIG_FILE, self.record)
            fresh = resume_step is None
            self.log.open(fresh=fresh, keep_below_step=resume_step)
            if self.k > 1:
                self.top_log.open(fresh=fresh, keep_below_step=resume_step)
            close_loggers(self.loggers, self.logger_items)
            self.loggers = open_loggers(self.logger_items, self.run_dir, resume_step=resume_step,
                                        config=self.record)

    def _begin(self, step: int) -> None:
        """At the first step of a resumed run: drop the rows from `step` on, and take the
        warm starts and the clock from the checkpoint of `step` when there is one (else the
        clock from the last row kept); every process gets rank 0's."""
        if not self._pending_resume:
            return
        self._pending_resume = False
        self._start(step)
        path = checkpoint_path(self.checkpoint_dir, step)
        extra = None
        if self.dist.is_main:
            extra = read_checkpoint(path)["extra"] if path.is_file() else {
                "elapsed": _last_seconds(self.run_dir / METRICS_FILE)}
        extra = self.dist.broadcast(extra)
        device = next(iter(self.model.parameters())).device
        top = extra.get("top_vectors")
        top = extra.get("top_vector") if top is None else top  # older files: v₁ alone
        if isinstance(top, torch.Tensor):
            self.top_vectors = top.to(device)
        if isinstance(extra.get("preconditioned_vector"), torch.Tensor):
            self.preconditioned_vector = extra["preconditioned_vector"].to(device)
        self._clock = (float(extra.get("elapsed") or 0.0), time.perf_counter())

    def _sharpness_data(self, samples: int | None) -> Data:
        """The examples λ₁ is measured on: the first `samples` of in-memory data, or all."""
        if samples is None or (self.data.in_memory and samples >= len(self.data.source)):
            return self.data
        if not self.data.in_memory:
            raise SharpError("samples takes the first examples of in-memory data, y; a stream is "
                             "measured whole (give a smaller source instead)")
        return Data(self.data.source.head(samples), num_terms=self.data.num_terms,
                    dist=self.data.dist, device=self.data.device)

    def _examples(self) -> int | None:
        """Examples in the training data, where known: in memory, or counted as the terms."""
        if self.data.in_memory:
            return len(self.data.source)
        return self.data.total if self.data.num_terms is None else None

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
        return final or (bool(self.eval_every) and step % self.eval_every == 0)

    def row_due(self, step: int, final: bool = False) -> bool:
        return self.sharpness_due(step) or self.evaluation_due(step, final)

    # ---------------------------------------------------------------- checkpoints

    def checkpoint(self, step: int, epoch: float = 0.0, extra: dict | None = None, *,
                   final: bool = False, force: bool = False) -> Path | None:
        """Save w_t when due (every `checkpoint_every` steps and at the `final` step) or when
        `force`d; the resumed step's checkpoint exists already. Call it before anything at
        step t touches the model, so that resuming from it repeats step t exactly."""
        self._begin(step)
        self._saved_now = None
        due = force or (self.checkpoint_every and (step % self.checkpoint_every == 0 or final))
        path = checkpoint_path(self.checkpoint_dir, step)
        if not due or (step == self.resume_step and not force and path.is_file()):
            return None
        if self.dist.is_main:  # every process holds the same weights and state
            # top_vectors: the whole warm start; top_vector (v₁ alone) as older readers know it
            state = {"elapsed": self.elapsed(), "top_vector": self.top_vector,
                     "top_vectors": self.top_vectors,
                     "preconditioned_vector": self.preconditioned_vector, **(extra or {})}
            save_checkpoint(path, step=step, epoch=epoch, config=self.record, model=self.model,
                            optimizer=self.optimizer, extra=state)
            self._saved_now = path
            if force:
                self._prune()
        return path

    def _prune(self) -> None:
        if self.keep_last and self.dist.is_main:
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
        saved = list_checkpoints(self.checkpoint_dir)
        loss = self.dist.sum(float(info.loss))  # each process holds its share
        row = {"step": info.step, "epoch": info.epoch, "phase": info.phase, "lr": info.lr,
               "train_loss": loss, "grad_norm": float(info.grad_norm), "seconds": self.elapsed()}
        self._write(self.log, row)
        self._log_scalars(row)
        raise DivergedError(f"training diverged at step {info.step} (loss {loss}, "
                            f"‖g‖ {float(info.grad_norm)}); last good checkpoint: "
                            f"{saved[-1] if saved else 'none'}; try a smaller --lr than "
                            f"{info.lr:g}")

    # ---------------------------------------------------------------- the row

    def measure(self, info: StepInfo, *, final: bool = False) -> dict | None:
        """Evaluate and measure at w_t when due and write the row; returns it (None when
        nothing was due). Leaves the model's mode, buffers and .grad as they were."""
        self._begin(info.step)
        if not self.row_due(info.step, final):
            return None
        measure_sharp, evaluate_now = self.sharpness_due(info.step), self.evaluation_due(info.step, final)
        grad_norm = float(info.grad_norm)
        edges = self.edges or edge_rule(self.optimizer)
        row = {"step": info.step, "epoch": info.epoch, "phase": info.phase, "lr": info.lr,
               "rho": info.rho, "grad_norm": grad_norm,
               **(edges.at(info.lr, grad_norm, info.sam_phase) if edges else {})}
        if evaluate_now:
            row["train_loss"], row["train_acc"] = evaluate(self.model, self.call, self.data)
            if self.test is not None:
                row["test_loss"], row["test_acc"] = evaluate(self.model, self.call, self.test)
        if measure_sharp:
            row.update(self._sharpness(info))
        row["seconds"] = self.elapsed()
        self._write(self.log, row)
        self._log_scalars(row)
        self.rows.append(row)
        return row

    def _sharpness(self, info: StepInfo) -> dict:
        """λ₁ (and λ₂…λ_k into top_eigenvalues.csv) warm-started from the last top-k
        eigenvectors, the alignment of the step's direction with the new v₁, and whether
        every eigenvalue of the row met `tol` (warned about once)."""
        s = measure_sharpness(self.model, self.call, self.data_sharp, k=self.k,
                              tol=self.tol, max_iter=self.max_iter, v0=self.top_vectors,
                              seed=self.seed + info.step, max_memory=self.max_memory)
        self.top_vectors = s.top_vectors
        if self.k > 1:
            for i, (lam, res) in enumerate(zip(s.eigenvalues.tolist(), s.residuals.tolist())):
                self._write(self.top_log, {"step": info.step, "index": i + 1, "eigenvalue": lam,
                                           "residual": res})
        preconditioned = self._preconditioned(info)
        converged = s.all_converged and (preconditioned is None or preconditioned.all_converged)
        if not converged:
            self._warn_unconverged(info.step)
        direction = info.direction
        return {"sharpness": s.value,
                "alignment": alignment(direction, s.top_vector, s.sum_) if direction is not None else None,
                "preconditioned_sharpness": preconditioned.value if preconditioned else None,
                "batch_sharpness": self._batch_sharpness(info),
                "sharpness_converged": int(converged)}

    def _warn_unconverged(self, step: int) -> None:
        if not self._warned_unconverged:
            self._warned_unconverged = True
            warnings.warn(f"step {step}: λ₁ did not reach tol={self.tol:g} within max_iter="
                          f"{self.max_iter} products; its row has sharpness_converged 0 (so will "
                          "any later one that does not; raise max_iter to converge)",
                          SharpWarning, stacklevel=4)

    def _preconditioned(self, info: StepInfo) -> Sharpness | None:
        """λ₁(P⁻¹H), P from the optimizer's state as it is now, before update t (none
        before the first update), warm-started from its own last eigenvector."""
        if not self.preconditioned:
            return None
        p = preconditioner(self.optimizer, trainable_params(self.model))
        if p is None:
            return None
        s = measure_sharpness(self.model, self.call, self.data_sharp, tol=self.tol,
                              max_iter=self.max_iter, v0=self.preconditioned_vector,
                              seed=self.seed + info.step, preconditioner=p,
                              max_memory=self.max_memory)
        self.preconditioned_vector = s.top_vector
        return s

    def _batch_sharpness(self, info: StepInfo) -> float | None:
        """E_B[g_Bᵀ H_B g_B / ‖g_B‖²] over fresh training batches drawn for step t."""
        if self.sharpness_batch is None:
            return None
        x, y = self.data.source.inputs, self.data.source.targets
        batches = random_batches(len(x), self.sharpness_batch, self.seed, info.step, x.device)
        return batch_sharpness(self.model, self.call, x, y, batches,
                               chunk_size=self.chunk_size, dist=self.dist).value

    # ---------------------------------------------------------------- a hand-written loop

    def step(self, step: int, epoch: float | None = None) -> dict | None:
        """Measure w_t when due: call after backward() and before optimizer.step().

        Saves a checkpoint when due, and measures ‖g‖ and the alignment from the `.grad`
        the loop just computed, λ₁, the edges of the optimizer's rule and the evaluation,
        then writes the row. At other steps it costs an integer test or two.

        Args:
            step: t, the number of updates done so far.
            epoch: The loop's own count of epochs (default: from `batch_size` and the
                number of examples).

        Returns:
            The row written to metrics.csv, as a dict; None when nothing was due.

        Raises:
            SharpError: The parameters have no `.grad` (called before `backward()`).
        """
        epoch = self._epoch(step) if epoch is None else epoch
        self.checkpoint(step, epoch)
        if not self.row_due(step):
            return None
        params = [p for p in self.model.parameters() if p.requires_grad]
        if all(p.grad is None for p in params):
            raise SharpError(f"Tracker.step({step}): the parameters have no .grad; call it after "
                             "loss.backward() and before optimizer.step()")
        phase = phase_of(self.optimizer, self.batch_size)
        group_rho = self.optimizer.param_groups[0].get("rho") if is_sam(self.optimizer) else None
        info = StepInfo(step, phase, current_lr(self.optimizer), gradient_norm(params), epoch,
                        rho=group_rho, sam_phase=phase in SAM_PHASES,
                        direction=gradient_vector(params) if self.sharpness_due(step) else None)
        return self.measure(info)

    def _epoch(self, step: int) -> float:
        """Epochs at `step`: steps over the steps an epoch has (⌈N/batch⌉; 1 full batch);
        None where the number of examples N is not known."""
        if not self.batch_size:
            return float(step)
        n = self._examples()
        return step / math.ceil(n / self.batch_size) if n else None

    # ---------------------------------------------------------------- files

    def _write(self, log: CsvLog, row: dict) -> None:
        if self.dist.is_main:
            log.write(row)

    def _log_scalars(self, row: dict) -> None:
        """The row's scalars to every logger, at the row's step (docs/reference/formats.md#logged-scalars)."""
        if self.dist.is_main and self.loggers:
            metrics = scalars(row)
            for logger in self.loggers:
                logger.log_metrics(dict(metrics), row["step"])

    def close(self) -> None:
        """Flush and close the run's files (the context manager's exit does it)."""
        self.log.close()
        self.top_log.close()
        close_loggers(self.loggers, self.logger_items)
        self.loggers = []

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _budget(max_memory, model: nn.Module, k: int) -> MemoryBudget | None:
    """`max_memory` as a budget, refused now (not at the first measurement) when it cannot
    hold the least a restarted solver for λ₁..λ_k keeps: block Lanczos with blocks of k."""
    try:
        budget = MemoryBudget.of(max_memory)
    except LinalgInputError as err:  # as a SharpError alone, still naming max_memory
        raise SharpError(err.template, param=err.params) from None
    if budget is None:
        return None
    params = trainable_params(model)
    size = sum(p.numel() for p in params)
    require_minimum(budget, size, params[0].dtype, [(  # a LinalgInputError is a SharpError
        minimum_vectors(k, k, size), f"λ₁..λ_k with k={k} by block Lanczos keeps {k} Ritz "
        f"vectors, 2 blocks of {k} and {k} of scratch")])
    return budget


def _test_data(test, chunk_size: int, dist: Dist, device) -> Data:
    """`test`: an (x, y) pair of tensors, or a source of batches. The data layer's errors
    about its `data` and `y` are about the Tracker's `test` here, and say so."""
    try:
        return as_data(test, chunk_size=chunk_size, dist=dist, device=device)
    except SharpError as err:
        renamed = {"data": "test", "y": "test"}
        raise SharpError(err.template.replace("{y}", "{test}'s targets").replace("{data}", "{test}"),
                         param=tuple(dict.fromkeys(renamed.get(p, p) for p in err.params))) from None


def _input_shape(data: Data) -> list[int] | None:
    """The shape of one example of in-memory tensor inputs (config.json's input_shape)."""
    if data.in_memory and isinstance(data.source.inputs, torch.Tensor):
        return list(data.source.inputs.shape[1:])
    return None


def _recorded_dir(checkpoint_dir: Path, run_dir: Path) -> str:
    """config.json's `checkpoint_dir`: relative to the run folder when inside it (the run
    can then be moved or copied whole), else absolute."""
    try:
        return str(checkpoint_dir.resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(checkpoint_dir.resolve())


def _last_seconds(path: Path) -> float:
    """`seconds` of the last row of a metrics.csv (0 without one)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        return float(rows[-1]["seconds"]) if rows else 0.0
    except (KeyError, TypeError, ValueError):
        return 0.0
