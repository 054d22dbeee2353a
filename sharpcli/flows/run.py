"""`sharp flow` on disk: a full-batch GD or RMSProp run's step-0 weights, data and η in; both flows
integrated over the run's steps; flow.csv and flow_eigenvalues.csv written row by row
(docs/reference/formats.md#flow-csv), and flow-state.pt saved every few steps so that
`--resume` continues where an interrupted flow stopped."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from sharpcli.device import resolve_device
from sharpcli.distributed import SINGLE, Dist, process_device
from sharpcli.errors import Interrupted, SharpError
from sharpcli.flows.adaptive import Rule
from sharpcli.flows.central import (FlowPoint, FlowSettings, FlowState, Objective, central_step,
                                    stable_step)
from sharpcli.flows.config import FlowConfig
from sharpcli.formats.atomic import atomic_write
from sharpcli.formats.checkpoints import load_payload
from sharpcli.formats.csvlog import CsvLog
from sharpcli.formats.runs import checkpoint_files, read_config, read_metrics, resolve_run_dir
from sharpcli.formats.schema import (FLOW_COLUMNS, FLOW_EIGENVALUE_COLUMNS, FLOW_EIGENVALUES_FILE,
                                     FLOW_FILE, FLOW_SIGMA_COLUMNS, FLOW_SIGMA_FILE,
                                     FLOW_STATE_FILE, METRICS_FILE)
from sharpcli.hessian.check import check_objective
from sharpcli.interrupt import check_stop
from sharpcli.spectra.config import ModelSource, SpectrumConfig
from sharpcli.spectra.run import subject_data
from sharpcli.spectra.targets import subjects
from sharpcli.workload.targets import Target
from sharpcli.workload.weights import load_weights, read_weights

STATE_FORMAT = "sharpcli-flow-state"
PROCESSES = ("central", "stable")
FLOW_OPTIMIZERS = ("gd", "rmsprop", "scalar-rmsprop")
_STEP = re.compile(r"^step-(\d{8})\.pt$")


@dataclass
class FlowRun:
    """What a flow needs of a run: η, where it ends, its first weights' model and data,
    and GD's weights at the steps it saved them."""

    run_dir: Path
    lr: float
    last_step: int
    objective: Objective
    checkpoints: dict[int, Path]
    rule: Rule | None = None      # RMSProp's preconditioner; None: gradient descent
    start: int = 0                # the step the flows start from (its checkpoint's weights)
    prior: torch.Tensor | None = None  # RMSProp's state saved with them (None: zero, at step 0)


def flow_rule(config: dict, run_dir: Path) -> tuple[float, Rule | None]:
    """η and the update rule of a full-batch, constant-step run of gradient descent (None) or
    RMSProp (its preconditioner, sharpcli.flows.adaptive); any other run is refused with one
    line (Adam: the paper derives no central flow for it)."""
    optimizer = config.get("optimizer")
    if optimizer in ("adam", "adamw"):
        raise SharpError(f"{run_dir}: sharp flow has no central flow for {optimizer}: its first "
                         "moment (β₁) makes each step depend on the past gradients, which the "
                         "central flows paper does not derive (gd, rmsprop and Scalar RMSProp "
                         "are covered)")
    other = []
    if optimizer not in FLOW_OPTIMIZERS or config.get("batch_size") is not None:
        other.append(f"optimizer {optimizer}" + (f" with batches of {config['batch_size']}"
                                                 if config.get("batch_size") else ""))
    for key, plain in (("momentum", 0), ("weight_decay", 0), ("nesterov", False),
                       ("centered", False)):
        if config.get(key) not in (None, plain, float(plain)):
            other.append(f"{key.replace('_', ' ')} {config[key]}")
    if config.get("schedule") not in (None, "constant"):
        other.append(f"a {config['schedule']} schedule")
    if other:
        raise SharpError(f"{run_dir}: sharp flow needs a run of full-batch gradient descent or "
                         f"RMSProp with a constant step and no momentum or weight decay; this "
                         f"one has {', '.join(other)}")
    lr = config.get("lr")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise SharpError(f"{run_dir}: config.json has no step size (lr), got {lr!r}")
    return float(lr), (None if optimizer == "gd" else _rmsprop_rule(optimizer, config))


