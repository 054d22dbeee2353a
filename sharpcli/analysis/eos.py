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

import numpy as np
import pandas as pd

from sharpcli.config import SAM_PHASES, phase_at, sam_start_step
from sharpcli.edges import EdgeRule, gd_edge, sam_edge
from sharpcli.errors import SharpError
from sharpcli.formats.runs import PHASES, read_config, read_metrics, resolve_run_dir, writable
from sharpcli.formats.schema import EOS_COLUMNS
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


def run_phase_at(config: dict, step: int) -> str:
    """The update a run of this config.json used at `step`, for when no metrics row says it."""
    start = sam_start_step(config.get("sam_start"), config.get("epochs") is not None,
                           config.get("steps_per_epoch"))
    return phase_at(config.get("optimizer") or "gd", config.get("batch_size"), start, step)


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
            phase = run_phase_at(config, int(row["step"]))
        lr = _cell(row, "lr", config.get("lr"))
        if phase not in PHASES:  # an optimizer whose edge sharpcli does not know
            lr = None
        rho = _cell(row, "rho", config.get("rho") if phase in SAM_PHASES else None)
        rule = EdgeRule(momentum, nesterov, rho)
        computed = rule.at(lr, _cell(row, "grad_norm"), phase in SAM_PHASES or (rho or 0) > 0)
        gd, sam = (computed[k] if _cell(row, k) is None else _cell(row, k)
                   for k in ("gd_edge", "sam_edge"))
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
            metrics: pd.DataFrame | None = None) -> EosResult:
    """The eos table and verdict of one run: from its metrics.csv, or from `metrics` when
    given (the table sharpcli.spectra.measure makes from its checkpoints)."""
    check_band(band, threshold)
    run_dir = resolve_run_dir(run)
    config = read_config(run_dir)
    if metrics is None:
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
