"""The cost of `sharp flow` on the default run: products per flow step and what dominates.

The run is the default `sharp train` (MNIST-1D, tanh MLP of 15,210 parameters, MSE, full-batch
GD η = 0.3, 1000 steps) logged with --eval-every 1 --checkpoint-every 10 --sharpness-every 10
(the same trajectory), and `sharp flow` on it with its defaults. Give `--run` a run folder
whose flow.csv exists (examples/central_flow.sh makes one) to read its costs instead of
integrating the flows again here (about 15–30 minutes on one core).

From flow.csv: per step of each flow, the Hessian-vector products (n_hvp), the
third-derivative products ∇(uᵢᵀHuⱼ) (n_third), the Euler substeps and the seconds, grouped by
the central flow's critical count c (c(c+1)/2 third-derivative products per substep).
Then the unit costs at the flow's last saved state (flow-state.pt: the central flow at the
edge), timed interleaved with medians over repeats: one full-batch gradient, one HVP, one
third-derivative product per pair (c = 1 and the state's own c), one warm-started eigen solve
and one complementarity solve of each size.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common import WORK, base_parser, command_line, interleaved, machine_line, setup, table, write_section
from sharpcli.flows.central import FlowSettings, FlowState, top_eigenpairs
from sharpcli.flows.config import FlowConfig
from sharpcli.flows.run import load_state, open_run
from sharpcli.flows.sdcp import pairs, solve_sdcp
from sharpcli.formats.runs import read_flow


def flow_run(quick: bool) -> Path:
    """The default run with its flow, made once under $SHARP_BENCH_WORK."""
    run = WORK / "flow" / "reports" / "gd-lr0.3"
    if (run / "flow.csv").is_file() and not quick:
        return run
    steps = ["--steps", "200"] if quick else []
    base = [sys.executable, "-m", "sharpcli"]
    subprocess.run(base + ["train", "--quiet", "--run-name", "gd-lr0.3", "--eval-every", "1",
                           "--checkpoint-every", "10", "--sharpness-every", "10", *steps,
                           "--reports-dir", str(WORK / "flow" / "reports"),
                           "--checkpoints-dir", str(WORK / "flow" / "checkpoints")], check=True)
    subprocess.run(base + ["flow", str(run), "--quiet"], check=True)
    return run


def per_step(flow: pd.DataFrame) -> pd.DataFrame:
    """Each flow's rows with the seconds of that step (the column is cumulative)."""
    out = []
    for name in ("central", "stable"):
        f = flow[flow["process"] == name].sort_values("step").copy()
        f["step_seconds"] = f["seconds"].diff().shift(-1)  # row t's step ends at row t + 1
        out.append(f[f["substeps"] > 0])
    return pd.concat(out)


def cost_tables(flow: pd.DataFrame, lr: float) -> str:
    steps = per_step(flow)
    central, stable = steps[steps["process"] == "central"], steps[steps["process"] == "stable"]
    rows = []
    for c, g in central.groupby("critical"):
        rows.append([int(c), len(g), float(g["n_hvp"].median()), float(g["n_third"].median()),
                     int(c) * (int(c) + 1) // 2 * 4, float(g["step_seconds"].median()),
                     float(g["step_seconds"].sum())])
    text = table(["critical c", "steps", "HVPs per step", "third-derivative products per step",
                  "c(c+1)/2 × 4", "seconds per step (median)", "seconds, all"], rows)
    srows = [[label, len(g), float(g["substeps"].median()), float(g["n_hvp"].median()),
              float(g["step_seconds"].median()), float(g["step_seconds"].sum())]
             for label, g in (("before λ₁ = 2/η", stable[stable["sharpness"] < 2 / lr]),
                              ("after", stable[stable["sharpness"] >= 2 / lr]))]
    text += "\n\nThe stable flow (one eigen solve per step, for its λ₁ and its substep count):\n\n"
    text += table(["phase", "steps", "substeps per step", "HVPs per step",
                   "seconds per step (median)", "seconds, all"], srows)
    total = {p: float(flow.loc[flow["process"] == p, "seconds"].max()) for p in ("central", "stable")}
    text += (f"\n\nTotal: central flow {total['central']:.0f} s, stable flow "
             f"{total['stable']:.0f} s, over {int(flow['step'].max())} steps.")
    return text