def _rmsprop_rule(optimizer: str, config: dict) -> Rule:
    """β (sharp train's --beta2, a torch param group's alpha: a Tracker run) and ε."""
    beta2 = config.get("alpha") if "centered" in config else config.get("beta2")
    eps = config.get("eps")
    return Rule(optimizer, 0.99 if beta2 is None else float(beta2),
                1e-8 if eps is None else float(eps))


def open_run(run, cfg: FlowConfig, source: ModelSource | None = None, dist: Dist = SINGLE,
             objective: Objective | None = None) -> FlowRun:
    """The run's settings, checkpoints and model and data at the flows' start, on
    `cfg.device`: the model and data its checkpoint's config names, or with `source`
    (--model-factory) the user's; or `objective`, a model (given the start's weights here)
    with its Call and Data."""
    run_dir = resolve_run_dir(run)
    config = read_config(run_dir)
    lr, rule = flow_rule(config, run_dir)
    checkpoints = {int(m.group(1)): p for p in checkpoint_files(run_dir, config)
                   if (m := _STEP.match(p.name))}
    start = start_step(cfg.start, rule, checkpoints, run_dir)
    metrics = run_dir / METRICS_FILE
    last = (int(read_metrics(run_dir, ("step",))["step"].max()) if metrics.is_file()
            else max(checkpoints))
    saved = read_weights(checkpoints[start])
    if objective is None:
        source = source or ModelSource()
        source.validate(1)
        device = resolve_device(process_device(cfg.device, dist))
        subject = next(subjects([Target(checkpoints[start], run_dir)], device, source, dist=dist))
        data = subject_data(subject, SpectrumConfig(), device, dist, source)
        check_objective(subject.model, subject.call, data)
        objective = Objective(subject.model, subject.call, data)
    else:
        load_weights(objective.model, saved.state, str(checkpoints[start]))
    prior = None if rule is None or start == 0 else \
        saved_square_average(saved.optimizer, objective, checkpoints[start])
    return FlowRun(run_dir, lr, last, objective, checkpoints, rule, start, prior)


def start_step(start: int | None, rule: Rule | None, checkpoints: dict[int, Path],
               run_dir: Path) -> int:
    """--start, or 0 for GD and for RMSProp the first checkpoint after step 0: from ν = (1 − β)g₀²
    RMSProp's first steps are steps of about η/√(1 − β) per coordinate, far above the edge in
    many directions at once (the paper's code, too, warm-starts its flows)."""
    if start is None:
        later = sorted(t for t in checkpoints if t > 0)
        if rule is not None and not later:
            raise SharpError(f"{run_dir}: no checkpoint after step 0 to start RMSProp's flows from "
                             "(train with checkpoints after step 0, or pass {start=0})",
                             param="start")
        start = 0 if rule is None else later[0]
    if start not in checkpoints:
        raise SharpError(f"{run_dir}: no checkpoint of step {start} (step-{start:08d}.pt): the "
                         "flows start from a saved step's weights"
                         + ("" if start else ", the run's first by default"))
    return start


def saved_square_average(optimizer: dict | None, objective: Objective, path: Path) -> torch.Tensor:
    """RMSProp's ν saved with a checkpoint (torch's square_avg), flat in the model's order."""
    try:
        pieces = [optimizer["state"][i]["square_avg"]
                  for group in optimizer["param_groups"] for i in group["params"]]
    except (KeyError, TypeError):
        raise SharpError(f"{path} holds no RMSProp state (square_avg) to start the flows from") from None
    if [t.shape for t in pieces] != [p.shape for p in objective.params]:
        raise SharpError(f"{path}: the optimizer state does not match the model's parameters")
    return torch.cat([t.reshape(-1) for t in pieces]).double().to(objective.params[0].device)


def gd_weights(run: FlowRun, step: int) -> torch.Tensor | None:
    """GD's flat weights at `step`, from its checkpoint (None where there is none)."""
    path = run.checkpoints.get(step)
    if path is None:
        return None
    state = read_weights(path).state
    names = [n for n, p in run.objective.model.named_parameters() if p.requires_grad]
    missing = [n for n in names if n not in state]
    if missing:
        raise SharpError(f"{path} lacks the weights {', '.join(missing[:3])} of the model")
    device = run.objective.params[0].device
    return torch.cat([state[n].reshape(-1).to(device) for n in names])


