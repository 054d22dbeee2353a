"""The integration problem (tests/integrations/problem.py) trained by PyTorch Lightning's
ModelParallelStrategy, the module sharded by FSDP2 in its `configure_model` (each Linear, then
the MLP), with SharpnessCallback measuring it:

    torchrun --standalone --nproc-per-node 2 -m tests.integrations.lightning_fsdp_fit ROOT

(gloo on the CPU, float64; each process holds the whole measurement set and measures its
half, no process holds the whole model). The same launch drives the Hugging Face callback
around a hand-written FSDP2 loop (hf_fsdp_fit.by_hand: accelerate does not shard on the
CPU) into ROOT/hf-by-hand. benchmarks/gpu_check.sh runs it on one GPU:

    torchrun --standalone --nproc-per-node 1 -m tests.integrations.lightning_fsdp_fit ROOT cuda 1
"""

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

from sharpcli.integrations.lightning import SharpnessCallback
from tests.integrations.fsdp_check import report
from tests.integrations.hf_fsdp_fit import by_hand
from tests.integrations.lightning_fit import Module
from tests.integrations.problem import EVERY, STEPS, TOL, examples, write_shard


class ShardedModule(Module):
    def configure_model(self):
        mesh = self.device_mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(self.net, mesh=mesh)


def fit(root: Path, accelerator: str = "cpu", devices: int = 2) -> tuple[SharpnessCallback, bool]:
    """STEPS full-batch updates (2 micro-batches per process accumulated: the mean over all
    32 examples), measured every EVERY steps; and whether every weight matrix was sharded.
    ModelParallelStrategy refuses precision="64-true"; "32-true" leaves the module's float64
    weights as they are."""
    x, y = examples()
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x) // (2 * devices))
    callback = SharpnessCallback((x, y), None, root / "fsdp", every=EVERY, tol=TOL)
    strategy = ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1,
                                     timeout=datetime.timedelta(seconds=120))
    trainer = L.Trainer(max_steps=STEPS, accumulate_grad_batches=2, callbacks=[callback],
                        accelerator=accelerator, devices=devices, strategy=strategy,
                        precision="32-true", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    module = ShardedModule()
    trainer.fit(module, loader)
    # one process "shards" too: its weights are DTensors, each a whole shard
    sharded = all(hasattr(p, "to_local") and (devices == 1 or p.to_local().numel() < p.numel())
                  for p in module.parameters() if p.ndim == 2)
    (root / f"sharded{trainer.global_rank}.json").write_text(json.dumps(sharded))
    return callback, sharded


if __name__ == "__main__":
    # ROOT [ACCELERATOR DEVICES]: the test's 2 CPU processes, or gpu_check.sh's one GPU
    torch.set_num_threads(1)
    root = Path(sys.argv[1])
    accelerator, devices = (sys.argv[2], int(sys.argv[3])) if len(sys.argv) > 3 else ("cpu", 2)
    callback, sharded = fit(root, accelerator, devices)
    write_shard(root, callback.measurer.tracker)
    if accelerator == "cpu":  # the same launch: the HF callback's path on a sharded model
        by_hand(root)
        by_hand(root, adam=True)
    if accelerator != "cpu":
        report(root / "fsdp", sharded, "lightning ModelParallelStrategy",
               callback.measurer.tracker.dist.is_main)
