"""The central flow beside what GD did: flow.csv read back, GD's loss averaged over a window,
the three comparisons `sharp flow` prints (docs/guides/flow.md#measured), and flow.png.

Only the files: flow.csv and the run's metrics.csv and config.json (no torch here).
GD's time-averaged loss at step t is the mean of its logged train losses at steps within
±window/2 of t (a narrower, still centred window near the ends); the window is WINDOW steps,
widened to WINDOW_POINTS logged points when metrics.csv logs the loss more sparsely (train
with --eval-every 1 for the loss at every step).
GD has reached the edge at its first measured λ₁ ≥ (1 − band)·2/η, as `sharp eos` says.
For an RMSProp run the sharpness is λ₁(P⁻¹H) (metrics.csv's preconditioned_sharpness, flow.csv's
sharpness), with the same edge 2/η.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sharpcli.edges import gd_edge
from sharpcli.errors import SharpError
from sharpcli.formats.runs import Run, load_run, read_flow
from sharpcli.formats.schema import FLOW_FILE, FLOW_SIGMA_FILE

WINDOW = 20          # steps averaged for GD's time-averaged loss (and squared displacement)
SIGMA_SHOWN = 3      # Σ's top eigenvalues drawn and compared
WINDOW_POINTS = 5    # at least this many logged losses in the window
EDGE_BAND = 0.1      # GD is at the edge from its first λ₁ ≥ (1 − band)·2/η (sharp eos's band)


def windowed_average(steps: np.ndarray, values: np.ndarray, window: float) -> np.ndarray:
    """At each of `steps` (sorted), the mean of `values` over the steps within ±h of it,
    h = window/2, or less near either end so that the window stays centred there."""
    steps, values = np.asarray(steps, float), np.asarray(values, float)
    sums = np.concatenate([[0.0], np.cumsum(values)])
    half = np.minimum(window / 2, np.minimum(steps - steps[0], steps[-1] - steps))
    lo = np.searchsorted(steps, steps - half, side="left")
    hi = np.searchsorted(steps, steps + half, side="right")
    return (sums[hi] - sums[lo]) / (hi - lo)


def gd_loss(metrics: pd.DataFrame) -> pd.DataFrame:
    """GD's logged train loss and its windowed average (columns step, train_loss, average),
    with the window used in `window` (attrs)."""
    d = metrics[metrics["train_loss"].notna()].sort_values("step")
    spacing = float(np.median(np.diff(d["step"]))) if len(d) > 1 else 1.0
    window = max(WINDOW, WINDOW_POINTS * spacing)
    out = pd.DataFrame({"step": d["step"].to_numpy(), "train_loss": d["train_loss"].to_numpy()})
    out["average"] = windowed_average(out["step"], out["train_loss"], window)
    out.attrs["window"] = window
    return out


@dataclass
class FlowSummary:
    """The comparisons over the steps from GD's arrival at the edge on (None: not measured)."""

    lr: float
    edge_step: int | None       # GD's first λ₁ ≥ (1 − band)·2/η
    last_step: int
    window: float
    loss_gap: float | None      # median |predicted − GD's average| / GD's average
    stable_loss_gap: float | None
    own_loss_gap: float | None  # the same of the central flow's own L(w), without ½⟨H, Σ⟩
    sharpness: dict             # process → median λ₁ (central, stable, gd)
    sharpness_spread: float | None  # max |λ₁ central − 2/η| / (2/η) where Σ ≠ 0
    distance: dict              # process → (median, last) ‖w − w_GD‖ at checkpoint steps
    n_checkpoints: int
    start: int | None = None    # compared from this step instead of edge_step
    sigma_ratio: dict | None = None  # index → median smoothed displacement² / σ² (flow-sigma.csv)
    sigma_steps: int = 0        # the steps that ratio is over
    name: str = "GD"            # the run's optimizer, as the lines call it
    measure: str = "λ₁"         # the sharpness its flow holds: λ₁, or λ₁(P⁻¹H) for RMSProp

    def lines(self) -> list[str]:
        edge = gd_edge(self.lr)
        if self.edge_step is None and self.start is None:
            return [f"{self.name}'s {self.measure} in metrics.csv never reached the edge "
                    f"({self.measure} ≥ {1 - EDGE_BAND:g}·2/η = "
                    f"{(1 - EDGE_BAND) * edge:.4g}), or was not measured: nothing to compare"]
        first = self.edge_step if self.start is None else self.start
        out = [f"{self.name} reached the edge ({self.measure} ≥ {1 - EDGE_BAND:g}·2/η) at step "
               f"{self.edge_step}; "
               f"over steps {first}–{self.last_step}:"]
        if self.loss_gap is not None:
            out.append(f"  loss: central flow's prediction vs {self.name}'s loss averaged over "
                       f"{self.window:g} steps, median relative gap {self.loss_gap:.2%} "
                       f"(the central flow's own L(w): {self.own_loss_gap:.2%}; the stable "
                       f"flow's loss: {self.stable_loss_gap:.2%})")
        lam = self.sharpness
        out.append(f"  {self.measure} (median): central {_fmt(lam.get('central'))}, stable "
                   f"{_fmt(lam.get('stable'))}, {self.name} {_fmt(lam.get('gd'))}; "
                   f"2/η = {edge:.4g}"
                   + ("" if self.sharpness_spread is None else
                      f" (central within {self.sharpness_spread:.1e} of it, relative, where "
                      "Σ ≠ 0)"))
        if self.sigma_ratio:
            ratios = ", ".join(f"σ{i}² {r:.3g}" for i, r in self.sigma_ratio.items())
            out.append(f"  Σ: {self.name}'s squared displacement along Σ's eigenvectors, averaged "
                       f"over {self.window:g} steps, against the flow's σᵢ² (median ratio over "
                       f"{self.sigma_steps} steps): {ratios}")
        if self.n_checkpoints:
            (cm, cl), (sm, sl) = self.distance["central"], self.distance["stable"]
            out.append(f"  ‖w − w_{self.name}‖ at {self.n_checkpoints} checkpoints: central median "
                       f"{cm:.4g} (last {cl:.4g}), stable median {sm:.4g} (last {sl:.4g})")
        return out


