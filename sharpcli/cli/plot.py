"""`sharp plot`: PNG figures of one or several runs."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

HELP = (
    "PNG figures of runs: sharpness against the edges, loss and accuracy, alignment, "
    "spectral density.\n\n"
    "The figures: sharpness λ₁ (and the batch sharpness, where measured) against the GD and "
    "SAM edges (sharpness.png), the preconditioned sharpness λ₁(P⁻¹H) of adam/adamw/rmsprop "
    "runs against the adaptive edge with the raw λ₁ beside it (preconditioned.png), train "
    "and test loss and accuracy (loss.png), alignment of the update with the top eigenvector "
    "(alignment.png), the Hessian spectral density when reports/<run>/density.csv exists "
    "(density.png), the densities of parameter blocks side by side, one panel each, when it "
    "holds those of sharp spectrum --blocks (blocks.png), and when sharp flow wrote "
    "reports/<run>/flow.csv the central and stable flows beside GD (flow.png: loss, GD's "
    "windowed average and the predicted loss; λ₁ and 2/η). A figure with nothing to draw "
    "is skipped.\n\n"
    "One RUN: the figures go to its report folder. Several: every figure holds all runs "
    "(colour = run, line style = quantity) and they go to --out, or else to the first run's "
    "folder as compare-sharpness.png etc. Prints the paths written."
)


class Figure(str, Enum):
    sharpness = "sharpness"
    preconditioned = "preconditioned"
    loss = "loss"
    alignment = "alignment"
    density = "density"
    flow = "flow"
    blocks = "blocks"


def plot(
    runs: Annotated[list[str], typer.Argument(
        help="Run directories (reports/<run>) or run names under reports/.", metavar="RUN",
        show_default=False)],
    out: Annotated[Optional[Path], typer.Option(
        help="Folder for the figures (default: the run's report folder; with several runs "
             "the first run's folder, names prefixed compare-).", show_default=False)] = None,
    log_scale: Annotated[bool, typer.Option(
        "--log-scale", help="Logarithmic y axis for sharpness and loss.")] = False,
    dpi: Annotated[int, typer.Option(help="Resolution of the PNGs in dots per inch.",
                                     min=20, max=1200)] = 150,
    only: Annotated[Optional[list[Figure]], typer.Option(
        help="Draw only this figure (repeatable).", show_default=False)] = None,
) -> None:
    from sharpcli.analysis.plots import plot_runs

    result = plot_runs(runs, out, log_scale=log_scale, dpi=dpi,
                       only=[f.value for f in only] if only else None)
    for path in result.written:
        print(f"wrote {path}")
    for name, why in result.skipped.items():
        print(f"skipped {name}: {why}")


def register(app: typer.Typer) -> None:
    app.command("plot", help=HELP)(plot)
