"""`sharp train`: flags map one to one onto TrainConfig fields; `sharpcli.recipes.train_config`
turns them (and a --recipe) into the config, `sharpcli.training.loop.train` runs it."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from sharpcli.config import (Augment, Dataset, HessianMode, Loss, Model, Optimizer, Precision,
                             SamSync, Schedule, TrainConfig)
from sharpcli.cli.options import option as _opt
from sharpcli.cli.progress import output_console, progress_bar

D = TrainConfig()  # defaults shown in --help come from the dataclass, the one source of truth
DATA, MODEL, OPT, SAM, MEAS, RUN = "Data", "Model", "Optimizer", "SAM / Eigen-SAM", "Measurement", "Run"
DIST = "Many processes (torchrun)"
WORK = "Recipes and CIFAR workloads"



def _list_recipes(value: bool) -> None:
    """--list-recipes: print every recipe with its flags and sources, then stop."""
    if value:
        from sharpcli.recipes import RECIPES, describe

        typer.echo("\n\n".join(describe(r) for r in RECIPES.values()))
        raise typer.Exit()


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the flag of parameter `name` was given on the command line (not defaulted)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def train_command(
    ctx: typer.Context,
    dataset: Annotated[Dataset, _opt("Data set; mnist1d and digits are generated/shipped offline.", DATA)] = Dataset(D.dataset),
    data_dir: Annotated[str, _opt("Folder holding the torchvision data sets.", DATA)] = D.data_dir,
    download: Annotated[bool, _opt("Allow torchvision to download a missing data set into --data-dir.", DATA)] = D.download,
    train_size: Annotated[Optional[int], _opt("Use the first N training examples (default 1000; 0 = all).", DATA)] = D.train_size,
    test_size: Annotated[Optional[int], _opt("Use the first N test examples (default: the whole test split).", DATA)] = D.test_size,
    model: Annotated[Model, _opt("Architecture; ResNets and WRN are the CIFAR variants.", MODEL)] = Model(D.model),
    width: Annotated[Optional[int], _opt("Hidden units (mlp) or base channels (cnn, resnet, wrn); default per model.", MODEL)] = D.width,
    depth: Annotated[int, _opt("Hidden layers (mlp) or conv layers (cnn).", MODEL)] = D.depth,
    activation: Annotated[Optional[str], _opt("Activation: tanh, relu, gelu, elu, softplus, silu, identity (default: tanh for mlp/cnn, relu for ResNets).", MODEL)] = D.activation,
    loss: Annotated[Loss, _opt("mse = 0.5·‖f(x) − onehot(y)‖² averaged over examples; ce = cross-entropy.", MODEL)] = Loss(D.loss),
    optimizer: Annotated[Optimizer, _opt("gd (full batch), sgd, sam, eigen-sam, or torch's adam, adamw and rmsprop (full batch without --batch-size).", OPT)] = Optimizer(D.optimizer),
    lr: Annotated[float, _opt("Step size η.", OPT)] = D.lr,
    momentum: Annotated[float, _opt("Heavy-ball momentum β (gd, sgd, SAM's base; rmsprop's momentum μ).", OPT)] = D.momentum,
    nesterov: Annotated[bool, _opt("Use Nesterov momentum.", OPT)] = D.nesterov,
    weight_decay: Annotated[float, _opt("L2 weight decay (not part of the measured Hessian); decoupled for adamw, coupled otherwise.", OPT)] = D.weight_decay,
    beta1: Annotated[float, _opt("adam, adamw: β₁, the decay of the gradient average (momentum).", OPT)] = D.beta1,
    beta2: Annotated[Optional[float], _opt("adam, adamw: β₂, the decay of the squared-gradient average; rmsprop: its smoothing constant (torch's alpha). Default 0.999 for adam/adamw, 0.99 for rmsprop.", OPT)] = D.beta2,
    eps: Annotated[float, _opt("adam, adamw, rmsprop: ε added to the denominator √v.", OPT)] = D.eps,
    batch_size: Annotated[Optional[int], _opt("Minibatch size; omitted = full batch.", OPT)] = D.batch_size,
    physical_batch_size: Annotated[int, _opt("Examples per forward pass when computing full-batch quantities (memory bound).", OPT)] = D.physical_batch_size,
    steps: Annotated[Optional[int], _opt("Number of updates (default 1000 unless --epochs).", OPT)] = D.steps,
    epochs: Annotated[Optional[int], _opt("Number of passes over the training subset.", OPT)] = D.epochs,
    schedule: Annotated[Schedule, _opt("Learning-rate schedule.", OPT)] = Schedule(D.schedule),
    rho: Annotated[float, _opt("SAM radius ρ (sam, eigen-sam).", SAM)] = D.rho,
    adaptive: Annotated[bool, _opt("ASAM (with --optimizer sam): ε = ρT²g/‖Tg‖, T = |w| on weight matrices and kernels, 1 on biases and norm parameters.", SAM)] = D.adaptive,
    alpha: Annotated[float, _opt("Eigen-SAM weight α of the top-eigenvector component.", SAM)] = D.alpha,
    eig_every: Annotated[int, _opt("Eigen-SAM: refresh the top-eigenvector estimate every N steps (power iteration on the batch's Hessian, warm-started).", SAM)] = D.eig_every,
    eig_iters: Annotated[int, _opt("Eigen-SAM: power-iteration steps (Hessian-vector products) per refresh.", SAM)] = D.eig_iters,
    sam_sync: Annotated[SamSync, _opt("Under torchrun: global perturbs with the all-reduced gradient (the update one process computes); local perturbs each process's shard with its own gradient (m-sharpness, the SAM paper's multi-accelerator recipe).", SAM)] = D.sam_sync,
    sam_start: Annotated[Optional[int], _opt("Late-phase SAM: the base optimizer (gd, or sgd with --batch-size) until T (steps, or epochs with --epochs), SAM or Eigen-SAM after; momentum buffers carry over.", SAM)] = D.sam_start,
    recipe: Annotated[Optional[str], _opt("Fill the flags not given from a published setting (sharp train --list-recipes); flags given explicitly win.", WORK)] = D.recipe,
    list_recipes: Annotated[bool, typer.Option("--list-recipes", help="Print the recipes with their flags and sources, and exit.", rich_help_panel=WORK, is_eager=True, callback=_list_recipes)] = False,
    augment: Annotated[Augment, _opt("Augmentation of minibatches, on the device: auto = flip-crop for CIFAR, crop for SVHN (no flip for digits), none otherwise and for full-batch runs. Measurements always use the un-augmented examples.", WORK)] = D.augment,
    label_smoothing: Annotated[float, _opt("Label smoothing ε of --loss ce (also in the measured Hessian: it is the training loss).", WORK)] = D.label_smoothing,
    precision: Annotated[Precision, _opt("Arithmetic: bf16 autocasts the training passes (λ₁, spectra, HVPs and evaluation stay fp32 with TF32 off); fp64 holds weights, data and every pass, measurements included, in float64.", WORK)] = D.precision,
    eig_mode: Annotated[HessianMode, _opt("Eigen-SAM's power iteration: eval uses BatchNorm's running statistics (the official code), train the batch's own. Same numbers without BatchNorm.", WORK)] = D.eig_mode,
    sharpness_every: Annotated[int, _opt("Measure λ₁ every N steps (0 = off).", MEAS)] = D.sharpness_every,
    batch_sharpness: Annotated[bool, _opt("With --batch-size: also the batch sharpness, the mean of g_Bᵀ H_B g_B / ‖g_B‖² over fresh batches B (to a 1% standard error or 200 batches; one HVP each) whenever λ₁ is measured.", MEAS)] = D.batch_sharpness,
    sharpness_samples: Annotated[Optional[int], _opt("Examples in the sharpness Hessian (first N of the training subset; default all).", MEAS)] = D.sharpness_samples,
    sharpness_k: Annotated[int, _opt("Top eigenvalues computed per measurement (λ₁ goes to metrics.csv).", MEAS)] = D.sharpness_k,
    sharpness_iters: Annotated[int, _opt("Most Lanczos iterations per measurement.", MEAS)] = D.sharpness_iters,
    sharpness_tol: Annotated[float, _opt("Relative accuracy of each measured eigenvalue: Lanczos stops once the estimated error min(r, r²/gap) of λ is at most tol·λ and λ has settled (docs/guides/training.md#sharpness).", MEAS)] = D.sharpness_tol,
    compile: Annotated[bool, _opt("torch.compile the training passes (a one-time compilation of tens of seconds; λ₁ measurements stay eager: torch.compile cannot differentiate twice). Off by default: on the CPU it saved 8% of a step of the default run, far less than the compilation costs (benchmarks/RESULTS.md).", RUN)] = D.compile,
    eval_every: Annotated[int, _opt("Evaluate train/test loss and accuracy every N steps.", MEAS)] = D.eval_every,
    checkpoint_every: Annotated[int, _opt("Save a checkpoint every N steps (and at the end).", MEAS)] = D.checkpoint_every,
    keep_last: Annotated[Optional[int], _opt("Keep only the newest N checkpoints.", MEAS)] = D.keep_last,
    seed: Annotated[int, _opt("Random seed (initialisation, batches, probes).", RUN)] = D.seed,
    device: Annotated[str, _opt("auto, cpu, cuda, cuda:N or mps.", RUN)] = D.device,
    run_name: Annotated[Optional[str], _opt("Name of the run (default: built from the settings).", RUN)] = D.run_name,
    reports_dir: Annotated[str, _opt("Where reports/<run>/ goes.", RUN)] = D.reports_dir,
    checkpoints_dir: Annotated[str, _opt("Where checkpoints/<run>/ goes.", RUN)] = D.checkpoints_dir,
    resume: Annotated[bool, _opt("Continue the run from its latest checkpoint (same settings).", RUN)] = D.resume,
    quiet: Annotated[bool, _opt("No progress bar and no summary.", RUN, "--quiet", "-q")] = D.quiet,
    stop_loss: Annotated[Optional[float], _opt("Stop once the train loss is at or below this.", RUN)] = D.stop_loss,
    stop_acc: Annotated[Optional[float], _opt("Stop once the train accuracy (0–1) is at or above this.", RUN)] = D.stop_acc,
    log: Annotated[Optional[str], _opt("Also log every metrics row to dashboards inside the run folder: tensorboard (event files in reports/<run>/tensorboard/), wandb (an offline W&B run in reports/<run>/wandb/), or both, comma-separated.", RUN)] = D.log,
    sync_bn: Annotated[bool, _opt("Under torchrun on GPUs: SyncBatchNorm, batch statistics over the whole batch of all processes (default: each process normalises by its shard's statistics; running statistics are averaged over the processes after every step).", DIST)] = D.sync_bn,
    dist_timeout: Annotated[float, _opt("Under torchrun: seconds a process waits for the others in a collective before the run fails.", DIST)] = D.dist_timeout,
) -> None:
    """Train one model, logging loss, accuracy, ‖g‖, λ₁, alignment and the edges to
    reports/<run>/metrics.csv and saving checkpoints to checkpoints/<run>/.

    With no flags: full-batch GD on MNIST-1D with a tanh MLP and MSE loss, where λ₁ rises to
    2/η and hovers there (Cohen et al. 2021)."""
    from sharpcli.distributed import process_group
    from sharpcli.recipes import train_config
    from sharpcli.training.loop import train

    values = dict(locals())
    for key in ("train", "train_config", "process_group", "ctx", "list_recipes"):
        values.pop(key)
    config = train_config(values, given=[k for k in values if _given(ctx, k)])
    with process_group(device, dist_timeout) as dist:
        result = _train(config, train, quiet or not dist.is_main, dist)
    if not quiet and dist.is_main:
        print_summary(result)


def _train(config: TrainConfig, train, quiet: bool, dist):
    """train() with a progress bar that shows λ₁ against its edge as it goes."""
    with progress_bar("train", total=None, quiet=quiet) as bar:
        def on_step(step: int, total: int, row: dict | None) -> None:
            info = None
            if row is not None:
                parts = []
                if row.get("train_loss") is not None:
                    parts.append(f"loss {row['train_loss']:.4g}")
                if row.get("preconditioned_sharpness") is not None:
                    parts.append(f"λ₁(P⁻¹H) {row['preconditioned_sharpness']:.4g} / "
                                 f"adaptive edge {row['adaptive_edge']:.4g}")
                elif row.get("sharpness") is not None and row.get("sam_edge") is not None:
                    parts.append(f"λ₁ {row['sharpness']:.4g} / SAM edge {row['sam_edge']:.4g}")
                elif row.get("sharpness") is not None and row.get("gd_edge") is not None:
                    parts.append(f"λ₁ {row['sharpness']:.4g} / 2/η {row['gd_edge']:.4g}")
                info = "  ".join(parts)
            bar.update(step, total=total, info=info)

        return train(config, progress=on_step, dist=dist)


def print_summary(result) -> None:
    """What the run ended at, and the edge-of-stability verdict of `sharp eos` on it."""
    from sharpcli.analysis.eos import eos_run
    from sharpcli.config import SAM_PHASES
    from sharpcli.errors import SharpError

    out = output_console()
    row = result.last_row
    out.print(f"run {result.run_name}: {result.last_step} steps in {result.seconds:.1f} s"
              + (f" (stopped early: {result.stopped_early})" if result.stopped_early else ""))
    if row.get("train_loss") is not None:
        out.print(f"final train loss {row['train_loss']:.4g}, train acc {row['train_acc']:.3f}, "
                  f"test acc {row['test_acc']:.3f}")
    try:
        verdict = eos_run(result.report_dir)
    except SharpError:  # no sharpness measured, or no edge known
        verdict = None
    if verdict is not None:
        last, s = verdict.table.iloc[-1], verdict.summary
        quantity, name = _measure_names(last["measure"], last["phase"] in SAM_PHASES)
        out.print(f"final {quantity} = {_num(last['sharpness'])}, {name} = {_num(last['edge'])}, "
                  f"ratio {last['ratio']:.3f}")
        reached = ("never reached" if s.edge_step is None else
                   f"reached at step {s.edge_step}, {s.in_band:.0%} of the measurements since "
                   f"within ±{s.band:g}, median ratio {s.median_ratio:.3f}")
        out.print(f"edge of stability: {s.verdict} ({reached}); sharp eos gives the same")
    out.print(f"metrics: {result.report_dir / 'metrics.csv'}")
    out.print(f"checkpoints: {result.checkpoint_dir}/")


def _num(x: float) -> str:
    """4 significant digits, without an exponent for the large edges of adaptive optimizers."""
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.0f}"


def _measure_names(measure: str, sam_phase: bool) -> tuple[str, str]:
    """How the summary names the measured quantity and its edge."""
    if measure == "preconditioned_sharpness":
        return "preconditioned sharpness λ₁(P⁻¹H)", "adaptive edge"
    if measure == "batch_sharpness":
        return "batch sharpness", "GD edge"
    return "sharpness λ₁", "SAM edge" if sam_phase else "GD edge"


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
