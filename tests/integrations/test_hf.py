"""SharpnessCallback inside a real Hugging Face Trainer (tiny model, CPU, float64): the rows
of a plain loop around sharpcli.Tracker, with the model's own loss on dict batches or a
named loss on (inputs, targets) pairs, under gradient accumulation; a run folder every
`sharp` command reads; and under the Trainer's DDP on 2 processes, the rows of 1 process."""

from __future__ import annotations

import importlib
import sys

import pandas as pd
import pytest

from tests.dashboards import assert_float32_board_holds, tensorboard_scalars
from tests.integrations.hf_fit import train
from tests.integrations.problem import (COMPARED, assert_same_rows, assert_two_processes_log_the_same,
                                        plain_loop)
from tests.runners import sharp


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return root, train(root)


def test_the_callback_logs_what_a_plain_loop_logs(trained, tmp_path):
    root, callbacks = trained
    reference = plain_loop(tmp_path / "loop")
    for callback in callbacks:
        assert_same_rows(callback.rows, reference)
    for name in ("ownloss", "named"):
        frame = pd.read_csv(root / name / "metrics.csv")
        for key in COMPARED:
            assert frame[key].tolist() == pytest.approx([r[key] for r in reference], rel=1e-6)
    assert pd.read_csv(root / "named" / "metrics.csv")["train_acc"].notna().all()


def test_every_command_reads_the_run_folder(trained, tmp_path):
    root, _ = trained
    run = root / "named"
    result = sharp("eos", run)
    assert result.code in (0, 1) and "named" in result.stdout, result.stderr
    assert pd.read_csv(run / "eos.csv")["edge"].notna().all()
    sharp("plot", run).ok()
    assert (run / "sharpness.png").exists()
    sharp("summarize", root / "ownloss", "--out", tmp_path / "summary.csv").ok()


def test_report_to_tensorboard_gets_every_row_through_the_trainers_log(trained):
    """report_to=["tensorboard"]: the Trainer's own TensorBoard callback holds λ₁, ‖g‖ and
    the GD edge of each callback's metrics.csv at the measured steps (float32, under the
    integration's train/ prefix)."""
    root, callbacks = trained
    (log_dir,) = (root / "hf" / "runs").iterdir()
    board = tensorboard_scalars(log_dir)
    runs = [root / "ownloss", root / "named"]
    for tag, column in (("lambda1", "sharpness"), ("grad_norm", "grad_norm"), ("gd_edge", "gd_edge")):
        assert_float32_board_holds(board, "train/sharpness/" + tag, runs, column)


def test_without_transformers_the_import_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "sharpcli.integrations.hf")
    with pytest.raises(ImportError, match=r"pip install -e '\.\[hf\]'"):
        importlib.import_module("sharpcli.integrations.hf")


def test_two_ddp_processes_log_what_one_does(trained, tmp_path):
    """The Trainer under torchrun, 2 CPU processes (gloo): each trains on half of each step's
    examples and measures half of each measurement set; rank 0's files equal the 1-process
    run's."""
    _, callbacks = trained
    assert_two_processes_log_the_same("tests.integrations.hf_fit", tmp_path,
                                      dict(zip(('ownloss', 'named'), callbacks)))
