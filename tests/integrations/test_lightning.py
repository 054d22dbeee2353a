"""SharpnessCallback inside a real Lightning Trainer (tiny model, CPU, float64): the rows of
a plain loop around sharpcli.Tracker under gradient accumulation, with the module's
training_step or a loss_fn as the loss; a run folder every `sharp` command reads; and under
Lightning's DDP strategy on 2 processes, the rows of 1 process."""

from __future__ import annotations

import importlib
import json
import sys

import pandas as pd
import pytest
import torch

from sharpcli.errors import SharpError
from sharpcli.integrations import measurer
from sharpcli.integrations.lightning import SharpnessCallback
from tests.dashboards import assert_float32_board_holds, tensorboard_scalars
from tests.integrations.lightning_fit import fit
from tests.integrations.problem import (ADAM_LR, COMPARED, assert_same_rows,
                                        assert_two_processes_log_the_same, examples, mlp,
                                        plain_loop)
from tests.runners import sharp



@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    root = tmp_path_factory.mktemp("lightning")
    return root, fit(root)


def test_the_callback_logs_what_a_plain_loop_logs(one_process, tmp_path):
    """Both callbacks (training_step as the loss; a loss_fn) log at steps 0, 5, …, 25 the
    λ₁, ‖g‖, η, GD edge and loss of full-batch GD with momentum in a plain loop, though
    Lightning accumulated each gradient over 2 micro-batches."""
    root, callbacks = one_process
    reference = plain_loop(tmp_path / "loop")
    for callback in callbacks:
        assert_same_rows(callback.rows, reference)
    for name in ("steploss", "lossfn"):  # and the files hold those rows
        frame = pd.read_csv(root / name / "metrics.csv")
        for key in COMPARED:
            assert frame[key].tolist() == pytest.approx([r[key] for r in reference], rel=1e-6)


def test_every_command_reads_the_run_folder(one_process, tmp_path):
    root, _ = one_process
    run = root / "steploss"
    result = sharp("eos", run)
    assert result.code in (0, 1) and "steploss" in result.stdout, result.stderr
    assert pd.read_csv(run / "eos.csv")["edge"].notna().all()
    sharp("plot", run).ok()
    assert (run / "sharpness.png").exists()
    sharp("summarize", run, "--out", tmp_path / "summary.csv").ok()


def test_the_trainers_tensorboard_logger_gets_every_row(one_process):
    """The trainer's TensorBoardLogger holds λ₁, ‖g‖ and the GD edge of each callback's
    metrics.csv at the measured optimizer steps (float32, as Lightning writes scalars)."""
    root, _ = one_process
    board = tensorboard_scalars(root / "tb")
    runs = [root / "steploss", root / "lossfn"]
    for tag, column in (("lambda1", "sharpness"), ("grad_norm", "grad_norm"), ("gd_edge", "gd_edge")):
        assert_float32_board_holds(board, "sharpness/" + tag, runs, column)


@pytest.mark.slow
def test_two_ddp_processes_log_what_one_does(one_process, tmp_path):
    """Lightning's DDP strategy, 2 CPU processes (gloo): each trains on half of each batch
    and measures half of the measurement set; rank 0's files equal the 1-process run's."""
    root, callbacks = one_process
    assert_two_processes_log_the_same("tests.integrations.lightning_fit", tmp_path,
                                      dict(zip(('steploss', 'lossfn'), callbacks)))


@pytest.mark.slow
def test_a_module_sharded_by_fsdp2_logs_what_one_unsharded_process_does(one_process, tmp_path):
    """Lightning's ModelParallelStrategy, 2 CPU processes (gloo): the module shards itself
    with fully_shard in configure_model, so no process holds a whole weight matrix, and the
    callback measures it with finite-difference products on a sharded Lanczos basis. Rank
    0's rows equal the unsharded process's: λ₁ to 1e-6 (measured 1e-10 in float64), ‖g‖,
    η, the edge and the loss of the training that went on after each measurement. So do
    the Hugging Face callback's, driven by hand around an FSDP2 loop in the same launch."""
    root, callbacks = one_process
    assert_two_processes_log_the_same("tests.integrations.lightning_fsdp_fit", tmp_path,
                                      {"fsdp": callbacks[0], "hf-by-hand": callbacks[0]})
    assert all(json.loads((tmp_path / f"sharded{r}.json").read_text()) for r in (0, 1))
    # and with the HF Trainer's default AdamW: λ₁(P⁻¹H) with P from its sharded state
    reference = plain_loop(tmp_path / "adamw-loop", adamw_lr=ADAM_LR)
    rows = pd.read_csv(tmp_path / "hf-by-hand-adamw" / "metrics.csv").to_dict("records")
    assert_same_rows(rows, reference, phase="adamw")
    measured = [(r["preconditioned_sharpness"], ref["preconditioned_sharpness"])
                for r, ref in zip(rows[1:], reference[1:])]  # none before the first update
    assert all(abs(r - ref) <= 1e-6 * ref for r, ref in measured), measured


def test_checkpoints_of_a_model_sharded_by_fsdp2_are_refused_when_training_starts(tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setattr(measurer, "is_fsdp2", lambda model: True)  # as for fully_shard's
    callback = SharpnessCallback(examples(), "mse", tmp_path / "run", checkpoint_every=5)
    model = mlp()
    with pytest.raises(SharpError, match="checkpoint_every: .* sharded by FSDP2"):
        callback.measurer.start(model, torch.optim.SGD(model.parameters(), lr=0.1))


def test_bad_options_are_refused_when_the_callback_is_made(tmp_path):
    with pytest.raises(SharpError, match="unknown option 'sharpness_k'.*tol"):
        SharpnessCallback(examples(), None, tmp_path, sharpness_k=2)
    with pytest.raises(SharpError, match="every must be a positive"):
        SharpnessCallback(examples(), None, tmp_path, every=0)


def test_without_lightning_the_import_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.setitem(sys.modules, "pytorch_lightning", None)
    monkeypatch.delitem(sys.modules, "sharpcli.integrations.lightning")
    with pytest.raises(ImportError, match=r"pip install -e '\.\[lightning\]'"):
        importlib.import_module("sharpcli.integrations.lightning")