def run_flow(run, cfg: FlowConfig, *, source: ModelSource | None = None,
             out: Path | None = None, write: bool = True,
             should_stop: Callable[[], bool] | None = None,
             on_step: Callable[[int, int, FlowPoint, FlowPoint], None] | None = None,
             dist: Dist = SINGLE, objective: Objective | None = None) -> list[dict]:
    """Integrate the central and the stable flow of `run` over its steps (to `cfg.steps`)
    and return the rows of flow.csv; with `write` (rank 0) also write flow.csv and
    flow_eigenvalues.csv into the run's folder (or `out`, a folder) and flow-state.pt every
    `cfg.save_every` steps. With `cfg.resume` a saved state continues the files. A stop
    request ends it between two steps (Interrupted), with the rows so far and the state
    kept. `objective`: see `open_run`."""
    cfg.validate()
    flow = open_run(run, cfg, source, dist, objective)
    settings = FlowSettings(lr=flow.lr, rule=flow.rule, **asdict(cfg))
    steps = cfg.steps if cfg.steps is not None else flow.last_step
    folder = Path(out) if out is not None else flow.run_dir
    write = write and dist.is_main
    start = flow.start
    if steps < start:
        raise SharpError(f"{{steps}} {steps} is before the flows' start, step {start}",
                         param="steps")
    central, stable = (FlowState(flow.objective.weights(), nu=first_nu(flow, settings))
                       for _ in range(2))
    if cfg.resume and (folder / FLOW_STATE_FILE).is_file() and (folder / FLOW_FILE).is_file():
        start, central, stable = load_state(folder / FLOW_STATE_FILE, cfg, flow.objective.weights())
        if start > steps:
            raise SharpError(f"{folder / FLOW_STATE_FILE} is at step {start}, past {{steps}} {steps}",
                             param="steps")
    logs = [CsvLog(folder / FLOW_FILE, FLOW_COLUMNS),
            CsvLog(folder / FLOW_EIGENVALUES_FILE, FLOW_EIGENVALUE_COLUMNS),
            CsvLog(folder / FLOW_SIGMA_FILE, FLOW_SIGMA_COLUMNS)]
    if write:
        for log in logs:
            log.open(fresh=start == flow.start, keep_below_step=start)
    rows, t = [], start
    try:
        for t in range(start, steps + 1):
            check_stop(should_stop, dist)
            if write and t > start and (t % cfg.save_every == 0 or t == steps):
                save_state(folder / FLOW_STATE_FILE, t, cfg, central, stable)
            gd = gd_weights(flow, t)
            distances = [None if gd is None else float((s.weights - gd).norm())
                         for s in (central, stable)]
            c = central_step(flow.objective, central, settings, advance=t < steps)
            s = stable_step(flow.objective, stable, settings, advance=t < steps)
            new = [flow_row(t, name, p, d, state.seconds)
                   for name, p, d, state in zip(PROCESSES, (c, s), distances, (central, stable))]
            rows += new
            if write:
                logs[0].write_many(new)
                logs[1].write_many(eigenvalue_rows(t, PROCESSES, (c, s)))
                logs[2].write_many(sigma_rows(t, c, local_displacement(flow, t, gd)))
            if on_step is not None:
                on_step(t, steps, c, s)
    except Interrupted:
        if write:
            save_state(folder / FLOW_STATE_FILE, t, cfg, central, stable)
        raise Interrupted(f"interrupted at step {t} of {steps}; the rows before it are in "
                          f"{folder / FLOW_FILE}: {{resume}} continues", param="resume") from None
    finally:
        for log in logs:
            log.close()
    return rows


def first_nu(flow: FlowRun, settings: FlowSettings) -> torch.Tensor | None:
    """RMSProp's ν at the start: β·(the saved state) + (1 − β)g², the state update `start`
    uses (sharpcli.flows.adaptive)."""
    if flow.rule is None:
        return None
    flow.objective.load(flow.objective.weights())
    _, grad = flow.objective.gradient(settings.mode)
    nu = flow.rule.initial(grad)
    if flow.prior is not None:
        if flow.rule.kind != "rmsprop":
            raise SharpError(f"{flow.run_dir}: Scalar RMSProp's flows start at step 0 here")
        nu = nu + flow.rule.beta2 * flow.prior
    return nu