def _fmt(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.4g}"


def flow_summary(run_dir: str | Path, flow_csv: str | Path | None = None,
                 start: int | None = None) -> FlowSummary:
    """The comparisons of a run's flow.csv (or `flow_csv`) with its metrics.csv, over the
    steps from GD's arrival at the edge on (or from `start`)."""
    run = load_run(run_dir, required=("step", "train_loss", "sharpness"))
    flow = read_flow(flow_csv or run.path / FLOW_FILE)
    if flow is None:
        raise SharpError(f"{flow_csv or run.path / FLOW_FILE} is missing: run sharp flow first")
    lr = float(run.config["lr"])
    measured = measured_sharpness(run)
    reached = measured[measured["sharpness"] >= (1 - EDGE_BAND) * gd_edge(lr)]
    edge_step = int(reached["step"].iloc[0]) if len(reached) else None
    gd = gd_loss(run.metrics)
    summary = FlowSummary(lr, edge_step, int(flow["step"].max()), gd.attrs["window"], None, None,
                          None, {}, None, {}, 0, start, name=run_name(run),
                          measure=sharpness_label(run))
    first = start if start is not None else edge_step
    if first is None:
        return summary
    flow = flow[flow["step"] >= first]
    central, stable = (flow[flow["process"] == p].set_index("step") for p in ("central", "stable"))
    gd = gd[gd["step"].isin(central.index) & gd["step"].isin(stable.index)]
    if len(gd):
        avg = gd["average"].to_numpy()
        gap = lambda values: float(np.median(np.abs(values.to_numpy() - avg) / avg))  # noqa: E731
        summary.loss_gap = gap(central.loc[gd["step"], "predicted_loss"])
        summary.stable_loss_gap = gap(stable.loc[gd["step"], "train_loss"])
        summary.own_loss_gap = gap(central.loc[gd["step"], "train_loss"])
    summary.sharpness = {"central": float(central["sharpness"].median()),
                         "stable": float(stable["sharpness"].median()),
                         "gd": float(measured.loc[measured["step"] >= first, "sharpness"].median())}
    sigma = smoothed_sigma(run.path / FLOW_SIGMA_FILE if flow_csv is None
                           else Path(flow_csv).with_name(FLOW_SIGMA_FILE), gd.attrs["window"])
    if sigma is not None:
        sigma = sigma[(sigma["step"] >= first) & sigma["average"].notna() & (sigma["sigma2"] > 0)]
        if len(sigma):
            ratio = (sigma["average"] / sigma["sigma2"]).groupby(sigma["index"]).median()
            summary.sigma_ratio = {int(i): float(r) for i, r in ratio.items() if i <= SIGMA_SHOWN}
            summary.sigma_steps = int(sigma["step"].nunique())
    held = central[central["sigma_trace"] > 0]
    if len(held):  # where Σ holds the central flow's λ₁ (Σ = 0 before it reaches 2/η)
        edge = gd_edge(lr)
        summary.sharpness_spread = float((held["sharpness"] - edge).abs().max() / edge)
    at = central.index[central["distance"].notna()].intersection(
        stable.index[stable["distance"].notna()])
    if len(at):
        summary.distance = {name: (float(df.loc[at, "distance"].median()),
                                   float(df.loc[at, "distance"].iloc[-1]))
                            for name, df in (("central", central), ("stable", stable))}
        summary.n_checkpoints = len(at)
    return summary


def smoothed_sigma(path: Path, window: float) -> pd.DataFrame | None:
    """flow-sigma.csv with `average`: per index, the run's squared displacement averaged over
    `window` steps (over the steps where it was measured); None without the file or any
    measured displacement."""
    if not path.is_file():
        return None
    d = pd.read_csv(path)
    top = d.groupby("step")["sigma2"].transform("max")
    # directions Σ barely uses (σ² below 1e-6 of the top's) have no measurable prediction
    d = d[d["displacement2"].notna() & (d["sigma2"] > 1e-6 * top)].sort_values(["index", "step"])
    if not len(d):
        return None
    parts = []
    for _, part in d.groupby("index"):
        part = part.copy()
        part["average"] = windowed_average(part["step"], part["displacement2"], window)
        parts.append(part)
    return pd.concat(parts)


