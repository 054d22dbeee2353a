"""Loggers: every metrics row's scalars reach TensorBoard and an offline W&B run at the
row's step, equal to metrics.csv as written; a resumed run's event files read as the
resumed metrics.csv does; bad names are refused in one line."""

from __future__ import annotations

import pytest
import torch

import sharpcli
from sharpcli.errors import SharpError
from sharpcli.training.loggers import TAGS, scalars
from tests.dashboards import csv_column, tensorboard_scalars, wandb_history
from tests.runners import assert_one_line_error, sharp, train_args


def test_a_row_becomes_its_cells_as_written_and_the_edge_of_its_phase():
    row = {"step": 3, "phase": "sam", "sharpness": 12.0, "gd_edge": 20.0, "sam_edge": 15.0,
           "lr": 0.1, "rho": 0.05, "alignment": None, "train_loss": 1 / 3, "seconds": 2.0}
    out = scalars(row)  # empty cells, step, phase and seconds are not scalars of a dashboard
    assert out == {"sharpness/lambda1": 12.0, "sharpness/gd_edge": 20.0, "sharpness/sam_edge": 15.0,
                   "sharpness/lr": 0.1, "sharpness/rho": 0.05, "sharpness/train_loss": 1 / 3,
                   "sharpness/edge": 15.0, "sharpness/ratio": 0.8}
    gd = scalars({"step": 0, "phase": "adam", "sharpness": 3.0, "gd_edge": 4.0,
                  "preconditioned_sharpness": 30.0, "adaptive_edge": 40.0})
    assert (gd["sharpness/edge"], gd["sharpness/ratio"], gd["sharpness/adaptive_ratio"]) == (4.0, 0.75, 0.75)


def test_sharp_train_logs_every_row_to_tensorboard_and_wandb(tmp_path):
    sharp(*train_args(tmp_path, "r", "--steps", "12", "--sharpness-every", "4", "--eval-every", "4",
                      "--log", "tensorboard,wandb")).ok()
    run = tmp_path / "reports" / "r"
    board, history = tensorboard_scalars(run / "tensorboard"), wandb_history(run)
    assert [h["_step"] for h in history] == [0, 4, 8, 12]
    checked = 0
    for column, tag in TAGS.items():
        expected = csv_column(run, column)
        if expected:
            checked += 1
            assert dict(board["sharpness/" + tag]) == expected, column  # exact: doubles in, doubles out
            assert {h["_step"]: h["sharpness/" + tag] for h in history} == expected, column
    assert checked == 9  # λ₁, GD edge, alignment, ‖g‖, η, train/test loss and accuracy
    lam, edge = csv_column(run, "sharpness"), csv_column(run, "gd_edge")
    assert dict(board["sharpness/ratio"]) == {s: lam[s] / edge[s] for s in lam}


def test_a_resumed_run_reads_in_tensorboard_as_its_metrics_csv(tmp_path):
    """10 steps, then --resume to 20: the rows from the resumed step 10 on are logged again;
    the new event file's purge drops the first file's points from step 10."""
    flags = ["--sharpness-every", "5", "--eval-every", "5", "--checkpoint-every", "5",
             "--log", "tensorboard"]
    sharp(*train_args(tmp_path, "r", "--steps", "10", *flags)).ok()
    sharp(*train_args(tmp_path, "r", "--steps", "20", "--resume", *flags)).ok()
    run = tmp_path / "reports" / "r"
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert tensorboard_scalars(run / "tensorboard")["sharpness/lambda1"] == list(
        csv_column(run, "sharpness").items())  # once each: step 10 of the first file purged
    assert list(csv_column(run, "sharpness")) == [0, 5, 10, 15, 20]


def test_the_tracker_hands_rows_to_logger_objects(tmp_path):
    class Collect:
        def __init__(self):
            self.calls = []

        def log_metrics(self, metrics, step):
            self.calls.append((step, metrics))

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    logger, loss_fn = Collect(), torch.nn.functional.cross_entropy
    with sharpcli.Tracker(model, loss_fn, x, y, optimizer=opt, run_dir=tmp_path / "run", every=2,
                          loggers=[logger]) as tracker:
        for step in range(5):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            tracker.step(step)
            opt.step()
    run = tmp_path / "run"
    assert [s for s, _ in logger.calls] == list(csv_column(run, "sharpness")) == [0, 2, 4]
    for column in ("sharpness", "grad_norm", "train_loss", "gd_edge"):
        assert {s: m["sharpness/" + TAGS[column]] for s, m in logger.calls} == csv_column(run, column)


def test_bad_loggers_are_refused_in_one_line(tmp_path):
    line = assert_one_line_error(sharp(*train_args(tmp_path, "r", "--log", "tensorbord")), 2, "--log",
                                 "tensorbord", "tensorboard, wandb")
    assert not (tmp_path / "reports" / "r" / "metrics.csv").exists(), line
    model = torch.nn.Linear(2, 2)
    with pytest.raises(SharpError, match="loggers: int has no log_metrics"):
        sharpcli.Tracker(model, torch.nn.functional.mse_loss, torch.randn(4, 2), torch.randn(4, 2),
                         run_dir=tmp_path / "t", loggers=[3])
