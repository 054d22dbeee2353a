"""Edge-of-stability analysis of a run (SPEC §7): measured sharpness against the edge.

For each step at which λ₁ was measured, the relevant edge is the SAM edge (Long & Bartlett
2024) in sam / eigen-sam phases and the GD edge 2/η (Cohen et al. 2021, with momentum as in
sharpcli.edges) otherwise; ratio = λ₁ / edge. The SAM edge is Long & Bartlett's for SAM
on plain GD: a SAM run with momentum is measured against it all the same (momentum enters
the GD edge only). A run's verdict summarises those ratios:

- the edge is *reached* at the first measurement with ratio ≥ 1 − band;
- from that measurement on (it included) we count the fraction within the band,
  |ratio − 1| ≤ band, and take the median ratio;
- verdict, in this order: `below-edge` if never reached; `above-edge` if the median ratio
  after reaching exceeds 1 + band; `at-edge` if at least `threshold` (default 0.5) of the
  measurements after reaching lie within the band; otherwise the run left the band more
  often than it stayed, and the verdict names the side holding more of its out-of-band
  measurements: `above-edge`, or `below-edge` (also on a tie; e.g. sharpness that settled
  below the edge after a catapult or a learning-rate decay).

Measurements whose edge is unknown (no positive lr) are left out of the verdict.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from sharpcli.edges import gd_edge, sam_edge
from sharpcli.errors import SharpError
from sharpcli.formats.runs import (METRICS_COLUMNS, SAM_PHASES, checkpoint_files, read_config,
                           read_metrics, resolve_run_dir, writable)

EOS_COLUMNS = ("step", "phase", "sharpness", "grad_norm", "gd_edge", "sam_edge", "edge",
               "ratio", "at_edge")
DEFAULT_BAND = 0.1
DEFAULT_THRESHOLD = 0.5
VERDICTS = ("at-edge", "below-edge", "above-edge")
# Comparisons with the band get this much slack so that a ratio of exactly 0.9 counts as
# within a band of 0.1 despite floating point.
_SLACK = 1e-12
# Columns eos needs from metrics.csv; the rest of SPEC §2 may be absent here.
EOS_METRICS_COLUMNS = ("step", "phase", "lr", "rho", "grad_norm", "sharpness")


def check_band(band: float, threshold: float = DEFAULT_THRESHOLD) -> None:
    if not 0 < band < 1:
        raise SharpError(f"--band must lie in (0, 1), got {band}")
    if not 0 < threshold <= 1:
        raise SharpError(f"--threshold must lie in (0, 1], got {threshold}")


def edges_at(lr: float, momentum: float = 0.0, nesterov: bool = False,
             rho: float | None = None, grad_norm: float | None = None) -> dict[str, float]:
    """The calculator: {"gd_edge": ...} and, when rho is given, {"sam_edge": ...} too (which
    then needs grad_norm). The SAM edge is Long & Bartlett's for SAM on plain GD: momentum
    enters the GD edge only."""
    if not lr > 0:
        raise SharpError(f"--lr must be positive, got {lr}")
    if not 0 <= momentum < 1:
        raise SharpError(f"--momentum must lie in [0, 1), got {momentum}")
    out = {"gd_edge": gd_edge(lr, momentum, nesterov)}
    if rho is not None:
        if rho < 0:
            raise SharpError(f"--rho must be ≥ 0, got {rho}")
        if grad_norm is None:
            raise SharpError("the SAM edge depends on the gradient norm: "
                             "give --grad-norm with --rho")
        if not grad_norm > 0:
            raise SharpError(f"--grad-norm must be positive, got {grad_norm}")
        out["sam_edge"] = sam_edge(lr, rho, grad_norm)
    elif grad_norm is not None:
        raise SharpError("--grad-norm only enters the SAM edge: give --rho with it")
    return out


def phase_at(config: dict, step: int) -> str:
    """The update a run of this config used at `step`, for when no metrics row says it."""
    optimizer = config.get("optimizer") or "gd"
    if optimizer not in SAM_PHASES:
        return optimizer
    base = "gd" if config.get("batch_size") is None else "sgd"
    start = config.get("sam_start")
    if start is None:
        return optimizer
    if config.get("epochs") is not None:  # sam_start counts epochs then (SPEC §5)
        per_epoch = config.get("steps_per_epoch")
        if not per_epoch:
            return optimizer
        start = start * per_epoch
    return optimizer if step >= start else base


def edge_columns(metrics: pd.DataFrame, config: dict) -> pd.DataFrame:
    """step, phase, gd_edge, sam_edge and edge (the one that applies) for every metrics row.

    gd_edge / sam_edge come from the metrics row when the trainer wrote them; otherwise they
    are computed: lr from the row (config `lr` if the cell is empty), momentum and nesterov
    from the config, rho from the row (config `rho` in SAM phases if empty), ‖g‖ from the
    row's grad_norm. sam_edge is left empty outside SAM phases unless the row has a rho.
    A row without a positive lr (none logged, or a schedule that ended at 0) has no edge:
    its cells are left empty, and eos leaves it out of the verdict.
    """
    momentum = float(config.get("momentum") or 0.0)
    nesterov = bool(config.get("nesterov") or False)
    records = []
    for row in metrics.to_dict("records"):
        phase = row.get("phase")
        if not isinstance(phase, str) or not phase:
            phase = phase_at(config, int(row["step"]))
        lr = _cell(row, "lr", config.get("lr"))
        grad_norm = _cell(row, "grad_norm")
        gd, sam = _cell(row, "gd_edge"), _cell(row, "sam_edge")
        if lr is not None and lr > 0:
            if gd is None:
                gd = gd_edge(lr, momentum, nesterov)
            if sam is None:
                rho = _cell(row, "rho", config.get("rho") if phase in SAM_PHASES else None)
                if rho is not None and grad_norm is not None and (phase in SAM_PHASES or rho > 0):
                    sam = sam_edge(lr, rho, grad_norm)
        edge = sam if phase in SAM_PHASES else gd
        records.append({"step": int(row["step"]), "phase": phase, "gd_edge": _nan(gd),
                        "sam_edge": _nan(sam), "edge": _nan(edge)})
    return pd.DataFrame(records, columns=["step", "phase", "gd_edge", "sam_edge", "edge"],
                        index=metrics.index)


def edge_table(metrics: pd.DataFrame, config: dict, band: float = DEFAULT_BAND) -> pd.DataFrame:
    """The eos.csv table (EOS_COLUMNS) of the rows where sharpness was measured, sorted by
    step; edges as in edge_columns()."""
    check_band(band)
    rows = metrics[metrics["sharpness"].notna()].sort_values("step", kind="stable")
    table = edge_columns(rows, config)
    table["sharpness"] = rows["sharpness"].astype(float)
    table["grad_norm"] = rows["grad_norm"].astype(float) if "grad_norm" in rows else math.nan
    edge = table["edge"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(edge > 0, table["sharpness"].to_numpy(dtype=float) / edge, np.nan)
    table["ratio"] = ratio
    table["at_edge"] = np.abs(ratio - 1) <= band + _SLACK
    return table[list(EOS_COLUMNS)].reset_index(drop=True)


def _cell(row: dict, key: str, default=None):
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None if default is None else float(default)
    return float(value)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


@dataclass
class EosSummary:
    """The verdict of one run; see the module docstring for the rule."""

    run: str
    n_measured: int        # measurements with a known edge
    edge_step: int | None  # first step with ratio ≥ 1 − band; None: never reached
    in_band: float | None  # fraction of measurements from edge_step on within the band
    median_ratio: float | None  # median ratio from edge_step on
    final_ratio: float | None
    max_ratio: float | None
    edges: str             # which edges applied: "GD", "SAM" or "GD+SAM"
    verdict: str
    band: float
    threshold: float

    def to_dict(self) -> dict:
        return asdict(self)


def summarize_edges(table: pd.DataFrame, band: float = DEFAULT_BAND,
                    threshold: float = DEFAULT_THRESHOLD, run: str = "") -> EosSummary:
    """Verdict of one run from its edge_table()."""
    check_band(band, threshold)
    known = table[np.isfinite(table["ratio"].to_numpy(dtype=float))]
    ratios = known["ratio"].to_numpy(dtype=float)
    kinds = {"SAM" if p in SAM_PHASES else "GD" for p in known["phase"]}
    edges = "+".join(k for k in ("GD", "SAM") if k in kinds)
    base = dict(run=run, n_measured=len(ratios), band=band, threshold=threshold, edges=edges,
                final_ratio=float(ratios[-1]) if len(ratios) else None,
                max_ratio=float(ratios.max()) if len(ratios) else None)
    reached = np.flatnonzero(ratios >= 1 - band - _SLACK)
    if len(reached) == 0:
        return EosSummary(**base, edge_step=None, in_band=None, median_ratio=None,
                          verdict="below-edge")
    first = int(reached[0])
    after = ratios[first:]
    in_band = float(np.mean(np.abs(after - 1) <= band + _SLACK))
    median = float(np.median(after))
    if median > 1 + band + _SLACK:
        verdict = "above-edge"
    elif in_band >= threshold:
        verdict = "at-edge"
    else:
        n_above = int(np.sum(after > 1 + band + _SLACK))
        n_below = int(np.sum(after < 1 - band - _SLACK))
        verdict = "above-edge" if n_above > n_below else "below-edge"
    return EosSummary(**base, edge_step=int(known["step"].iloc[first]), in_band=in_band,
                      median_ratio=median, verdict=verdict)


@dataclass
class EosResult:
    run_dir: Path
    table: pd.DataFrame
    summary: EosSummary


def eos_run(run: str | Path, band: float = DEFAULT_BAND, threshold: float = DEFAULT_THRESHOLD,
            from_checkpoints: bool = False, **measure_kwargs) -> EosResult:
    """The eos table and verdict of one run: from metrics.csv, or with from_checkpoints by
    measuring λ₁ and ‖g‖ at every checkpoint (measure_checkpoints, kwargs passed on)."""
    check_band(band, threshold)
    run_dir = resolve_run_dir(run)
    config = read_config(run_dir)
    if from_checkpoints:
        metrics = measure_checkpoints(run_dir, config=config, **measure_kwargs)
    else:
        metrics = read_metrics(run_dir, required=EOS_METRICS_COLUMNS)
    table = edge_table(metrics, config, band)
    if table.empty:
        raise SharpError(f"{run_dir}: no sharpness was measured (the sharpness column is "
                         "empty); train with --sharpness-every N, or use --from-checkpoints")
    if not np.isfinite(table["ratio"].to_numpy(dtype=float)).any():
        raise SharpError(f"{run_dir}: the edge is unknown at every measured step (it needs a "
                         "positive lr in metrics.csv or config.json, and in SAM phases "
                         "grad_norm and rho)")
    return EosResult(run_dir, table, summarize_edges(table, band, threshold, run=run_dir.name))


def write_eos_csv(table: pd.DataFrame, path: str | Path) -> Path:
    path = writable(path)
    try:
        table[list(EOS_COLUMNS)].to_csv(path, index=False)
    except OSError as err:
        raise SharpError(f"cannot write {path}: {err.strerror}") from None
    return path


def measure_checkpoints(run_dir: str | Path, *, config: dict | None = None,
                        device: str = "cpu", samples: int | None = None, tol: float = 1e-3,
                        max_iter: int = 100, seed: int = 0, chunk_size: int | None = None,
                        on_checkpoint: Callable[[Path, dict], None] | None = None) -> pd.DataFrame:
    """λ₁ (Lanczos on the training-loss Hessian) and the full-batch ‖g‖ at every checkpoint
    of a run, as a metrics-like DataFrame (step, phase, lr, rho, train_loss, grad_norm,
    sharpness; the other SPEC columns empty) that edge_table() reads like metrics.csv.

    The examples are the first `samples` of the run's training subset (default: the run's
    sharpness_samples, else all of it). phase and lr are those of the last metrics.csv row at
    or before the checkpoint's step (from the config when there is none); rho is the
    config's in SAM phases. grad_norm is the full-batch gradient norm, even for runs that
    trained on minibatches. Lanczos starts from a Gaussian vector drawn from `seed`.
    `on_checkpoint(path, row)` is called after each one (progress).
    """
    import torch

    import sharpcli
    try:
        from sharpcli.hessian import HessianOperator
        from sharpcli.hessian.objective import full_batch_gradient
        from sharpcli.linalg.lanczos import lanczos
    except ImportError as err:
        raise SharpError(f"--from-checkpoints needs the Hessian solver, missing here: {err}") \
            from None
    load_checkpoint = getattr(sharpcli, "load_checkpoint", None)
    if load_checkpoint is None:
        raise SharpError("--from-checkpoints needs sharpcli.load_checkpoint, missing here")

    run_dir = Path(run_dir)
    config = read_config(run_dir) if config is None else config
    files = checkpoint_files(run_dir, config)
    logged = _logged_steps(run_dir)
    chunk = chunk_size or config.get("physical_batch_size") or 4096
    data = None  # the training subset is the same for every checkpoint: load it once
    rows = []
    for path in files:
        ckpt = load_checkpoint(path, device=device)
        if data is None:
            x_train, y_train = ckpt.data()[:2]
            n = samples or config.get("sharpness_samples") or len(x_train)
            data = (x_train[:n].to(device), y_train[:n].to(device))
        x, y = data
        loss, grad = full_batch_gradient(ckpt.model, ckpt.loss_fn, x, y, chunk_size=chunk)
        op = HessianOperator(ckpt.model, ckpt.loss_fn, x, y, chunk_size=chunk)
        top = lanczos(op, k=1, tol=tol, max_iter=max_iter, seed=seed)
        eigenvalues = torch.as_tensor(top.eigenvalues)
        step = int(ckpt.step)
        phase, lr = _phase_and_lr(logged, config, step)
        row = {"step": step, "phase": phase, "lr": lr,
               "rho": float(config.get("rho") or 0.0) if phase in SAM_PHASES else math.nan,
               "train_loss": float(loss), "grad_norm": float(torch.linalg.vector_norm(grad)),
               "sharpness": float(eigenvalues.max())}
        rows.append(row)
        if on_checkpoint is not None:
            on_checkpoint(path, row)
    df = pd.DataFrame(rows)
    for col in METRICS_COLUMNS:
        if col not in df.columns:
            df[col] = math.nan
    return df[list(METRICS_COLUMNS)]


def _logged_steps(run_dir: Path) -> pd.DataFrame | None:
    try:
        metrics = read_metrics(run_dir, required=("step", "phase", "lr"))
    except SharpError:
        return None
    return metrics[["step", "phase", "lr"]].sort_values("step", kind="stable")


def _phase_and_lr(logged: pd.DataFrame | None, config: dict, step: int) -> tuple[str, float]:
    if logged is not None:
        before = logged[logged["step"] <= step]
        if len(before):
            last = before.iloc[-1]
            phase = last["phase"] if isinstance(last["phase"], str) else phase_at(config, step)
            lr = last["lr"] if not pd.isna(last["lr"]) else config.get("lr")
            return phase, math.nan if lr is None else float(lr)
    lr = config.get("lr")
    return phase_at(config, step), math.nan if lr is None else float(lr)
