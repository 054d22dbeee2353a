"""PNG figures of runs: sharpness against the edges (λ₁ and the batch sharpness against the
GD and SAM edges; the preconditioned sharpness λ₁(P⁻¹H) of adam/adamw/rmsprop against the
adaptive edge, with the raw λ₁ beside it), loss and accuracy, alignment, density, and the
central flow beside GD (sharpcli.analysis.flow) where `sharp flow` wrote flow.csv, and the
densities of parameter blocks side by side.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global
state, no display needed). With several runs every figure holds all of them: colour names
the run, line style names the quantity.

Where they go: one run → its report folder, `reports/<run>/sharpness.png` etc.; several runs
→ `out_dir` when given (same names), else the first run's report folder with the names
prefixed `compare-` so that the run's own figures are not overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import Formatter

from sharpcli.config import ADAPTIVE_PHASES, SAM_PHASES
from sharpcli.edges import gd_edge
from sharpcli.analysis.eos import edge_columns
from sharpcli.analysis.flow import flow_figure
from sharpcli.errors import SharpError
from sharpcli.formats.runs import Run, load_run, read_density

FIGURES = ("sharpness", "preconditioned", "loss", "alignment", "density", "flow", "blocks")
BLOCK_COLUMNS = 6  # panels per row of the blocks figure
PLOT_COLUMNS = ("step", "phase", "lr", "train_loss", "train_acc", "test_loss", "test_acc",
                "sharpness", "alignment")


@dataclass
class PlotResult:
    written: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # figure → why it was not drawn


def plot_runs(runs: Sequence[str | Path], out_dir: str | Path | None = None, *,
              log_scale: bool = False, dpi: int = 150,
              only: Sequence[str] | None = None) -> PlotResult:
    """Draw every figure the runs have data for (or those named in `only`); see the module
    docstring for where they go. `log_scale` puts the sharpness and loss axes on a log scale."""
    if not dpi > 0:
        raise SharpError(f"{{dpi}} must be positive, got {dpi}", param="dpi")
    unknown = sorted(set(only or ()) - set(FIGURES))
    if unknown:
        raise SharpError(f"unknown figure {unknown[0]!r}; expected one of {', '.join(FIGURES)}")
    loaded = [load_run(r, required=PLOT_COLUMNS) for r in runs]
    if out_dir is not None:
        folder, prefix = Path(out_dir), ""
    elif len(loaded) == 1:
        folder, prefix = loaded[0].path, ""
    else:
        folder, prefix = loaded[0].path, "compare-"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SharpError(f"cannot create the folder {folder}: {err.strerror}") from None
    result = PlotResult()
    for name, fig in figures(loaded, log_scale=log_scale, only=only).items():
        if isinstance(fig, str):
            result.skipped[name] = fig
            continue
        path = folder / f"{prefix}{name}.png"
        try:
            fig.savefig(path, dpi=dpi)
        except OSError as err:
            raise SharpError(f"cannot write {path}: {err.strerror}") from None
        result.written.append(path)
    return result


def figures(runs: Sequence[Run], *, log_scale: bool = False,
            only: Sequence[str] | None = None) -> dict[str, Figure | str]:
    """The figures of FIGURES (or of `only`) for these runs: each a matplotlib Figure, or a
    string that says why there is nothing to draw."""
    runs = list(runs)
    labels = _labels(runs)
    draws = {"sharpness": _sharpness, "preconditioned": _preconditioned, "loss": _loss,
             "alignment": _alignment, "density": _density, "flow": flow_figure,
             "blocks": _blocks}
    return {name: draws[name](runs, labels, log_scale)
            for name in FIGURES if only is None or name in only}


def _labels(runs: list[Run]) -> list[str]:
    """Run names for the legend; the parent folder is added where names repeat."""
    names = [r.name for r in runs]
    return [f"{r.path.parent.name}/{r.name}" if names.count(r.name) > 1 else r.name for r in runs]


def _colours(n: int) -> list:
    return [f"C{i % 10}" for i in range(n)]


def _style_legend(ax, styles: list[tuple[str, str]], loc: str) -> None:
    """A second legend in grey that maps line styles to quantities."""
    handles = [Line2D([], [], color="0.3", linestyle=ls, label=label) for ls, label in styles]
    ax.add_artist(ax.legend(handles=handles, loc=loc, fontsize="small", framealpha=0.8))


def _marker(df: pd.DataFrame) -> str | None:
    return "o" if len(df) <= 60 else None


def _measured(m: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows where `column` was measured (none when a run predates the column)."""
    return m[m[column].notna()] if column in m else m.iloc[:0]


