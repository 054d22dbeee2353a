"""`sharp spectrum`: flags map one to one onto SpectrumConfig; the work is sharpcli.spectra.compute."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from sharpcli.cli.options import option as _opt

from sharpcli.cli.progress import output_console, progress_bar
from sharpcli.config import (DEFAULT_DIST_TIMEOUT, Backend, Dataset, HessianMode, Method, Split,
                             TraceMethod)
from sharpcli.errors import SharpError
from sharpcli.spectra.config import SpectrumConfig

D = SpectrumConfig()
EIG, TRACE, DENS, DATA, RUN = "Eigenvalues", "Trace", "Density", "Hessian", "Run"
OWN = "Your own model (--model-factory)"

HELP = (
    "Hessian spectrum of checkpoints: top-k eigenvalues, trace, spectral density.\n\n"
    "CKPT_OR_RUN is a checkpoint file, a checkpoint folder checkpoints/<run>, a run folder "
    "reports/<run> or a run name; a run means all of its checkpoints in step order, so one "
    "command gives the spectrum's history over training. The model, loss and data come from "
    "each checkpoint's config; the Hessian is that of the mean loss over the first --samples "
    "examples of --split (default: the run's whole training subset), every example weighted "
    "equally however the products are chunked.\n\n"
    "Writes spectrum.csv (checkpoint,step,block,quantity,index,value,residual,converged,"
    "n_hvp,note,seconds) into the run's report folder, or beside the checkpoint when it has "
    "none, or to --out; with --density also density.csv (checkpoint,step,eigenvalue,density,"
    "block) beside it. index is the eigenvalue's rank (1 = largest) and 0 for trace and "
    "density; residual is ‖Hv − λv‖ for eigenvalues and the standard error for trace and "
    "density; n_hvp and seconds are those of the computation that produced the row (the "
    "whole top-k solve for eigenvalues); note says what it cost or fell back to (a memory "
    "budget, a trace method), printed under the table too. The density row's value is the "
    "trace the density implies (n times its mean). Each file is rewritten by the command."
    "\n\n"
    "Models are measured in eval mode: BatchNorm uses its running statistics, Dropout is "
    "off. --hessian-mode train normalises each chunk of --batch-size examples by its own "
    "batch statistics instead, the function SGD differentiated (which then depends on the "
    "chunking); Dropout stays off. The model is left exactly as found."
)



def spectrum_command(
    targets: Annotated[Optional[list[str]], typer.Argument(
        help="Checkpoint files, checkpoints/<run>, reports/<run> or run names (none with "
             "--weights).", metavar="CKPT_OR_RUN...", show_default=False)] = None,
    top_k: Annotated[int, _opt("Number of top eigenvalues (largest first).", EIG)] = D.top_k,
    method: Annotated[Optional[Method], _opt(
        "lanczos (default: full reorthogonalisation, then restarts on the deflated operator "
        "so that repeated or clustered eigenvalues are not missed), block (block Lanczos: "
        "blocks of --block-size vectors per pass over the data; repeated and clustered "
        "eigenvalues up to the block size without restarts) or power (iteration with "
        "deflation, as PyHessian; finds the largest |λ| first). --backend pyhessian: power "
        "only.", EIG,
        show_default=False)] = None,
    block_size: Annotated[Optional[int], _opt(
        "--method block: vectors per block (default --top-k); refused with another method.", EIG,
        show_default=False)] = D.block_size,
    warm_start: Annotated[bool, _opt(
        "Over a run's checkpoints, start each eigenvalue solve from the previous "
        "checkpoint's eigenvectors (same answers, fewer products when they change little).",
        EIG)] = D.warm_start,
    tol: Annotated[float, _opt(
        "lanczos, block: stop when every residual ‖Hv − λv‖ ≤ tol·|λ₁|; power and pyhessian: "
        "when λ changes by less than tol relative between iterations.", EIG)] = D.tol,
    check_missed: Annotated[bool, _opt(
        "lanczos: after convergence, one more Lanczos run on the deflated Hessian looks for "
        "eigenvalues the first run missed (repeated ones, or a member of a tight cluster); "
        "--no-check-missed saves those products (typically 40% of them) at that risk.",
        EIG)] = D.check_missed,
    max_iter: Annotated[Optional[int], _opt(
        "Most Hessian-vector products per Lanczos run (default max(100, 2·top-k)), or per "
        "eigenvalue for power and pyhessian (default 100).", EIG, show_default=False)] = D.max_iter,
    per_layer: Annotated[bool, _opt(
        "Also the top eigenvalues (and with --trace the trace) of each layer's diagonal Hessian "
        "block, block = the module owning the parameters.", EIG)] = D.per_layer,
    blocks: Annotated[Optional[str], _opt(
        "Also each group of parameters these comma-separated items name, with its top "
        "eigenvalues, trace and density: PATTERN (a substring of parameter names, or "
        "re:REGEX) groups the matches per module, e.g. attn.c_attn gives one group per layer; "
        "NAME=PATTERN pools them all into NAME; PATTERN:qkv splits fused query-key-value "
        "projections into .query, .key and .value; gpt2 is the preset for GPT-2-style models "
        "(embedding, and per layer query, key, value, attn.c_proj, mlp.c_fc, mlp.c_proj). "
        "docs/guides/large-models.md#blocks.", EIG, show_default=False)] = D.blocks,
    max_memory: Annotated[Optional[str], _opt(
        "Memory budget of each solver beyond the model and one product, e.g. 800MB, 1.5GB, "
        "512MiB: Lanczos restarts within it (more products, the same residual certificate), "
        "the density and trace keep what fits (the notes under the table say what that "
        "cost). Below the least a solver needs: an error naming that minimum. "
        "docs/guides/large-models.md#memory-budget.", RUN, show_default=False)] = None,
    trace: Annotated[bool, _opt("Estimate the trace (Rademacher probes) with its standard error.",
                                TRACE)] = D.trace,
    trace_probes: Annotated[int, _opt("Most probes, one HVP each (hutch++: the whole HVP budget).",
                                      TRACE)] = D.trace_probes,
    trace_method: Annotated[TraceMethod, _opt(
        "gauss-newton: the Gauss–Newton part's trace exactly (per-example Jacobians), probes "
        "only for the small rest, ~100× less variance; hutchinson; hutch++ (Meyer et al. "
        "2021: for spectra a few eigenvalues dominate). auto: gauss-newton unless BatchNorm "
        "in --hessian-mode train couples the examples, then hutchinson.",
        TRACE)] = D.trace_method,
    trace_tol: Annotated[Optional[float], _opt(
        "Stop early once the standard error ≤ tol·|trace| (after 10 probes, 5 for "
        "gauss-newton; 0: all probes). Default 3e-3: ±3 standard errors within ±1%. "
        "pyhessian: its own rule, relative change of the running mean; default all probes.",
        TRACE, show_default=False)] = D.trace_tol,
    density: Annotated[bool, _opt("Spectral density of the whole network's Hessian by "
                                  "stochastic Lanczos quadrature, into density.csv.",
                                  DENS)] = D.density,
    density_runs: Annotated[int, _opt("SLQ runs (random probes) averaged.", DENS)] = D.density_runs,
    density_iters: Annotated[int, _opt("Lanczos steps per SLQ run.", DENS)] = D.density_iters,
    density_grid: Annotated[int, _opt("Points of the eigenvalue grid.", DENS)] = D.density_grid,
    density_sigma: Annotated[float, _opt("Gaussian smoothing width, relative to the spectrum's "
                                         "range; keep --density-grid ≳ 10/sigma.",
                                         DENS)] = D.density_sigma,
    density_out: Annotated[Optional[Path], _opt(
        "Where density.csv goes (default: beside spectrum.csv).", DENS,
        show_default=False)] = None,
    samples: Annotated[Optional[int], _opt(
        "The first N examples of the split (default: all of the run's subset).", DATA,
        show_default=False)] = D.samples,
    split: Annotated[Split, _opt("Examples of the training or the test subset.", DATA)] = D.split,
    batch_size: Annotated[Optional[int], _opt(
        "Examples per chunk of a Hessian-vector product (memory bound; default: the run's "
        "--physical-batch-size).", DATA, show_default=False)] = D.batch_size,
    hessian_mode: Annotated[HessianMode, _opt(
        "eval: BatchNorm running statistics; train: each chunk's batch statistics. Dropout "
        "is off in both.", DATA)] = D.hessian_mode,
    preconditioned: Annotated[bool, _opt(
        "Checkpoints of adam, adamw or rmsprop: the spectrum of P⁻¹ᐟ² H P⁻¹ᐟ² (the "
        "eigenvalues of P⁻¹H) with P from the saved optimizer state, the state before that "
        "step's update (docs/reference/mathematics.md#preconditioned-sharpness); written to spectrum-preconditioned.csv (and "
        "density-preconditioned.csv). Checkpoints of step 0 have no P and are skipped.",
        DATA)] = D.preconditioned,
    backend: Annotated[Backend, _opt(
        "native, or pyhessian to cross-check with the pyhessian package (eigenvalues and "
        "trace only).", RUN)] = D.backend,
    device: Annotated[str, _opt("auto, cpu, cuda, cuda:N or mps.", RUN)] = D.device,
    compile: Annotated[bool, _opt(
        "Hessian-vector products by forward-over-reverse through torch.compile (double "
        "backward cannot be compiled). A one-time compilation of tens of seconds; on the "
        "CPU slower per product than the default cached double backward (benchmarks/RESULTS.md).",
        RUN)] = D.compile,
    seed: Annotated[int, _opt("Seed of the random start vectors and probes.", RUN)] = D.seed,
    out: Annotated[Optional[Path], _opt(
        "Write every row to this CSV instead of reports/<run>/spectrum.csv.", RUN,
        show_default=False)] = None,
    quiet: Annotated[bool, _opt("No progress bar and no table.", RUN, "--quiet", "-q")] = False,
    dist_timeout: Annotated[float, _opt(
        "Under torchrun: seconds a process waits for the others in a collective before the "
        "command fails.", RUN)] = DEFAULT_DIST_TIMEOUT,
    model_factory: Annotated[Optional[str], _opt(
        "A model sharpcli did not build: MODULE:CALLABLE returning a torch.nn.Module, imported "
        "as `python -m` would (the current folder, then PYTHONPATH) — this runs that module's "
        "code.", OWN, show_default=False)] = None,
    model_kwargs: Annotated[Optional[str], _opt(
        "Keyword arguments of the factory, as a JSON object.", OWN, show_default=False)] = None,
    weights: Annotated[Optional[str], _opt(
        "The model's weights: a state dict file or a sharpcli checkpoint (read with "
        "weights_only=True).", OWN, show_default=False)] = None,
    data: Annotated[Optional[str], _opt(
        "The examples: a .pt (read with weights_only=True) or .npz file holding x and y, "
        "optionally x_test and y_test; or MODULE:CALLABLE returning a Dataset (batched by "
        "--batch-size, default 32), a DataLoader or an iterable of (inputs, targets) batches "
        "— inputs a tensor, tuple or dict, passed as model(x), model(*x), model(**x) — read "
        "one batch at a time, never all on the device.", OWN, show_default=False)] = None,
    num_terms: Annotated[Optional[str], _opt(
        "MODULE:CALLABLE batch → the number of loss terms in it (default: its examples). The "
        "Hessian is of the mean over all terms: a per-token loss that ignores padding counts "
        "its unpadded targets.", OWN, show_default=False)] = None,
    batch_loss: Annotated[Optional[str], _opt(
        "MODULE:CALLABLE (model, batch) → the batch's mean loss, in place of --loss, for "
        "models that compute their own.", OWN, show_default=False)] = None,
    check_deterministic: Annotated[bool, _opt(
        "Refuse a --data MODULE:CALLABLE source whose batches differ between two passes "
        "(shuffling, random augmentation); --no-check-deterministic measures anyway.",
        OWN)] = True,
    dataset: Annotated[Optional[Dataset], _opt(
        "Or a built-in data set, standardised as sharp train does.", OWN,
        show_default=False)] = None,
    data_dir: Annotated[str, _opt("With --dataset: where the torchvision sets are.", OWN)] = "data",
    train_size: Annotated[Optional[int], _opt(
        "With --dataset: the first N training examples (as sharp train's --train-size).", OWN,
        show_default=False)] = None,
    test_size: Annotated[Optional[int], _opt(
        "With --dataset: the first N test examples.", OWN, show_default=False)] = None,
    fsdp: Annotated[Optional[str], _opt(
        "Under torchrun: shard the --model-factory model with FSDP2 (fully_shard) on every "
        "module of these classes (CLASS[,CLASS], by class name, e.g. GPT2Block), then the "
        "root; or `factory`: the factory returns the model sharded already, and the weights "
        "are loaded into its shards. Products by finite differences, every vector sharded "
        "like the parameters.",
        OWN, show_default=False)] = None,
    loss: Annotated[str, _opt(
        "mse (0.5‖f − onehot(y)‖², or 0.5‖f − y‖² for float targets, averaged over examples), "
        "ce, model (the loss the model returns, e.g. a Hugging Face model called with a dict "
        "batch holding labels), or MODULE:CALLABLE (outputs, targets) → the mean loss as a "
        "scalar.", OWN)] = "mse",
) -> None:
    from sharpcli.distributed import process_group
    from sharpcli.spectra.config import ModelSource

    cfg = SpectrumConfig(
        top_k=top_k, method=method, tol=tol, max_iter=max_iter, check_missed=check_missed,
        block_size=block_size, warm_start=warm_start,
        trace=trace, trace_probes=trace_probes, trace_method=trace_method, trace_tol=trace_tol,
        density=density, density_runs=density_runs, density_iters=density_iters,
        density_grid=density_grid, density_sigma=density_sigma, per_layer=per_layer,
        blocks=blocks, max_memory=max_memory, samples=samples, split=split,
        batch_size=batch_size, backend=backend,
        hessian_mode=hessian_mode, preconditioned=preconditioned, device=device, seed=seed,
        compile=compile)
    source = ModelSource(model_factory, model_kwargs, weights, data, dataset, data_dir,
                         train_size, test_size, loss, batch_loss, num_terms, check_deterministic,
                         fsdp)
    if not targets and weights is None:
        raise SharpError("give checkpoint files or run folders (or --weights with --model-factory)")
    with process_group(device, dist_timeout) as dist:
        quiet = quiet or not dist.is_main
        results = _run(targets or [], cfg, out, density_out, quiet, dist, source)
    if not quiet:
        print_table(results, cfg)


def _run(targets, cfg: SpectrumConfig, out, density_out, quiet: bool, dist, source):
    """run_spectrum with a progress bar over the checkpoints, and Ctrl-C as a stop."""
    from sharpcli.cli.names import note_in_flags
    from sharpcli.interrupt import stop_on_signals
    from sharpcli.spectra.run import run_spectrum

    with stop_on_signals() as stop, progress_bar("spectrum", total=None, quiet=quiet) as bar:
        def on_start(i, total, path):
            bar.update(i, total=total, info=path.name)

        def on_done(i, total, result):
            lam = next((float(s.result.eigenvalues[0]) for s in result.solves
                        if s.quantity == "eigenvalue"), math.nan)
            bar.update(i + 1, total=total, info=f"step {result.step}: λ₁ {lam:.4g}")

        def on_skip(path, why):
            if not quiet:
                print(f"skipped {path.name}: {why}")

        return run_spectrum(targets, cfg, out=out, density_out=density_out,
                            should_stop=lambda: stop.requested, on_start=on_start,
                            on_done=on_done, on_skip=on_skip, dist=dist, source=source,
                            note_words=note_in_flags)


def print_table(results, cfg: SpectrumConfig) -> None:
    """One line per checkpoint and block: λ₁..λ_k, their largest residual ‖Hv − λv‖, how many
    converged, the trace, and the products and seconds of it all; the detail is in the CSV."""
    from rich import box
    from rich.table import Table

    console = output_console()
    k = cfg.top_k
    what = "Spectrum of P^-1/2 H P^-1/2" if cfg.preconditioned else "Hessian spectrum"
    title = (f"{what} ({cfg.backend}, {cfg.eigen_method}, top {k}; "
             f"{results[0].n_examples} {cfg.split} examples, {results[0].n_params} parameters)"
             if results else what)
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    table.add_column("step", justify="right")
    table.add_column("block", overflow="fold")
    for i in range(1, k + 1):
        table.add_column(f"λ{_subscript(i)}", justify="right")
    table.add_column("resid", justify="right")
    table.add_column("conv", justify="right")
    if cfg.trace:
        table.add_column("trace", justify="right")
        table.add_column("± se", justify="right")
    table.add_column("HVPs", justify="right")
    table.add_column("s", justify="right")
    for result in results:
        for block in dict.fromkeys(s.block for s in result.solves):
            table.add_row(*_cells(result.step, block, [s for s in result.solves if s.block == block],
                                  k, cfg.trace))
    console.print(table)
    notes = dict.fromkeys((s.block, s.quantity, s.note) for r in results for s in r.solves
                          if s.note)
    for block, quantity, note in notes:
        console.print(f"note ({block}, {quantity}): {note}", markup=False)
    for path in dict.fromkeys(p for r in results for p in (r.spectrum_csv, r.density_csv) if p):
        console.print(f"wrote {path}")


def _cells(step: int, block: str, solves, k: int, with_trace: bool) -> list[str]:
    """A row of the table: one block's solves at one checkpoint."""
    eig = next((s.result for s in solves if s.quantity == "eigenvalue"), None)
    values = eig.eigenvalues.tolist() if eig is not None else []
    cells = ["–" if step is None else str(step), block] + [f"{v:.4g}" for v in values] + [""] * (k - len(values))
    cells.append(f"{float(eig.residuals.max()):.2g}" if values else "")
    cells.append(f"{int(eig.converged.sum())}/{len(values)}" if values else "0/0")
    if with_trace:
        tr = next((s.result for s in solves if s.quantity == "trace"), None)
        cells += [f"{tr.estimate:.4g}", f"{tr.stderr:.2g}"] if tr else ["", ""]
    cells.append(str(sum(s.n_hvp for s in solves)))
    cells.append(f"{sum(s.seconds for s in solves):.2f}")
    return cells


def _subscript(i: int) -> str:
    return str(i).translate(str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉"))


def register(app: typer.Typer) -> None:
    app.command("spectrum", help=HELP)(spectrum_command)
