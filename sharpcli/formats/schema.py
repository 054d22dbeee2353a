"""Every file sharpcli writes, by name and columns (docs/reference/formats.md): the one place
a column list lives. Scripts read columns by name; new columns go before `seconds`."""

from __future__ import annotations

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
TOP_EIGENVALUES_FILE = "top_eigenvalues.csv"
SPECTRUM_FILE = "spectrum.csv"
DENSITY_FILE = "density.csv"
# `sharp spectrum --preconditioned`: the spectrum of P^{-1/2} H P^{-1/2}, same columns; its own
# files, so that it never overwrites a run's spectrum of H.
PRECONDITIONED_SPECTRUM_FILE = "spectrum-preconditioned.csv"
PRECONDITIONED_DENSITY_FILE = "density-preconditioned.csv"
EOS_FILE = "eos.csv"
# `sharp flow`: the central and stable flows of a run, their eigenvalues, and the state
# --resume continues from (weights and warm starts: not a CSV).
FLOW_FILE = "flow.csv"
FLOW_EIGENVALUES_FILE = "flow_eigenvalues.csv"
FLOW_STATE_FILE = "flow-state.pt"
# `sharp train --log tensorboard`, Tracker(loggers=...): dashboards inside the run folder (an
# offline W&B run goes into the run folder's wandb/, a name wandb chooses itself)
TENSORBOARD_DIR = "tensorboard"  # TensorBoard event files
FLOW_SIGMA_FILE = "flow-sigma.csv"

METRICS_COLUMNS = ("step", "epoch", "phase", "lr", "rho", "train_loss", "train_acc", "test_loss",
                   "test_acc", "grad_norm", "sharpness", "alignment", "gd_edge", "sam_edge",
                   "preconditioned_sharpness", "adaptive_edge", "batch_sharpness",
                   "sharpness_converged", "seconds")
# λ₁…λ_k of each measurement when --sharpness-k > 1 (metrics.csv has room for λ₁ only).
TOP_EIGENVALUE_COLUMNS = ("step", "index", "eigenvalue", "residual")
SPECTRUM_COLUMNS = ("checkpoint", "step", "block", "quantity", "index", "value", "residual",
                    "converged", "n_hvp", "note", "seconds")
# `block` last: files written before it (the whole network's density) keep their meaning
DENSITY_COLUMNS = ("checkpoint", "step", "eigenvalue", "density", "block")
# `sharpness` holds the value of the quantity `measure` names (λ₁, λ₁(P⁻¹H) or the batch
# sharpness) and `edge` its edge, so that ratio = sharpness / edge on every row.
EOS_COLUMNS = ("step", "phase", "sharpness", "grad_norm", "gd_edge", "sam_edge", "edge",
               "ratio", "at_edge", "measure")
# One row per step and flow (process: central or stable); distance where the run has a
# checkpoint at that step; substeps, n_hvp and n_third are the cost of the step from that row on.
FLOW_COLUMNS = ("step", "process", "train_loss", "predicted_loss", "sharpness", "critical",
                "sigma_trace", "distance", "substeps", "n_hvp", "n_third", "seconds")
# λ₁…λ_k of each flow at each step (k: 2 for the stable flow; for the central flow at least 2
# and one more than the critical count).
FLOW_EIGENVALUE_COLUMNS = ("step", "process", "index", "eigenvalue", "residual")
# The covariance check: the central flow's Σ at each step, eigenvalue by eigenvalue (sigma2,
# descending), and the run's squared displacement along its unit eigenvector from the run's
# local average (w_t − (w_{t−1} + 2w_t + w_{t+1})/4)·v, where checkpoints t − 1, t, t + 1 exist.
FLOW_SIGMA_COLUMNS = ("step", "index", "sigma2", "displacement2")

# Every metrics column except `phase` holds numbers (or nothing).
NUMERIC_METRICS = tuple(c for c in METRICS_COLUMNS if c != "phase")
