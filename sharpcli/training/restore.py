"""`--resume`: continue a run from its newest checkpoint, exactly where it stopped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sharpcli.config import TrainConfig
from sharpcli.errors import SharpError
from sharpcli.formats.checkpoints import list_checkpoints, read_checkpoint, set_rng_state
from sharpcli.formats.schema import METRICS_FILE
from sharpcli.training.sam import EigenState
from sharpcli.training.setup import RunSetup

# Settings that may differ when a run is resumed: they do not change what is computed.
RESUMABLE_CHANGES = {"resume", "quiet", "device", "steps", "epochs", "data_dir", "keep_last",
                     "reports_dir", "checkpoints_dir", "run_name",  # a moved run can be resumed
                     "log",  # where the rows also go, not what they hold
                     "recipe"}  # a record only: the settings themselves are compared


@dataclass
class Resumed:
    """Where a run continues: its first step, the training time already spent, the last
    measurement's top eigenvectors (the warm starts of H's solve — (size, k), or v₁ alone
    from a checkpoint written before they were all kept — and of P⁻¹H's) and Eigen-SAM's
    estimate."""

    step: int = 0
    elapsed: float = 0.0
    top_vector: torch.Tensor | None = None
    eigen: EigenState = EigenState()
    preconditioned_vector: torch.Tensor | None = None


def restore(run: RunSetup) -> Resumed | None:
    """With --resume and a checkpoint: load model, optimizer and RNG state from the newest
    one and return where to go on. None for a fresh start; a run that exists already
    without --resume is an error (nothing is overwritten)."""
    existing = list_checkpoints(run.checkpoint_dir) if run.config.resume else []
    if not existing:
        if (run.report_dir / METRICS_FILE).exists() and not run.config.resume:
            raise SharpError(f"run {run.config.run_name!r} already exists in {run.report_dir}; "
                             "use {resume} to continue it or another {run_name}",
                             param=("resume", "run_name"))
        return None
    payload = read_checkpoint(existing[-1])
    _check_resumable(payload["config"], run.config, existing[-1])
    run.model.load_state_dict(payload["model"])
    run.optimizer.load_state_dict(payload["optimizer"])
    set_rng_state(payload["rng"])
    extra = payload.get("extra", {})
    vector = lambda key: None if extra.get(key) is None else extra[key].to(run.device)  # noqa: E731
    top = vector("top_vectors") if extra.get("top_vectors") is not None else vector("top_vector")
    return Resumed(payload["step"], float(extra.get("elapsed", 0.0)), top,
                   EigenState(vector("eigen_vector")), vector("preconditioned_vector"))


def _check_resumable(stored: dict, config: TrainConfig, where: Path) -> None:
    current = config.to_dict()
    differ = [k for k in current if k not in RESUMABLE_CHANGES and k in stored
              and stored.get(k) != current[k]]
    if differ:
        diffs = "; ".join(f"{{{k}}} {current[k]!r} (run has {stored.get(k)!r})" for k in differ)
        raise SharpError(f"{{resume}} with settings that differ from {where}: {diffs}",
                         param=("resume", *differ))
