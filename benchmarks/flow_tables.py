"""The flows guide's tables (docs/guides/flow.md#measured, #adaptive, #covariance) from run
folders that `sharp flow` has run on: one column per run, each row one of `sharp flow`'s
comparisons (sharpcli.analysis.flow.flow_summary), as a Markdown table. docs/outputs.py
runs it (outputs flow-gd, flow-rmsprop); nothing in those tables is typed by hand.

    python benchmarks/flow_tables.py [--distance-every N] LABEL=RUN[:FLOW_DIR] ...

FLOW_DIR: where flow.csv is, if not in the run folder (`sharp flow --out`).
--distance-every N: the distances over the checkpoints at multiples of N only (a run saved
with --checkpoint-every 1 for the covariance check then gives the medians of one saved every
10, as the README's tour trains it)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sharpcli.analysis.flow import flow_summary
from sharpcli.edges import gd_edge
from sharpcli.formats.runs import read_flow


def column(run: Path, flow_dir: Path, distance_every: int) -> tuple[dict, object, dict]:
    """One run's cells, keyed by row name, its summary, and the distances (process →
    (median, last)) over its checkpoints at multiples of `distance_every` from the edge on."""
    s = flow_summary(run, flow_dir / "flow.csv")
    flow = read_flow(flow_dir / "flow.csv")
    edge = gd_edge(s.lr)
    central, stable = (flow[flow["process"] == p].set_index("step") for p in ("central", "stable"))
    at = central.index[central["distance"].notna() & (central.index % distance_every == 0)
                       & (central.index >= (s.edge_step or 0))]
    # the distances from GD's arrival at the edge, as the other rows; last: the last checkpoint
    dist = {name: (df.loc[at, "distance"].median(), df.loc[at, "distance"].iloc[-1])
            for name, df in (("central", central), ("stable", stable))}
    last = int(stable.index.max())
    cells = {
        "loss": f"**{s.loss_gap:.2%}**",
        "own": f"{s.own_loss_gap:.2%}",
        "stable loss": f"{s.stable_loss_gap:.2%}",
        "central sharpness": f"{s.sharpness['central']:.4g} against 2/η = {edge:.4g} (largest "
                             f"relative departure where Σ ≠ 0: {s.sharpness_spread:.1e})",
        "run sharpness": f"{s.sharpness['gd']:.4g} ({s.sharpness['gd'] / edge:.2f} × 2/η)",
        "stable sharpness": f"{s.sharpness['stable']:.4g} ({stable.loc[last, 'sharpness']:.4g})",
        "central distance": f"**{dist['central'][0]:.3g}** ({dist['central'][1]:.3g})",
        "stable distance": f"{dist['stable'][0]:.3g} ({dist['stable'][1]:.3g})",
        "sigma": ("not measured (checkpoints t − 1, t, t + 1 needed)" if not s.sigma_ratio else
                  ", ".join(f"σ{i}²: {r:.3g}" for i, r in s.sigma_ratio.items())
                  + f" (over {s.sigma_steps} steps)"),
        "steps": f"{max(s.edge_step or 0, int(central.index.min()))}–{s.last_step}",
    }
    return cells, s, dist


def table(columns: list[tuple[str, dict]], summary) -> str:
    """Rows named after the run's optimizer and sharpness (GD's λ₁, RMSProp's λ₁(P⁻¹H))."""
    name, lam, window = summary.name, summary.measure, f"{summary.window:g}"
    rows = [
        ((f"steps compared: from the run's arrival at the edge (its first {lam} ≥ 0.9·2/η) "
          "or the flows' start"), "steps"),
        ((f"central flow's predicted loss against {name}'s loss averaged over {window} "
          "steps: median relative gap"), "loss"),
        ("the same for the central flow's own L(w) (no ½⟨H, Σ⟩)", "own"),
        ("the same for the stable flow's loss", "stable loss"),
        (f"central flow's {lam} (median)", "central sharpness"),
        (f"{name}'s {lam} (median, metrics.csv)", "run sharpness"),
        (f"stable flow's {lam} (median; at the last step)", "stable sharpness"),
        (f"‖w_central − w_{name}‖ at the checkpoints (median; at the last)", "central distance"),
        (f"‖w_stable − w_{name}‖ at the checkpoints (median; at the last)", "stable distance"),
        ((f"{name}'s squared displacement from its local average along Σ's eigenvectors, "
          f"averaged over {window} steps, against the flow's σᵢ² (median ratio)"), "sigma"),
    ]
    head = "| | " + " | ".join(label for label, _ in columns) + " |"
    out = [head, "| --- |" + " --- |" * len(columns)]
    out += [f"| {text} | " + " | ".join(cells[key] for _, cells in columns) + " |"
            for text, key in rows]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN[:FLOW_DIR], one per column")
    parser.add_argument("--distance-every", type=int, default=1,
                        help="distances over the checkpoints at multiples of this step only")
    args = parser.parse_args()
    columns, summary = [], None
    for spec in args.runs:
        label, _, where = spec.rpartition("=")  # a label may hold "=": "η = 0.3"
        run, _, flow_dir = where.partition(":")
        cells, summary, _ = column(Path(run), Path(flow_dir or run), args.distance_every)
        columns.append((label, cells))
    print(table(columns, summary))


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
