"""SharpnessCallback inside a real Hugging Face Trainer (tiny model, CPU, float64): the rows
of a plain loop around sharpcli.Tracker, with the model's own loss on dict batches or a
named loss on (inputs, targets) pairs, under gradient accumulation; a run folder every
`sharp` command reads."""

from __future__ import annotations

import importlib
import sys

import pandas as pd
import pytest
import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from sharpcli.hessian.losses import mse_loss
from sharpcli.integrations.hf import SharpnessCallback
from tests.integrations.problem import (COMPARED, EVERY, LR, MOMENTUM, STEPS, TOL,
                                        assert_same_rows, examples, mlp, plain_loop)
from tests.runners import sharp


class Model(nn.Module):
    """The problem's MLP as a Hugging Face model is called: keyword inputs, and its own
    loss when given `labels`."""

    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x, labels=None):
        logits = self.net(x)
        return {"logits": logits} if labels is None else {"loss": mse_loss(logits, labels),
                                                          "logits": logits}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """STEPS updates of SGD with momentum, each accumulated over 2 shuffled half-batches
    (so the full-batch gradient), no clipping, a constant η."""
    root = tmp_path_factory.mktemp("hf")
    x, y = examples()
    halves = [{"x": x[:16], "labels": y[:16]}, {"x": x[16:], "labels": y[16:]}]
    callbacks = [SharpnessCallback(halves, None, root / "ownloss", every=EVERY, tol=TOL),
                 SharpnessCallback((x, y), "mse", root / "named", every=EVERY, tol=TOL)]
    model = Model()
    args = TrainingArguments(output_dir=str(root / "hf"), max_steps=STEPS,
                             per_device_train_batch_size=16, gradient_accumulation_steps=2,
                             max_grad_norm=0.0, lr_scheduler_type="constant", learning_rate=LR,
                             use_cpu=True, report_to="none", save_strategy="no",
                             logging_strategy="no", disable_tqdm=True)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    dataset = [{"x": xi, "labels": yi} for xi, yi in zip(x, y)]
    Trainer(model=model, args=args, train_dataset=dataset, callbacks=callbacks,
            optimizers=(opt, None)).train()
    return root, callbacks


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


def test_without_transformers_the_import_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "sharpcli.integrations.hf")
    with pytest.raises(ImportError, match=r"pip install 'sharpcli\[hf\]'"):
        importlib.import_module("sharpcli.integrations.hf")
