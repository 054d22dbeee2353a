"""A PyTorch Lightning training measured by sharpcli's SharpnessCallback.

The LayerNorm MLP of examples/own_loop.py as a LightningModule, trained by full-batch GD
(η = 0.1) on the first 1000 MNIST-1D examples — each step's gradient accumulated over 4
batches of 250. The callback measures λ₁ every 20 optimizer steps on the fixed training set,
with the module's own training_step as the loss, and writes reports/lightning/:

    python examples/lightning_callback.py && sharp eos reports/lightning

Expected: the numbers of examples/own_loop.py (the same model, weights and updates): λ₁
rises to 2/η = 20 by step ~800 and hovers there.
"""

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from sharpcli.hessian.losses import mse_loss
from sharpcli.integrations.lightning import SharpnessCallback
from sharpcli.workload.data import load_dataset

try:
    from examples.own_loop import make_model
except ImportError:  # run as a script from the examples folder
    from own_loop import make_model


class Classifier(L.LightningModule):
    def __init__(self, lr: float = 0.1):
        super().__init__()
        self.net, self.lr = make_model(), lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


if __name__ == "__main__":
    data = load_dataset("mnist1d", train_size=1000)
    x, y = data.x_train, data.y_train
    callback = SharpnessCallback((x, y), None, "reports/lightning", every=20,
                                 test=(data.x_test, data.y_test), overwrite=True)
    trainer = L.Trainer(max_steps=1500, accumulate_grad_batches=4, callbacks=[callback],
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(Classifier(), DataLoader(TensorDataset(x, y), batch_size=250))
    for row in callback.rows[::10]:
        print(f"step {row['step']}: loss {row['train_loss']:.4f}, λ₁ {row['sharpness']:.3f}, "
              f"2/η {row['gd_edge']:.1f}")
