"""The integration problem (tests/integrations/problem.py) trained by PyTorch Lightning with
SharpnessCallback: in the test's process, or under torchrun as Lightning's DDP strategy

    torchrun --standalone --nproc-per-node 2 -m tests.integrations.lightning_fit ROOT

(gloo on the CPU; each process holds the whole training and measurement sets)."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, TensorDataset

from sharpcli.hessian.losses import mse_loss
from sharpcli.integrations.lightning import SharpnessCallback
from tests.integrations.problem import (EVERY, LR, MOMENTUM, STEPS, TOL, examples, mlp,
                                        write_shard)


class Module(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = mlp()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = mse_loss(self(x), y)
        self.log("train_loss", loss)  # silenced while the callback measures
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR, momentum=MOMENTUM)


def fit(root: Path, *, processes: int = 1) -> list[SharpnessCallback]:
    """STEPS full-batch updates, each the mean of 2 accumulated micro-batches per process;
    two callbacks: the module's training_step as the loss (root/steploss) and a loss_fn
    (root/lossfn). One process logs to TensorBoard in root/tb, where the callbacks' rows go
    too."""
    x, y = examples()
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x) // (2 * processes))
    callbacks = [SharpnessCallback((x, y), None, root / "steploss", every=EVERY, tol=TOL),
                 SharpnessCallback((x, y), mse_loss, root / "lossfn", every=EVERY, tol=TOL)]
    strategy = (DDPStrategy(process_group_backend="gloo", timeout=datetime.timedelta(seconds=120))
                if processes > 1 else "auto")
    trainer = L.Trainer(max_steps=STEPS, accumulate_grad_batches=2, callbacks=callbacks,
                        accelerator="cpu", devices=processes, strategy=strategy,
                        precision="64-true", logger=_tensorboard(root) if processes == 1 else False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Module(), loader)
    return callbacks


def _tensorboard(root: Path) -> TensorBoardLogger:
    return TensorBoardLogger(root, name="tb", version="")  # event files straight in root/tb


if __name__ == "__main__":
    torch.set_num_threads(1)
    root = Path(sys.argv[1])
    tracker = fit(root, processes=2)[0].measurer.tracker
    write_shard(root, tracker)
