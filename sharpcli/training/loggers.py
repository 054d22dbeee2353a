"""Each metrics row as scalars for the dashboards researchers watch
(docs/reference/formats.md#logged-scalars): TensorBoard event files, an offline Weights & Biases run, or any object with
`log_metrics(metrics, step)` (every Lightning logger has it; the Hugging Face callback
hands one that calls the Trainer's own `log`).

The values are those of metrics.csv as written: each is read back from the cell's text
(`float(format_cell(value))`), so a dashboard and the CSV can never disagree. Two are
derived from the row's cells, as `sharp eos` derives them: `edge` (λ₁'s edge, the SAM edge
in SAM phases and the GD edge otherwise) and `ratio` = λ₁ / edge, and with an adaptive
optimizer `adaptive_ratio` = λ₁(P⁻¹H) / adaptive edge.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sharpcli.config import SAM_PHASES
from sharpcli.errors import SharpError
from sharpcli.formats.csvlog import format_cell
from sharpcli.formats.schema import TENSORBOARD_DIR

PREFIX = "sharpness/"
# metrics.csv column → tag (after PREFIX); the order of the documented table
TAGS = {"sharpness": "lambda1", "gd_edge": "gd_edge", "sam_edge": "sam_edge",
        "preconditioned_sharpness": "preconditioned", "adaptive_edge": "adaptive_edge",
        "batch_sharpness": "batch_sharpness", "alignment": "alignment", "grad_norm": "grad_norm",
        "train_loss": "train_loss", "train_acc": "train_acc", "test_loss": "test_loss",
        "test_acc": "test_acc", "lr": "lr", "rho": "rho"}
NAMES = ("tensorboard", "wandb")


def scalars(row: dict) -> dict[str, float]:
    """The scalars of one metrics row, by tag: its measured cells (empty ones left out) and
    the edge and ratios derived from them."""
    cells = {c: _as_written(row.get(c)) for c in TAGS}
    out = {PREFIX + tag: cells[c] for c, tag in TAGS.items() if cells[c] is not None}
    edge = cells["sam_edge"] if row.get("phase") in SAM_PHASES else cells["gd_edge"]
    if edge is not None:
        out[PREFIX + "edge"] = edge
        if cells["sharpness"] is not None:
            out[PREFIX + "ratio"] = cells["sharpness"] / edge
    if cells["preconditioned_sharpness"] is not None and cells["adaptive_edge"] is not None:
        out[PREFIX + "adaptive_ratio"] = cells["preconditioned_sharpness"] / cells["adaptive_edge"]
    return out


def _as_written(value) -> float | None:
    """The number metrics.csv holds for `value` (None for an empty cell)."""
    text = format_cell(value)
    return float(text) if text else None


def parse_loggers(loggers, name: str = "loggers") -> list:
    """`loggers` as a list: names among NAMES (a list, or one string "tensorboard,wandb") and
    objects with `log_metrics(metrics, step)`. Refused now, not at the first row: an unknown
    name, an object without log_metrics, a logger whose package is not installed."""
    if loggers is None:
        return []
    if isinstance(loggers, str):
        items = [s.strip() for s in loggers.split(",") if s.strip()]
    else:
        items = list(loggers)
    for item in items:
        if isinstance(item, str):
            if item not in NAMES:
                raise SharpError(f"{{{name}}}: unknown logger {item!r}; the loggers are "
                                 f"{', '.join(NAMES)} (or objects with log_metrics(metrics, step))",
                                 param=name)
            _require(item, name)
        elif not callable(getattr(item, "log_metrics", None)):
            raise SharpError(f"{{{name}}}: {type(item).__name__} has no log_metrics(metrics, step); "
                             f"give {' or '.join(map(repr, NAMES))} or a Lightning-style logger",
                             param=name)
    return items


def _require(logger: str, name: str) -> None:
    """The logger's package (its name is the module's) imports, or the error says what to
    install; checked when the Tracker is made, not at its first row."""
    try:
        __import__(logger)
    except ImportError:
        raise SharpError(f"{{{name}}}: {logger} is not installed: "
                         f"pip install 'sharpcli[{logger}]'", param=name) from None


def open_loggers(items: list, run_dir: Path, *, resume_step: int | None, config: dict) -> list:
    """The loggers of a run folder, opened: named ones are made inside `run_dir` (continuing
    from `resume_step` when resuming), objects are used as given."""
    return [_open(item, Path(run_dir), resume_step, config) if isinstance(item, str) else item
            for item in items]


def _open(name: str, run_dir: Path, resume_step: int | None, config: dict):
    if name == "tensorboard":
        return TensorBoardWriter(run_dir / TENSORBOARD_DIR, start_step=resume_step or 0)
    return WandbOffline(run_dir, config, resuming=resume_step is not None)


def close_loggers(opened: list, items: list) -> None:
    """Close the loggers this module made; objects given belong to their owner."""
    for logger, item in zip(opened, items):
        if isinstance(item, str):
            logger.close()


class TensorBoardWriter:
    """Event files in `log_dir`. Scalars are stored in double precision (the default float32
    would round metrics.csv's values). Each event file starts with a session start at
    `start_step`: TensorBoard takes the first one for the run's start and each later one for
    a restart, dropping the earlier files' points from its step on. So a resumed run's new
    file hides what the interrupted one wrote from the resumed step, as metrics.csv drops
    those rows."""

    def __init__(self, log_dir: Path, start_step: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=start_step)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step, new_style=True, double_precision=True)
        self.writer.flush()  # a preempted job keeps every row it logged

    def close(self) -> None:
        self.writer.close()


class WandbOffline:
    """An offline W&B run inside `run_dir` (its `wandb/` folder; `wandb sync` uploads it
    later from a machine with a network). Never prompts and never reaches the network. Its
    id is fixed by the run folder's path, so a resumed run continues the same W&B run."""

    def __init__(self, run_dir: Path, config: dict, *, resuming: bool):
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(mode="offline", dir=str(run_dir), project="sharpcli",
                              name=run_dir.name, id=run_id, config=config,
                              resume="allow" if resuming else None, reinit="create_new",
                              settings=wandb.Settings(console="off", silent=True))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()