def measured_sharpness(run: Run) -> pd.DataFrame:
    """The run's measured sharpness by step (columns step, sharpness): λ₁ for GD, λ₁(P⁻¹H) for
    RMSProp, the quantity its flow holds at 2/η."""
    column = "sharpness" if run.config.get("optimizer") == "gd" else "preconditioned_sharpness"
    if column not in run.metrics:
        raise SharpError(f"{run.path}: metrics.csv has no {column} column")
    d = run.metrics[run.metrics[column].notna()]
    return pd.DataFrame({"step": d["step"].to_numpy(), "sharpness": d[column].to_numpy()})


def run_name(run: Run) -> str:
    optimizer = run.config.get("optimizer")
    return "GD" if optimizer == "gd" else {"rmsprop": "RMSProp"}.get(optimizer, str(optimizer))


def sharpness_label(run: Run) -> str:
    return "λ₁" if run.config.get("optimizer") == "gd" else "λ₁(P⁻¹H)"


def flow_figure(runs: list[Run], labels: list[str], log_scale: bool) -> Figure | str:
    """flow.png of one run: left the loss (GD's thin, its windowed average, the central
    flow's predicted loss and its L(w), the stable flow's), right λ₁ (GD's, the central
    flow's, the stable flow's, 2/η)."""
    if len(runs) != 1:
        return "drawn for one run at a time"
    run = runs[0]
    flow = read_flow(run.path / FLOW_FILE)
    if flow is None:
        return f"no {FLOW_FILE} (sharp flow writes it)"
    lr = float(run.config["lr"])
    central, stable = (flow[flow["process"] == p].sort_values("step") for p in ("central", "stable"))
    gd = gd_loss(run.metrics)
    name = run_name(run)
    sigma = smoothed_sigma(run.path / FLOW_SIGMA_FILE, gd.attrs["window"])
    fig = Figure(figsize=(16.5 if sigma is not None else 11, 4.5), layout="constrained")
    axes = fig.subplots(1, 3 if sigma is not None else 2)
    ax_loss, ax_lam = axes[:2]
    if sigma is not None:
        _sigma_panel(axes[2], pd.read_csv(run.path / FLOW_SIGMA_FILE), sigma, name)
    ax_loss.plot(gd["step"], gd["train_loss"], color="0.6", linewidth=0.6, label=name)
    ax_loss.plot(gd["step"], gd["average"], color="k", linewidth=1.4,
                 label=f"{name}, {gd.attrs['window']:g}-step average")
    ax_loss.plot(central["step"], central["predicted_loss"], color="C3", linewidth=1.6,
                 label="central flow: L + ½⟨H, Σ⟩")
    ax_loss.plot(central["step"], central["train_loss"], color="C3", linewidth=1.0, linestyle=":",
                 label="central flow: L(w)")
    ax_loss.plot(stable["step"], stable["train_loss"], color="C0", linewidth=1.4, linestyle="--",
                 label="stable flow")
    gd_lam = measured_sharpness(run)
    ax_lam.plot(gd_lam["step"], gd_lam["sharpness"], color="0.4", linewidth=1.0, marker=".",
                markersize=3, label=name)
    ax_lam.plot(central["step"], central["sharpness"], color="C3", linewidth=1.6, label="central flow")
    ax_lam.plot(stable["step"], stable["sharpness"], color="C0", linewidth=1.4, linestyle="--",
                label="stable flow")
    ax_lam.axhline(gd_edge(lr), color="k", linestyle=":", linewidth=1.0, label="2/η")
    if log_scale:
        ax_loss.set_yscale("log")
    ax_loss.set_title("Loss")
    ax_lam.set_title(f"Sharpness {sharpness_label(run)}")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"Central flow: {labels[0]} (η = {lr:g})")
    return fig


def _sigma_panel(ax, predicted: pd.DataFrame, measured: pd.DataFrame, name: str) -> None:
    """The covariance check: the flow's σᵢ² (solid) and the run's squared displacement along
    the same eigenvector, averaged (dashed), for the top SIGMA_SHOWN."""
    for i in range(1, SIGMA_SHOWN + 1):
        p, m = predicted[predicted["index"] == i], measured[measured["index"] == i]
        if not len(p):
            continue
        ax.plot(p["step"], p["sigma2"], color=f"C{i}", linewidth=1.4, label=f"σ{i}² (central flow)")
        if len(m):
            ax.plot(m["step"], m["average"], color=f"C{i}", linewidth=1.0, linestyle="--",
                    label=f"{name}'s (v{i}·δ)², averaged")
    ax.set_yscale("log")
    ax.set_title("Oscillation: Σ's eigenvalues")
