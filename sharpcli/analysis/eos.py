"""Edge-of-stability analysis of a run (docs/guides/eos.md#verdict): measured sharpness against
the edge, the verdict, and eos.csv (docs/reference/formats.md#eos-csv).

At each step the *measure*, the quantity compared with an edge, is (`Measure.auto`):
- in adam / adamw / rmsprop phases the preconditioned sharpness λ₁(P⁻¹H), against the
  adaptive edge ((2 + 2β₁)/((1 − β₁)η) for Adam and AdamW, (2 + 2μ)/η for RMSProp);
- in sgd phases of a run that measured it, the batch sharpness, against the GD edge;
- otherwise λ₁, against the SAM edge (Long & Bartlett 2024) in sam / eigen-sam phases and
  the GD edge 2/η (Cohen et al. 2021, with momentum as in sharpcli.edges) elsewhere.
`measure=` names one quantity for every step instead (its edge as above; λ₁'s edge in an
adaptive phase is the GD edge). Steps where the measure is empty are left out; ratio =
measure / edge. The SAM edge is Long & Bartlett's for SAM on plain GD: a SAM run with
momentum is measured against it all the same (momentum enters the GD edge only). A run's
verdict summarises those ratios:

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

from sharpcli.config import (ADAPTIVE_PHASES, SAM_PHASES, Measure, phase_at,
                             sam_start_step)
from sharpcli.edges import PRECONDITIONER_OF, EdgeRule
from sharpcli.errors import SharpError, StrictCheckFailed
from sharpcli.formats.atomic import atomic_write
from sharpcli.formats.runs import PHASES, read_config, read_metrics, resolve_run_dir, writable
from sharpcli.formats.schema import EOS_COLUMNS, EOS_FILE

DEFAULT_BAND = 0.1
DEFAULT_THRESHOLD = 0.5
VERDICTS = ("at-edge", "below-edge", "above-edge")
# Comparisons with the band get this much slack so that a ratio of exactly 0.9 counts as
# within a band of 0.1 despite floating point.
_SLACK = 1e-12
# Columns eos needs from metrics.csv; its other columns may be absent here.
EOS_METRICS_COLUMNS = ("step", "phase", "lr", "rho", "grad_norm", "sharpness")
EDGE_KEYS = ("gd_edge", "sam_edge", "adaptive_edge")
# The edge kinds a verdict names, in this order: (measure, SAM phase) → kind.
EDGE_KINDS = ("GD", "SAM", "adaptive", "batch")


def check_band(band: float, threshold: float = DEFAULT_THRESHOLD) -> None:
    if not 0 < band < 1:
        raise SharpError(f"{{band}} must lie in (0, 1), got {band}", param="band")
    if not 0 < threshold <= 1:
        raise SharpError(f"{{threshold}} must lie in (0, 1], got {threshold}", param="threshold")


def run_phase_at(config: dict, step: int) -> str:
    """The update a run of this config.json used at `step`, for when no metrics row says it."""
    start = sam_start_step(config.get("sam_start"), config.get("epochs") is not None,
                           config.get("steps_per_epoch"))
    return phase_at(config.get("optimizer") or "gd", config.get("batch_size"), start, step)


def edge_columns(metrics: pd.DataFrame, config: dict) -> pd.DataFrame:
    """step, phase, gd_edge, sam_edge, adaptive_edge and edge (λ₁'s: the SAM edge in SAM
    phases, else the GD edge) for every metrics row.

    The edges come from the metrics row when the trainer wrote them; otherwise they are
    computed: lr from the row (config `lr` if the cell is empty), momentum, nesterov and β₁
    from the config, rho from the row (config `rho` in SAM phases if empty), ‖g‖ from the
    row's grad_norm. sam_edge is left empty outside SAM phases unless the row has a rho,
    adaptive_edge outside adaptive phases. A row without a positive lr (none logged, or a
    schedule that ended at 0) has no edge: its cells are left empty, and eos leaves it out
    of the verdict.
    """
    momentum = float(config.get("momentum") or 0.0)
    nesterov = bool(config.get("nesterov") or False)
    beta1 = float(0.9 if config.get("beta1") is None else config["beta1"])
    records = []
    for row in metrics.to_dict("records"):
        phase = row.get("phase")
        if not isinstance(phase, str) or not phase:
            phase = run_phase_at(config, int(row["step"]))
        lr = _cell(row, "lr", config.get("lr"))
        if phase not in PHASES:  # an optimizer whose edge sharpcli does not know
            lr = None
        rho = _cell(row, "rho", config.get("rho") if phase in SAM_PHASES else None)
        rule = EdgeRule(momentum, nesterov, rho, PRECONDITIONER_OF.get(phase), beta1)
        computed = rule.at(lr, _cell(row, "grad_norm"), phase in SAM_PHASES or (rho or 0) > 0)
        gd, sam, adaptive = (computed[k] if _cell(row, k) is None else _cell(row, k)
                             for k in EDGE_KEYS)
        edge = sam if phase in SAM_PHASES else gd
        records.append({"step": int(row["step"]), "phase": phase, "gd_edge": _nan(gd),
                        "sam_edge": _nan(sam), "adaptive_edge": _nan(adaptive), "edge": _nan(edge)})
    return pd.DataFrame(records, columns=["step", "phase", *EDGE_KEYS, "edge"], index=metrics.index)


def edge_table(metrics: pd.DataFrame, config: dict, band: float = DEFAULT_BAND,
               measure: Measure | str = Measure.auto) -> pd.DataFrame:
    """The eos.csv table (EOS_COLUMNS) of the rows where the measure was measured, sorted by
    step: `sharpness` holds the measure's value, `measure` its name, `edge` its edge (see
    the module docstring); edges as in edge_columns()."""
    check_band(band)
    rows = metrics.sort_values("step", kind="stable")
    table = edge_columns(rows, config)
    table["measure"] = row_measures(rows, table["phase"], Measure.parse(measure, "measure"))
    records = rows.to_dict("records")
    table["sharpness"] = [_cell(row, m) for row, m in zip(records, table["measure"])]
    table["edge"] = [edge_of(m, row) for m, row in zip(table["measure"], table.to_dict("records"))]
    table["grad_norm"] = rows["grad_norm"].astype(float) if "grad_norm" in rows else math.nan
    table = table[table["sharpness"].notna()].copy()
    table["sharpness"] = table["sharpness"].astype(float)
    edge = table["edge"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(edge > 0, table["sharpness"].to_numpy(dtype=float) / edge, np.nan)
    table["ratio"] = ratio
    table["at_edge"] = np.abs(ratio - 1) <= band + _SLACK
    return table[list(EOS_COLUMNS)].reset_index(drop=True)


def row_measures(metrics: pd.DataFrame, phases: pd.Series, measure: Measure) -> pd.Series:
    """The quantity compared with an edge at each row: `measure` itself, or with auto the
    preconditioned sharpness in adaptive phases, the batch sharpness in sgd phases of a
    run that measured it, λ₁ otherwise."""
    if measure is not Measure.auto:
        return pd.Series(measure.value, index=metrics.index, dtype=object)
    batch = "batch_sharpness" in metrics and bool(metrics["batch_sharpness"].notna().any())

    def pick(phase: str) -> str:
        if phase in ADAPTIVE_PHASES:
            return Measure.preconditioned_sharpness.value
        if phase == "sgd" and batch:
            return Measure.batch_sharpness.value
        return Measure.sharpness.value

    return phases.map(pick).astype(object)


def edge_of(measure: str, edges: dict) -> float:
    """The edge a measure is compared with, from a row of edge_columns(): the adaptive edge
    for λ₁(P⁻¹H), the GD edge of the run's η and momentum for the batch sharpness, λ₁'s own
    (SAM or GD) for λ₁."""
    if measure == Measure.preconditioned_sharpness:
        return edges["adaptive_edge"]
    if measure == Measure.batch_sharpness:
        return edges["gd_edge"]
    return edges["edge"]


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
    edges: str             # which edges applied, "+"-joined: GD, SAM, adaptive (λ₁(P⁻¹H)), batch
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
    measures = known["measure"] if "measure" in known else [Measure.sharpness.value] * len(known)
    kinds = {_edge_kind(m, p) for m, p in zip(measures, known["phase"])}
    edges = "+".join(k for k in EDGE_KINDS if k in kinds)
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


def _edge_kind(measure: str, phase: str) -> str:
    if measure == Measure.preconditioned_sharpness:
        return "adaptive"
    if measure == Measure.batch_sharpness:
        return "batch"
    return "SAM" if phase in SAM_PHASES else "GD"


@dataclass
class EosResult:
    run_dir: Path
    table: pd.DataFrame
    summary: EosSummary


def eos_run(run: str | Path, band: float = DEFAULT_BAND, threshold: float = DEFAULT_THRESHOLD,
            metrics: pd.DataFrame | None = None,
            measure: Measure | str = Measure.auto) -> EosResult:
    """The eos table and verdict of one run: from its metrics.csv, or from `metrics` when
    given (the table sharpcli.training.revisit makes from its checkpoints)."""
    check_band(band, threshold)
    run_dir = resolve_run_dir(run)
    config = read_config(run_dir)
    if metrics is None:
        metrics = read_metrics(run_dir, required=EOS_METRICS_COLUMNS)
    table = edge_table(metrics, config, band, measure)
    if table.empty:
        wanted = sorted(set(row_measures(metrics, edge_columns(metrics, config)["phase"],
                                         Measure.parse(measure, "measure"))))
        raise SharpError(f"{run_dir}: no {' or '.join(wanted)} was measured (the column is "
                         "empty); train with --sharpness-every N (--batch-sharpness for the "
                         "batch sharpness), or use --from-checkpoints")
    if not np.isfinite(table["ratio"].to_numpy(dtype=float)).any():
        raise SharpError(f"{run_dir}: the edge is unknown at every measured step (it needs a "
                         "positive lr in metrics.csv or config.json, and in SAM phases "
                         "grad_norm and rho)")
    return EosResult(run_dir, table, summarize_edges(table, band, threshold, run=run_dir.name))


def write_eos_csv(table: pd.DataFrame, path: str | Path) -> Path:
    path = writable(path)
    try:
        # whole or not at all: Ctrl-C or SIGTERM may come in the middle
        atomic_write(path, lambda f: table[list(EOS_COLUMNS)].to_csv(f, index=False), mode="w")
    except OSError as err:
        raise SharpError(f"cannot write {path}: {err.strerror}") from None
    return path


def eos_csv_path(run_dir: Path, out: str | Path | None = None, several: bool = False) -> Path:
    """Where `sharp eos` writes a run's eos.csv: `reports/<run>/eos.csv`; with `out`, the
    file `out` itself for a single run, `<out>/<run>/eos.csv` for several runs or when `out`
    is an existing directory."""
    if out is None:
        return Path(run_dir) / EOS_FILE
    out = Path(out)
    if several or out.is_dir():
        return out / Path(run_dir).name / EOS_FILE
    return out


@dataclass
class EosReport:
    """`sharp eos` on several runs: each run's result and the eos.csv written for it (None
    where nothing was written)."""

    results: list[EosResult]
    written: list[Path | None]


def eos_runs(runs: list[str | Path], band: float = DEFAULT_BAND,
             threshold: float = DEFAULT_THRESHOLD, measure: Measure | str = Measure.auto, *,
             metrics: dict | None = None, out: str | Path | None = None,
             write: bool = True) -> EosReport:
    """`sharp eos RUN...`: the table and verdict of each run (`eos_run`), and with `write`
    its eos.csv at `eos_csv_path`. `metrics` maps a run (as given in `runs`) to the table to
    use instead of its metrics.csv (`--from-checkpoints`)."""
    metrics = metrics or {}
    results = [eos_run(run, band, threshold, metrics.get(run), measure) for run in runs]
    several = len(results) > 1
    names = [r.run_dir.name for r in results]
    if out is not None and several and len(set(names)) < len(names):
        raise SharpError(f"{{out}} with several runs needs distinct run names, got {names}",
                         param="out")
    written = [write_eos_csv(r.table, eos_csv_path(r.run_dir, out, several)) if write else None
               for r in results]
    return EosReport(results, written)


def require_at_edge(results: list[EosResult]) -> None:
    """`--strict`: StrictCheckFailed (exit 1) unless every run's verdict is at-edge."""
    failed = [r.summary for r in results if r.summary.verdict != "at-edge"]
    if failed:
        listing = ", ".join(f"{s.run}: {s.verdict}" for s in failed)
        raise StrictCheckFailed(f"--strict: not at the edge ({listing})")
