"""The integration problem (tests/integrations/problem.py) trained by PyTorch Lightning's
ModelParallelStrategy, the module sharded by FSDP2 in its `configure_model` (each Linear, then
the MLP), with SharpnessCallback measuring it:

    torchrun --standalone --nproc-per-node 2 -m tests.integrations.lightning_fsdp_fit ROOT

(gloo on the CPU, float64; each process holds the whole measurement set and measures its
half, no process holds the whole model)."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, TensorDataset

from sharpcli.hessian.losses import mse_loss
from sharpcli.integrations.lightning import SharpnessCallback
from tests.integrations.lightning_fit import Module
from tests.integrations.problem import EVERY, STEPS, TOL, examples, write_shard


class ShardedModule(Module):
    def configure_model(self):
        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)


def fit(root: Path) -> SharpnessCallback:
    """STEPS full-batch updates on 2 processes (a micro-batch of half the examples each, 2
    accumulated: the mean over all 32), measured every EVERY steps."""
    x, y = examples()
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x) // 4)
    callback = SharpnessCallback((x, y), None, root / "fsdp", every=EVERY, tol=TOL)
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1,
                                     timeout=datetime.timedelta(seconds=120))
    trainer = L.Trainer(max_steps=STEPS, accumulate_grad_batches=2, callbacks=[callback],
                        accelerator="cpu", devices=2, strategy=strategy, precision="32-true",
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    module = ShardedModule()
    trainer.fit(module, loader)
    sharded = all(hasattr(p, "to_local") and p.to_local().numel() < p.numel()
                  for p in module.parameters() if p.ndim == 2)
    (root / f"sharded{trainer.global_rank}.json").write_text(json.dumps(sharded))
    return callback


if __name__ == "__main__":
    torch.set_num_threads(1)
    root = Path(sys.argv[1])
    write_shard(root, fit(root).measurer.tracker)