def local_displacement(flow: FlowRun, step: int, here: torch.Tensor | None) -> torch.Tensor | None:
    """The run's w_t − (w_{t−1} + 2w_t + w_{t+1})/4, its oscillation about its local average
    (the reference code's midpoint of midpoints), where checkpoints t − 1, t, t + 1 exist."""
    if here is None or (step - 1) not in flow.checkpoints or (step + 1) not in flow.checkpoints:
        return None
    return (2 * here - gd_weights(flow, step - 1) - gd_weights(flow, step + 1)) / 4


def sigma_rows(step: int, point: FlowPoint, delta: torch.Tensor | None) -> list[dict]:
    """flow-sigma.csv's rows of one step: Σ's eigenvalues and, with the run's displacement
    δ, (vᵢ·δ)² along each unit eigenvector vᵢ."""
    measured = [None] * len(point.sigma) if delta is None else \
        [float(v) for v in (point.sigma_vectors.T.to(delta.dtype) @ delta) ** 2]
    return [{"step": step, "index": i + 1, "sigma2": s2, "displacement2": m}
            for i, (s2, m) in enumerate(zip(point.sigma, measured))]


def flow_row(step: int, process: str, p: FlowPoint, distance: float | None,
             seconds: float) -> dict:
    return {"step": step, "process": process, "train_loss": p.train_loss,
            "predicted_loss": p.predicted_loss, "sharpness": p.sharpness, "critical": p.critical,
            "sigma_trace": p.sigma_trace, "distance": distance, "substeps": p.substeps,
            "n_hvp": p.n_hvp, "n_third": p.n_third, "seconds": seconds}


def eigenvalue_rows(step: int, processes, points) -> list[dict]:
    return [{"step": step, "process": name, "index": i + 1, "eigenvalue": lam, "residual": r}
            for name, p in zip(processes, points)
            for i, (lam, r) in enumerate(zip(p.eigenvalues, p.residuals))]


def save_state(path: Path, step: int, cfg: FlowConfig, central: FlowState,
               stable: FlowState) -> None:
    """flow-state.pt: both flows at w(step), written atomically (tensors on the CPU)."""
    def pack(s: FlowState) -> dict:
        return {"weights": s.weights.detach().cpu(), "seconds": s.seconds,
                "vectors": None if s.vectors is None else s.vectors.detach().cpu(),
                "nu": None if s.nu is None else s.nu.detach().cpu()}

    payload = {"format": STATE_FORMAT, "step": step, "settings": cfg.state_settings(),
               "central": pack(central), "stable": pack(stable)}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_state(path: Path, cfg: FlowConfig, like: torch.Tensor) -> tuple[int, FlowState, FlowState]:
    """The step and both flows' states from flow-state.pt, on `like`'s device and dtype; a
    file of other settings or another model is a SharpError."""
    payload = load_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise SharpError(f"{path} is not a sharp flow state (no format={STATE_FORMAT!r})")
    if payload.get("settings") != cfg.state_settings():
        changed = sorted(k for k, v in cfg.state_settings().items()
                         if payload.get("settings", {}).get(k) != v)
        raise SharpError(f"{path} was saved with other settings ({', '.join(changed)}): resume with "
                         "the same settings, or start afresh without {resume}", param="resume")

    def unpack(s: dict) -> FlowState:
        weights, vectors = s["weights"], s["vectors"]
        if weights.shape != like.shape:
            raise SharpError(f"{path} holds {weights.numel()} weights, the model {like.numel()}: "
                             "a state of another model; start afresh without {resume}",
                             param="resume")
        nu = s.get("nu")
        return FlowState(weights.to(like), None if vectors is None else vectors.to(like),
                         float(s["seconds"]), None if nu is None else nu.to(like.device))

    central, stable = unpack(payload["central"]), unpack(payload["stable"])
    return int(payload["step"]), central, stable
