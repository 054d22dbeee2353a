"""The integration problem (tests/integrations/problem.py) trained by the Hugging Face Trainer
with SharpnessCallback: in the test's process, or under torchrun as the Trainer's DDP

    torchrun --standalone --nproc-per-node 2 -m tests.integrations.hf_fit ROOT

(gloo on the CPU; the Trainer gives each process its half of every step's examples, and each
callback's measurement set is split between the processes by the data layer)."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from sharpcli.hessian.losses import mse_loss
from sharpcli.integrations.hf import SharpnessCallback
from tests.integrations.problem import (EVERY, LR, MOMENTUM, STEPS, TOL, examples, mlp,
                                        write_shard)


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


def train(root: Path, *, processes: int = 1) -> list[SharpnessCallback]:
    """STEPS updates of SGD with momentum, each accumulated over 2 shuffled micro-batches per
    process (so the full-batch gradient), no clipping, a constant η; two callbacks: the
    model's own loss on two dict batches (root/ownloss) and a named loss on the tensors
    (root/named). One process reports to TensorBoard in root/hf/runs/*, where the callbacks' rows
    go too."""
    x, y = examples()
    halves = [{"x": x[:16], "labels": y[:16]}, {"x": x[16:], "labels": y[16:]}]
    callbacks = [SharpnessCallback(halves, None, root / "ownloss", every=EVERY, tol=TOL),
                 SharpnessCallback((x, y), "mse", root / "named", every=EVERY, tol=TOL)]
    model = Model()
    args = TrainingArguments(output_dir=str(root / "hf"), max_steps=STEPS,
                             per_device_train_batch_size=len(x) // (2 * processes),
                             gradient_accumulation_steps=2, max_grad_norm=0.0,
                             lr_scheduler_type="constant", learning_rate=LR, use_cpu=True,
                             report_to=["tensorboard"] if processes == 1 else "none",
                             save_strategy="no", logging_strategy="no",
                             disable_tqdm=True, ddp_backend="gloo" if processes > 1 else None,
                             ddp_timeout=120)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    dataset = [{"x": xi, "labels": yi} for xi, yi in zip(x, y)]
    Trainer(model=model, args=args, train_dataset=dataset, callbacks=callbacks,
            optimizers=(opt, None)).train()
    return callbacks


if __name__ == "__main__":
    torch.set_num_threads(1)
    root = Path(sys.argv[1])
    callbacks = train(root, processes=2)
    tracker = callbacks[1].measurer.tracker
    write_shard(root, tracker)
    # The Trainer leaves the process group it made to the interpreter's exit, where gloo's
    # threads may still run ("terminate called without an active exception", SIGABRT after
    # every file is written: seen once in CI). Freed here, with the DDP model that holds it.
    del tracker, callbacks
    gc.collect()
    torch.distributed.destroy_process_group()