def unit_costs(run: Path, repeats: int) -> tuple[str, float]:
    cfg = FlowConfig()
    flow = open_run(run, cfg)
    obj = flow.objective
    step, central, _ = load_state(run / "flow-state.pt", cfg, obj.weights())
    obj.load(central.weights)
    settings = FlowSettings(lr=flow.lr)
    op = obj.operator("eval")
    eig = top_eigenpairs(op, FlowState(central.weights, central.vectors.clone()), settings)
    c = int((eig.eigenvalues > settings.threshold / settings.lr).sum())
    U = eig.eigenvectors
    v = torch.randn(op.size, generator=torch.Generator().manual_seed(0))
    fns = {"full-batch gradient (loss and ∇L)": lambda: obj.gradient("eval"),
           "HessianOperator build (graph cached)": lambda: obj.operator("eval"),
           "one HVP": lambda: op.matvec(v),
           "third-derivative products, c = 1 (1 pair)": lambda: op.third_derivatives(U[:, :1]),
           f"third-derivative products, c = {c} ({c * (c + 1) // 2} pairs)":
               lambda: op.third_derivatives(U[:, :c]),
           f"eigen solve, warm, k = {c + 1} (block Lanczos)":
               lambda: top_eigenpairs(op, FlowState(central.weights, central.vectors.clone()),
                                      settings)}
    rng = np.random.default_rng(0)
    for k in sorted({1, 2, c}):
        m = k * (k + 1) // 2
        t = rng.normal(size=(m + 3, m))
        s = np.array([1.0 if i == j else np.sqrt(2) for i, j in pairs(k)])
        Q, B = 0.5 * (t * s).T @ (t * s), rng.normal(size=(k, k))
        fns[f"complementarity solve, c = {k}"] = lambda Q=Q, B=B: solve_sdcp(Q, (B + B.T) / 2)
    times = interleaved(fns, repeats)
    hvp = times["one HVP"]
    rows = [[name, seconds * 1e3, seconds / hvp] for name, seconds in times.items()]
    parts = {"third-derivative products": times[f"third-derivative products, c = {c} "
                                                 f"({c * (c + 1) // 2} pairs)"],
             "eigen solve": times[f"eigen solve, warm, k = {c + 1} (block Lanczos)"],
             "complementarity solve": times[f"complementarity solve, c = {c}"],
             "gradient and operator": times["full-batch gradient (loss and ∇L)"]
             + times["HessianOperator build (graph cached)"]}
    total = sum(parts.values())
    share = ", ".join(f"{name} {seconds / total:.0%}" for name, seconds in parts.items())
    text = (f"At the central flow's state of step {step} (λ₁…λ_{c + 1} = "
            f"{', '.join(f'{x:.4f}' for x in eig.eigenvalues.tolist())}; c = {c} critical):\n\n")
    text += table(["operation", "ms (median)", "× one HVP"], rows)
    text += (f"\n\nOne substep there: {total * 1e3:.0f} ms, of which {share}; one step is "
             f"{cfg.substeps} substeps.")
    return text, flow.lr


def main():
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a run folder whose flow.csv and flow-state.pt exist")
    args = p.parse_args()
    setup(args.threads)
    run = args.run or flow_run(args.quick)
    flow = read_flow(run / "flow.csv")
    units, lr = unit_costs(run, args.repeats)
    text = f"## 8. The central flow: cost of `sharp flow`\n\n`{command_line()}` — {machine_line(args.threads)}\n\n"
    text += __doc__.split("\n\n", 1)[1].strip() + "\n\n"
    text += f"Flow of `{run}`, costs per step from its flow.csv:\n\n" + cost_tables(flow, lr) + "\n\n"
    text += units + "\n"
    write_section("flow-quick" if args.quick and args.run is None else "flow", text)


if __name__ == "__main__":
    main()