def _sharpness(runs: list[Run], labels: list[str], log_scale: bool) -> Figure | str:
    if not any(r.metrics["sharpness"].notna().any() for r in runs):
        return "no sharpness measured (train with --sharpness-every N)"
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    single = len(runs) == 1
    has_sam = has_batch = False
    for run, label, colour in zip(runs, labels, _colours(len(runs))):
        m = run.metrics.sort_values("step", kind="stable")
        edges = edge_columns(m, run.config)
        measured = m[m["sharpness"].notna()]
        ax.plot(measured["step"], measured["sharpness"], color=colour, marker=_marker(measured),
                markersize=3, linewidth=1.5, label="sharpness λ₁" if single else label)
        batch = _measured(m, "batch_sharpness")
        if len(batch):
            has_batch = True
            ax.plot(batch["step"], batch["batch_sharpness"], color="tab:green" if single else colour,
                    linestyle="-.", marker=_marker(batch), markersize=2.5, linewidth=1.3,
                    label="batch sharpness" if single else None)
        # the GD edge is no edge of an adaptive optimizer's λ₁ (preconditioned.png has theirs)
        gd = edges[edges["gd_edge"].notna() & ~edges["phase"].isin(ADAPTIVE_PHASES)]
        ax.plot(gd["step"], gd["gd_edge"], color="black" if single else colour,
                linestyle="--", linewidth=1.2, label="GD edge 2/η" if single else None)
        sam = edges[edges["sam_edge"].notna() & edges["phase"].isin(SAM_PHASES)]
        if len(sam):
            has_sam = True
            ax.plot(sam["step"], sam["sam_edge"], color="tab:red" if single else colour,
                    linestyle=":", linewidth=1.5, label="SAM edge" if single else None)
        if single and len(sam) and (m["phase"].isin(SAM_PHASES)).any():
            steps = m.loc[m["phase"].isin(SAM_PHASES), "step"]
            ax.axvspan(steps.min(), steps.max(), color="tab:red", alpha=0.06, label="SAM phase")
    if log_scale:
        _plain_log_axis(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("top Hessian eigenvalue λ₁")
    ax.set_title("Sharpness and the edges of stability" + (f": {labels[0]}" if single else ""))
    ax.grid(True, alpha=0.3)
    if single:
        ax.legend(loc="best", fontsize="small")
    else:
        styles = [("-", "sharpness λ₁"), ("--", "GD edge 2/η")]
        styles += [(":", "SAM edge")] if has_sam else []
        styles += [("-.", "batch sharpness")] if has_batch else []
        _style_legend(ax, styles, loc="lower right")
        ax.legend(loc="upper left", fontsize="small", title="run")
    return fig


def _preconditioned(runs: list[Run], labels: list[str], log_scale: bool) -> Figure | str:
    """λ₁(P⁻¹H) against the adaptive edge (left), and the raw λ₁ of the same runs (right),
    whose edge the adaptive optimizers do not have."""
    if not any(len(_measured(r.metrics, "preconditioned_sharpness")) for r in runs):
        return "no preconditioned sharpness measured (train with --optimizer adam, adamw or rmsprop)"
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax_p, ax_raw = fig.subplots(1, 2)
    single = len(runs) == 1
    for run, label, colour in zip(runs, labels, _colours(len(runs))):
        m = run.metrics.sort_values("step", kind="stable")
        pre, raw = _measured(m, "preconditioned_sharpness"), _measured(m, "sharpness")
        if pre.empty:  # not an adaptive run: colours stay those of the other figures
            continue
        ax_p.plot(pre["step"], pre["preconditioned_sharpness"], color=colour, marker=_marker(pre),
                  markersize=3, linewidth=1.5, label="λ₁(P⁻¹H)" if single else label)
        edges = edge_columns(m, run.config)
        edges = edges[edges["adaptive_edge"].notna()]
        ax_p.plot(edges["step"], edges["adaptive_edge"], color="black" if single else colour,
                  linestyle="--", linewidth=1.2, label="adaptive edge" if single else None)
        ax_raw.plot(raw["step"], raw["sharpness"], color=colour, marker=_marker(raw),
                    markersize=3, linewidth=1.5, label=label)
    for ax in (ax_p, ax_raw) if log_scale else ():
        _plain_log_axis(ax)
    ax_p.set_title("Preconditioned sharpness and the adaptive edge")
    ax_p.set_ylabel("λ₁(P⁻¹H)")
    ax_raw.set_title("Raw sharpness (the Hessian's own λ₁)")
    ax_raw.set_ylabel("λ₁(H)")
    for ax in (ax_p, ax_raw):
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    if single:
        ax_p.legend(loc="best", fontsize="small")
    else:
        _style_legend(ax_p, [("-", "λ₁(P⁻¹H)"), ("--", "adaptive edge")], loc="lower right")
        ax_raw.legend(loc="best", fontsize="small", title="run")
    fig.suptitle("Adaptive edge of stability" + (f": {labels[0]}" if single else ""))
    return fig


def _loss(runs: list[Run], labels: list[str], log_scale: bool) -> Figure | str:
    cols = ("train_loss", "test_loss", "train_acc", "test_acc")
    if not any(r.metrics[c].notna().any() for r in runs for c in cols):
        return "no loss or accuracy logged"
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    single = len(runs) == 1
    for run, label, colour in zip(runs, labels, _colours(len(runs))):
        m = run.metrics.sort_values("step", kind="stable")
        for ax, split, ls in ((ax_loss, "train", "-"), (ax_loss, "test", "--"),
                              (ax_acc, "train", "-"), (ax_acc, "test", "--")):
            col = f"{split}_{'loss' if ax is ax_loss else 'acc'}"
            d = m[m[col].notna()]
            if d.empty:
                continue
            y = d[col] * (100 if ax is ax_acc else 1)
            name = split if single else (label if split == "train" else None)
            ax.plot(d["step"], y, color=colour, linestyle=ls, marker=_marker(d), markersize=2.5,
                    linewidth=1.4, label=name)
    if log_scale:
        _plain_log_axis(ax_loss)
    ax_loss.set_title("Loss")
    ax_loss.set_ylabel("loss")
    ax_acc.set_title("Accuracy")
    ax_acc.set_ylabel("accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    if single:
        for ax in (ax_loss, ax_acc):
            if ax.lines:  # a run without accuracies (a model's own loss) has an empty panel
                ax.legend(fontsize="small")
    else:
        _style_legend(ax_acc, [("-", "train"), ("--", "test")], loc="lower right")
        ax_loss.legend(fontsize="small", title="run")
    fig.suptitle(f"Training: {labels[0]}" if single else "Training")
    return fig


def _alignment(runs: list[Run], labels: list[str], log_scale: bool) -> Figure | str:
    if not any(r.metrics["alignment"].notna().any() for r in runs):
        return "no alignment measured (measured together with sharpness)"
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for run, label, colour in zip(runs, labels, _colours(len(runs))):
        m = run.metrics.sort_values("step", kind="stable")
        d = m[m["alignment"].notna()]
        ax.plot(d["step"], d["alignment"], color=colour, marker=_marker(d), markersize=3,
                linewidth=1.3, label=label)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("|cos(ε, v₁)|")
    ax.set_title("Alignment of the update direction ε with the top eigenvector v₁")
    ax.grid(True, alpha=0.3)
    if len(runs) > 1:
        ax.legend(fontsize="small", title="run")
    return fig


def _density(runs: list[Run], labels: list[str], log_scale: bool) -> Figure | str:
    densities = [(run, label, _block_rows(run, "all")) for run, label in zip(runs, labels)]
    densities = [(r, lab, d) for r, lab, d in densities if len(d)]
    if not densities:
        return "no density.csv (write one with sharp spectrum --density)"
    n = len(densities)
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(5.5 * ncols, 4.2 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (run, label, d) in zip(axes, densities):
        groups = sorted(d.groupby(["step", "checkpoint"], sort=False), key=lambda g: g[0][0])
        cmap = _viridis()
        top = float(d["density"].max()) if d["density"].notna().any() else 1.0
        for i, ((step, _), g) in enumerate(groups):
            g = g.sort_values("eigenvalue")
            colour = cmap(i / max(len(groups) - 1, 1))
            ax.plot(g["eigenvalue"], g["density"].clip(lower=top * 1e-10), color=colour,
                    linewidth=1.3, label=f"step {int(step)}")
        lr = run.config.get("lr")
        if lr:
            edge = gd_edge(float(lr), float(run.config.get("momentum") or 0.0),
                           bool(run.config.get("nesterov")))
            ax.axvline(edge, color="black", linestyle="--", linewidth=1, label="GD edge 2/η")
        ax.set_yscale("log")
        ax.set_ylim(bottom=top * 1e-8)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density")
        ax.set_title(f"Hessian spectral density: {label}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", ncols=2 if len(groups) > 6 else 1)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig


def _block_rows(run: Run, block: str | None) -> pd.DataFrame:
    """density.csv rows of one block (None: of every block but the whole network's)."""
    d = read_density(run.path)
    if d is None:
        return pd.DataFrame(columns=["checkpoint", "step", "eigenvalue", "density", "block"])
    return d[d["block"] == block] if block is not None else d[d["block"] != "all"]


def _blocks(runs: list[Run], labels: list[str], log_scale: bool) -> Figure | str:
    """One panel per parameter block (`sharp spectrum --blocks ... --density`), side by
    side: one run's densities at every checkpoint coloured by step, or each run's last
    checkpoint coloured by run. Shapes, not heights, compare across panels: each density
    integrates to 1 over its own block's range."""
    found = [(label, _block_rows(run, None)) for run, label in zip(runs, labels)]
    found = [(label, d) for label, d in found if len(d)]
    if not found:
        return "no block densities in density.csv (write them with sharp spectrum --blocks … --density)"
    names = list(dict.fromkeys(b for _, d in found for b in d["block"]))
    nrows = -(-len(names) // BLOCK_COLUMNS)
    ncols = -(-len(names) // nrows)  # rows as full as each other
    fig = Figure(figsize=(3.2 * ncols, 2.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    single = len(found) == 1
    for ax, name in zip(axes, names):
        top = max(float(d.loc[d["block"] == name, "density"].max()) for _, d in found
                  if (d["block"] == name).any())
        for (label, d), colour in zip(found, _colours(len(found))):
            d = d[d["block"] == name]
            steps = sorted(d["step"].unique())
            if not single:
                steps = steps[-1:]
            for i, step in enumerate(steps):
                g = d[d["step"] == step].sort_values("eigenvalue")
                colour_i = _viridis()(i / max(len(steps) - 1, 1)) if single else colour
                ax.plot(g["eigenvalue"], g["density"].clip(lower=top * 1e-10), color=colour_i,
                        linewidth=1.1, label=f"step {int(step)}" if single else label)
        ax.set_yscale("log")
        ax.set_ylim(bottom=top * 1e-8)
        ax.set_title(name, fontsize="small")
        ax.tick_params(labelsize="x-small")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    axes[0].legend(fontsize="x-small")
    fig.supxlabel("eigenvalue")
    fig.supylabel("density")
    fig.suptitle("Hessian spectral density by block" + (f": {labels[0]}" if len(runs) == 1 else ""))
    return fig


def _plain_log_axis(ax) -> None:
    """A log y axis labelled 20, 30, 0.01 rather than 2×10¹."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_PlainLog(ax.yaxis.get_major_formatter()))
    ax.yaxis.set_minor_formatter(_PlainLog(ax.yaxis.get_minor_formatter()))


class _PlainLog(Formatter):
    """matplotlib's log formatter decides which ticks get a label (minor ones too over short
    ranges); this one only changes how those labels read."""

    def __init__(self, inner: Formatter):
        self.inner = inner

    def set_axis(self, axis) -> None:
        super().set_axis(axis)
        self.inner.set_axis(axis)

    def set_locs(self, locs) -> None:
        self.inner.set_locs(locs)

    def __call__(self, x, pos=None) -> str:
        return f"{x:g}" if self.inner(x, pos) else ""


def _viridis():
    from matplotlib import colormaps

    return colormaps["viridis"]
