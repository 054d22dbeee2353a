"""`sharp flow`: flags map onto FlowConfig (and ModelSource for --model-factory); the work is
sharpcli.flows.run.run_flow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sharpcli.cli.options import option as _opt

from sharpcli.cli.progress import progress_bar
from sharpcli.config import DEFAULT_DIST_TIMEOUT, Dataset
from sharpcli.flows.config import FlowConfig

D = FlowConfig()
FLOW, RUN = "Flow", "Run"
OWN = "A sharpcli.Tracker run (--model-factory)"

HELP = (
    "The central flow and the stable (gradient) flow of a full-batch GD or RMSProp run.\n\n"
    "From the run's step-0 checkpoint, with its data and step size η, integrates over the "
    "run's steps (time in steps of GD, --substeps Euler substeps each) the central flow of "
    "Cohen, Damian, Talwalkar, Kolter & Lee (ICLR 2025), dw/dt = −η[∇L + ½∇⟨H, Σ⟩], whose "
    "oscillation covariance Σ = U X Uᵀ on the Hessian eigenvectors with λ > threshold/η "
    "holds them at 2/η (X from a small semidefinite complementarity problem), and gradient "
    "flow dw/dt = −η∇L. Writes reports/<run>/flow.csv (step,process,train_loss,"
    "predicted_loss,sharpness,critical,sigma_trace,distance,substeps,n_hvp,n_third,seconds; "
    "process central or stable; predicted_loss L + ½⟨H, Σ⟩, GD's predicted time-averaged "
    "loss; distance ‖w_flow − w_GD‖ at the run's checkpoints) and flow_eigenvalues.csv "
    "(λ₁…λ_k of each flow) and flow-sigma.csv (Σ's eigenvalues against the run's squared "
    "displacement along their eigenvectors, where checkpoints t − 1, t, t + 1 exist), and saves flow-state.pt every --save-every steps for --resume. "
    "For an RMSProp run (no momentum) the preconditioner's state ν evolves along both flows, "
    "η∇L becomes ηP⁻¹∇L and the sharpness is λ₁(P⁻¹H), held at 2/η. Runs of other optimizers "
    "(Adam included), momentum, weight decay, minibatches or a schedule are refused. sharp "
    "plot then draws flow.png."
)



def flow_command(
    run: Annotated[str, typer.Argument(help="A run folder reports/<run> or a run name.",
                                       metavar="RUN", show_default=False)],
    substeps: Annotated[int, _opt(
        "Euler substeps per step of GD (the stable flow takes more where ηλ₁ > 2).",
        FLOW)] = D.substeps,
    threshold: Annotated[float, _opt(
        "Critical eigenvalues are those above threshold/η (in units of 1/η, below 2): Σ "
        "lives on their eigenvectors.", FLOW)] = D.threshold,
    steps: Annotated[Optional[int], _opt(
        "Integrate to this step (default: the run's last).", FLOW, show_default=False)] = D.steps,
    start: Annotated[Optional[int], _opt(
        "Start both flows from this step's checkpoint (its weights and, for RMSProp, its "
        "optimizer state). Default: step 0 for GD, the first checkpoint after step 0 for "
        "RMSProp.", FLOW, show_default=False)] = D.start,
    tol: Annotated[float, _opt("Relative accuracy of each Hessian eigenvalue (block Lanczos).",
                               FLOW)] = D.tol,
    max_iter: Annotated[int, _opt("Most Hessian-vector products per eigenvalue solve.",
                                  FLOW)] = D.max_iter,
    seed: Annotated[int, _opt("Seed of the random vectors that fill a Lanczos start block.",
                              FLOW)] = D.seed,
    sdcp: Annotated[str, _opt(
        "The complementarity solver: native, or cvxpy to cross-check it (pip install "
        "-e '.\\[flow]' in sharpcli's clone).", FLOW)] = D.sdcp,
    save_every: Annotated[int, _opt("Steps between saves of flow-state.pt.", RUN)] = D.save_every,
    resume: Annotated[bool, _opt(
        "Continue flow.csv from the step flow-state.pt was saved at (same flags; a larger "
        "--steps extends a finished flow).", RUN, "--resume")] = D.resume,
    out: Annotated[Optional[Path], _opt(
        "Folder for flow.csv, flow_eigenvalues.csv and flow-state.pt instead of the run's.",
        RUN, show_default=False)] = None,
    device: Annotated[str, _opt("auto, cpu, cuda, cuda:N or mps.", RUN)] = D.device,
    quiet: Annotated[bool, _opt("No progress bar and no summary.", RUN, "--quiet", "-q")] = False,
    dist_timeout: Annotated[float, _opt(
        "Under torchrun: seconds a process waits for the others in a collective before the "
        "command fails.", RUN)] = DEFAULT_DIST_TIMEOUT,
    model_factory: Annotated[Optional[str], _opt(
        "The model of a sharpcli.Tracker run: MODULE:CALLABLE returning a torch.nn.Module, "
        "imported as `python -m` would — this runs that module's code.", OWN,
        show_default=False)] = None,
    model_kwargs: Annotated[Optional[str], _opt(
        "Keyword arguments of the factory, as a JSON object.", OWN, show_default=False)] = None,
    data: Annotated[Optional[str], _opt(
        "The examples the run trained on: a .pt or .npz file holding x and y, or "
        "MODULE:CALLABLE returning a Dataset, a DataLoader or an iterable of batches.", OWN,
        show_default=False)] = None,
    num_terms: Annotated[Optional[str], _opt(
        "MODULE:CALLABLE batch → the number of loss terms in it (default: its examples).", OWN,
        show_default=False)] = None,
    batch_loss: Annotated[Optional[str], _opt(
        "MODULE:CALLABLE (model, batch) → the batch's mean loss, in place of --loss.", OWN,
        show_default=False)] = None,
    check_deterministic: Annotated[bool, _opt(
        "Refuse a --data MODULE:CALLABLE source whose batches differ between two passes.",
        OWN)] = True,
    dataset: Annotated[Optional[Dataset], _opt("Or a built-in data set.", OWN,
                                               show_default=False)] = None,
    data_dir: Annotated[str, _opt("With --dataset: where the torchvision sets are.", OWN)] = "data",
    train_size: Annotated[Optional[int], _opt(
        "With --dataset: the first N training examples.", OWN, show_default=False)] = None,
    loss: Annotated[str, _opt("mse, ce, model or MODULE:CALLABLE (outputs, targets) → mean loss.",
                              OWN)] = "mse",
) -> None:
    from sharpcli.distributed import process_group
    from sharpcli.spectra.config import ModelSource

    cfg = FlowConfig(substeps=substeps, threshold=threshold, steps=steps, start=start, tol=tol,
                     max_iter=max_iter, seed=seed, sdcp=sdcp, save_every=save_every,
                     device=device, resume=resume)
    cfg.validate()
    source = ModelSource(model_factory, model_kwargs, None, data, dataset, data_dir, train_size,
                         None, loss, batch_loss, num_terms, check_deterministic)
    with process_group(device, dist_timeout) as dist:
        quiet = quiet or not dist.is_main
        rows = _run(run, cfg, out, quiet, dist, source)
    if not quiet:
        _summary(run, out, rows)


def _run(run, cfg: FlowConfig, out, quiet: bool, dist, source):
    """run_flow with a progress bar over the steps, and Ctrl-C as a stop."""
    from sharpcli.flows.run import run_flow
    from sharpcli.interrupt import stop_on_signals

    with stop_on_signals() as stop, progress_bar("flow", total=None, quiet=quiet) as bar:
        def on_step(t, steps, central, stable):
            bar.update(t + 1, total=steps + 1,
                       info=f"λ₁ central {central.sharpness:.4g} stable {stable.sharpness:.4g}"
                            f" · {central.critical} critical")

        return run_flow(run, cfg, source=source, out=out, should_stop=lambda: stop.requested,
                        on_step=on_step, dist=dist)


def _summary(run, out, rows) -> None:
    """The three comparisons of docs/guides/flow.md#measured, from the files on disk."""
    from sharpcli.analysis.flow import flow_summary
    from sharpcli.formats.runs import resolve_run_dir

    run_dir = resolve_run_dir(run)
    summary = flow_summary(run_dir, Path(out) / "flow.csv" if out is not None else None)
    for line in summary.lines():
        print(line)


def register(app: typer.Typer) -> None:
    app.command("flow", help=HELP)(flow_command)
