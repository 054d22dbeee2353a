"""Divergence: NaN or inf in the loss or the gradient stops training at once, with exit code
1, a message naming the step and suggesting a smaller step size, the rows so far on disk and
the last good checkpoint (one whose loss and gradient were finite) kept."""

import math
import re

import pandas as pd
import pytest
import torch

import sharpcli
import sharpcli.training.loop
from sharpcli.formats.checkpoints import list_checkpoints
from sharpcli.config import TrainConfig
from sharpcli.errors import DivergedError
from tests.runners import METRICS_FIELDS, assert_one_line_error, csv_lines, sharp, train_args

# mse with η = 10⁴: the loss overflows to inf within a few steps.
DIVERGING = ["--lr", "1e4", "--loss", "mse", "--steps", "30", "--sharpness-every", "2",
             "--eval-every", "2"]


def diverged_step(line: str) -> int:
    match = re.search(r"diverged at step (\d+)", line)
    assert match, line
    return int(match.group(1))


def check_stopped_cleanly(root, line: str) -> tuple[int, pd.DataFrame]:
    """The state on disk after a divergence reported by `line`."""
    step = diverged_step(line)
    assert "smaller --lr" in line
    lines = csv_lines(root / "reports" / "r" / "metrics.csv")
    assert all(len(row.split(",")) == METRICS_FIELDS for row in lines)
    df = pd.read_csv(root / "reports" / "r" / "metrics.csv")
    assert df["step"].max() == step, "training went on after the divergence"
    assert df["step"].iloc[:-1].lt(step).all() and len(df) > 1
    last = df.iloc[-1]  # the row of the divergence itself, for the record
    assert not (math.isfinite(last["train_loss"]) and math.isfinite(last["grad_norm"]))
    return step, df


def check_last_good(root, line: str, step: int) -> None:
    kept = list_checkpoints(root / "checkpoints" / "r")
    assert kept, "no checkpoint kept"
    assert f"last good checkpoint: {kept[-1]}" in line
    ckpt = sharpcli.load_checkpoint(kept[-1])
    assert ckpt.step < step
    x, y, _, _ = ckpt.data()
    loss = ckpt.loss_fn(ckpt.model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in ckpt.model.parameters())


def test_huge_lr_stops_with_exit_1(tmp_path):
    result = sharp(*train_args(tmp_path, "r", *DIVERGING, "--checkpoint-every", "3"))
    line = assert_one_line_error(result, 1, "diverged", "--lr")
    step, _ = check_stopped_cleanly(tmp_path, line)
    check_last_good(tmp_path, line, step)


def test_checkpoint_of_the_diverged_step_is_not_kept(tmp_path):
    """A checkpoint is written at the top of every step here: the one of the step where the
    loss is not finite must not be called good, nor push the good one out (--keep-last 1)."""
    result = sharp(*train_args(tmp_path, "r", *DIVERGING, "--checkpoint-every", "1",
                               "--keep-last", "1"))
    line = assert_one_line_error(result, 1, "diverged")
    step, _ = check_stopped_cleanly(tmp_path, line)
    assert len(list_checkpoints(tmp_path / "checkpoints" / "r")) == 1
    check_last_good(tmp_path, line, step)


def test_nan_gradient_with_finite_loss(tmp_path, monkeypatch):
    """The gradient alone going NaN (here: forced at step 5) is a divergence too."""
    real = sharpcli.training.loop.gradient_norm
    calls = []

    def nan_at_step_5(params):
        norm = real(params)
        calls.append(1)
        return torch.full_like(norm, math.nan) if len(calls) == 6 else norm

    monkeypatch.setattr(sharpcli.training.loop, "gradient_norm", nan_at_step_5)
    result = sharp(*train_args(tmp_path, "r", "--steps", "10", "--sharpness-every", "2",
                               "--eval-every", "2", "--checkpoint-every", "2"))
    line = assert_one_line_error(result, 1, "diverged at step 5", "‖g‖ nan")
    check_stopped_cleanly(tmp_path, line)
    check_last_good(tmp_path, line, 5)


def test_library_raises_diverged_error(tmp_path):
    config = TrainConfig(train_size=64, test_size=64, width=8, lr=1e4, steps=30,
                         sharpness_every=0, run_name="r", quiet=True,
                         reports_dir=str(tmp_path / "reports"),
                         checkpoints_dir=str(tmp_path / "checkpoints"))
    with pytest.raises(DivergedError, match="diverged at step") as err:
        sharpcli.training.loop.train(config)
    assert err.value.exit_code == 1
