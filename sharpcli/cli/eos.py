"""`sharp eos`: measured sharpness against the GD, SAM and adaptive edges, with a verdict per run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sharpcli.config import Measure, Optimizer

HELP = (
    "Compare measured sharpness with the edge of stability, run by run.\n\n"
    "For each step where λ₁ was measured, the edge is the SAM edge (Long & Bartlett 2024) in "
    "sam/eigen-sam phases and the GD edge otherwise: 2/η, with momentum β (2+2β)/η, with "
    "Nesterov (2+2β)/(η(1+2β)); ratio = λ₁/edge. In adam/adamw/rmsprop phases the measure is "
    "the preconditioned sharpness λ₁(P⁻¹H) against the adaptive edge (2+2β₁)/((1−β₁)η) "
    "(Cohen et al. 2022; rmsprop (2+2μ)/η), and in sgd phases of a run trained with "
    "--batch-sharpness the batch sharpness against the GD edge (edge column: adaptive, "
    "batch); --measure picks one quantity for every step instead. Writes "
    "reports/<run>/eos.csv (step,phase,sharpness,grad_norm,gd_edge,sam_edge,edge,ratio,"
    "at_edge,measure: sharpness is the value of the quantity named by measure) and prints a "
    "summary per run.\n\n"
    "Verdict: the edge is reached at the first ratio ≥ 1 − band. From there on (that "
    "measurement included): above-edge if the median ratio > 1 + band; at-edge if at least "
    "--threshold of the measurements lie within the band |ratio − 1| ≤ band; otherwise the "
    "side (below-edge or above-edge) holding more of the out-of-band measurements, "
    "below-edge on a tie. Never reached: below-edge.\n\n"
    "Calculator: with --lr (and --momentum, --nesterov, --rho, --grad-norm) and no RUN, "
    "prints the GD edge, and the SAM edge when --rho is given; with --optimizer adam or "
    "adamw (--beta1) or rmsprop (--momentum), the adaptive edge."
)


def eos(
    runs: Annotated[Optional[list[str]], typer.Argument(
        help="Run directories (reports/<run>) or run names under reports/.",
        metavar="RUN", show_default=False)] = None,
    band: Annotated[float, typer.Option(
        help="Half-width of the band around the edge: at the edge means "
             "|ratio − 1| ≤ band.")] = 0.1,
    threshold: Annotated[float, typer.Option(
        help="Fraction of the measurements after the edge is reached that must lie within "
             "the band for the verdict at-edge.")] = 0.5,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Exit 1 unless every run's verdict is at-edge.")] = False,
    measure: Annotated[Measure, typer.Option(
        help="The quantity compared with an edge: auto (λ₁(P⁻¹H) in adaptive phases, batch "
             "sharpness in sgd phases where measured, λ₁ otherwise), or one column of "
             "metrics.csv for every step.")] = Measure.auto,
    out: Annotated[Optional[Path], typer.Option(
        help="Where to write eos.csv instead of reports/<run>/eos.csv: with one RUN the CSV "
             "file itself; with several (or when it is an existing directory), a directory "
             "receiving <out>/<run>/eos.csv.",
        show_default=False)] = None,
    from_checkpoints: Annotated[bool, typer.Option(
        "--from-checkpoints", help="Measure λ₁ (Lanczos) and the full-batch ‖g‖ at every "
        "checkpoint of the run instead of reading metrics.csv.")] = False,
    device: Annotated[str, typer.Option(
        help="Device for --from-checkpoints (cpu, cuda, cuda:N, mps).")] = "cpu",
    samples: Annotated[Optional[int], typer.Option(
        help="--from-checkpoints: the Hessian and gradient of the first N training examples "
             "(default: the run's --sharpness-samples, else its whole training subset).",
        min=1, show_default=False)] = None,
    tol: Annotated[float, typer.Option(help="--from-checkpoints: relative accuracy of λ₁, as sharp train's --sharpness-tol.")] = 1e-3,
    max_iter: Annotated[int, typer.Option(
        help="--from-checkpoints: Lanczos iteration limit.", min=1)] = 100,
    seed: Annotated[int, typer.Option(
        help="--from-checkpoints: seed of Lanczos's random start vector.")] = 0,
    lr: Annotated[Optional[float], typer.Option(
        help="Calculator: step size η (no RUN then).", show_default=False)] = None,
    momentum: Annotated[float, typer.Option(
        help="Calculator: momentum β (enters the GD edge only).")] = 0.0,
    nesterov: Annotated[bool, typer.Option(
        "--nesterov", help="Calculator: Nesterov momentum.")] = False,
    rho: Annotated[Optional[float], typer.Option(
        help="Calculator: SAM radius ρ; prints the SAM edge too (needs --grad-norm).",
        show_default=False)] = None,
    grad_norm: Annotated[Optional[float], typer.Option(
        help="Calculator: gradient norm ‖g‖ for the SAM edge.", show_default=False)] = None,
    optimizer: Annotated[Optional[Optimizer], typer.Option(
        help="Calculator: adam, adamw or rmsprop prints their adaptive edge instead of the "
             "GD edge.", show_default=False)] = None,
    beta1: Annotated[Optional[float], typer.Option(
        help="Calculator: Adam's β₁ (default 0.9) for the adaptive edge.",
        show_default=False)] = None,
    dist_timeout: Annotated[float, typer.Option(
        help="--from-checkpoints under torchrun: seconds a process waits for the others in a "
             "collective before the command fails.")] = 600.0,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="--from-checkpoints: no progress and no line per checkpoint "
        "(the table is printed all the same).")] = False,
) -> None:
    from sharpcli.errors import SharpError

    calculator = {"--lr": lr, "--rho": rho, "--grad-norm": grad_norm, "--optimizer": optimizer,
                  "--beta1": beta1}
    if not runs:
        if lr is None:
            raise SharpError("give RUN directories, or --lr (with --rho and --grad-norm for "
                             "the SAM edge) for the calculator; see sharp eos --help")
        if measure is not Measure.auto:
            raise SharpError("--measure applies to RUN directories, not to the calculator")
        _calculator(lr, momentum, nesterov, rho, grad_norm, optimizer, beta1)
        return
    given = [name for name, value in calculator.items() if value is not None]
    if given or momentum or nesterov:
        flags = given + (["--momentum"] if momentum else []) + (["--nesterov"] if nesterov else [])
        raise SharpError(f"{', '.join(flags)}: calculator flags, not used with RUN (the run's "
                         "own lr, momentum and rho apply)")
    if not from_checkpoints and samples is not None:
        raise SharpError("--samples applies to --from-checkpoints only")
    _runs(runs, band, threshold, strict, out, from_checkpoints,
          dict(device=device, samples=samples, tol=tol, max_iter=max_iter, seed=seed),
          dist_timeout, measure, quiet)


def _calculator(lr, momentum, nesterov, rho, grad_norm, optimizer, beta1) -> None:
    from sharpcli.edges import edge_calculator

    for edge in edge_calculator(lr, momentum, nesterov, rho, grad_norm, optimizer, beta1):
        print(edge.line())


def _runs(runs, band, threshold, strict, out, from_checkpoints, measure_kwargs,
          dist_timeout, measure, quiet) -> None:
    from sharpcli.analysis.eos import check_band, eos_runs, require_at_edge
    from sharpcli.distributed import SINGLE, process_group

    check_band(band, threshold)
    tables, dist = {}, SINGLE
    if from_checkpoints:
        with process_group(measure_kwargs["device"], dist_timeout) as dist:
            tables = {run: _measure(run, measure_kwargs, dist, quiet or not dist.is_main)
                      for run in runs}
    # under torchrun every process reaches the verdict, rank 0 writes and reports it
    report = eos_runs(runs, band, threshold, measure, metrics=tables, out=out,
                      write=dist.is_main)
    if dist.is_main:
        _report(report, band)
    if strict:
        require_at_edge(report.results)


def _measure(run, measure_kwargs, dist, quiet: bool):
    """λ₁ and ‖g‖ at every checkpoint of a run, printed as they come, with the progress
    over the run's checkpoints (rank 0, unless quiet)."""
    from sharpcli.cli.progress import progress_bar
    from sharpcli.formats.runs import checkpoint_files, resolve_run_dir
    from sharpcli.training.revisit import measure_checkpoints

    run_dir = resolve_run_dir(run)
    total = len(checkpoint_files(run_dir))
    with progress_bar(f"eos {run_dir.name}", total, quiet) as bar:
        def say(path, row):
            extra = row.get("preconditioned_sharpness")
            extra = "" if extra is None else f" λ₁(P⁻¹H)={extra:.4g}"
            bar.update(len(rows) + 1, info=f"{path.name}: λ₁ {row['sharpness']:.4g}")
            rows.append(row)
            if not quiet:
                print(f"  {path.name}: λ₁={row['sharpness']:.4g}{extra} ‖g‖={row['grad_norm']:.4g}",
                      flush=True)

        rows: list[dict] = []
        return measure_checkpoints(run_dir, **measure_kwargs, on_checkpoint=say, dist=dist)


def _report(report, band) -> None:
    """The verdict table, and where each run's eos.csv went."""
    from rich.markup import escape

    from sharpcli.cli.progress import output_console
    from rich.table import Table

    table = Table(title=f"Edge of stability (band ±{band:g})")
    for header, justify in [("run", "left"), ("edge", "left"), ("n", "right"),
                            ("reached at", "right"), ("in band", "right"),
                            ("median", "right"), ("final", "right"), ("verdict", "left")]:
        table.add_column(header, justify=justify, overflow="fold")
    colours = {"at-edge": "green", "below-edge": "yellow", "above-edge": "red"}
    for r in report.results:
        s = r.summary
        table.add_row(escape(s.run), s.edges, str(s.n_measured),
                      "never" if s.edge_step is None else str(s.edge_step),
                      "–" if s.in_band is None else f"{s.in_band:.0%}",
                      _fmt(s.median_ratio), _fmt(s.final_ratio),
                      f"[{colours[s.verdict]}]{s.verdict}[/]")
    output_console().print(table)
    for path in report.written:
        print(f"wrote {path}")  # one line, whatever the width


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def register(app: typer.Typer) -> None:
    app.command("eos", help=HELP)(eos)
