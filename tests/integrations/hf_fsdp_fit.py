"""The integration problem (tests/integrations/problem.py) trained by the Hugging Face Trainer
with accelerate's FSDP version 2, SharpnessCallback measuring the sharded model; run on a
GPU by benchmarks/gpu_check.sh:

    torchrun --standalone --nproc-per-node 1 -m tests.integrations.hf_fsdp_fit ROOT

Rank 0 prints tests/integrations/fsdp_check.py's comparison with the plain loop. Not on the
CPU (transformers 5.25, accelerate 1.16): accelerate turns FSDP on only for accelerator
distributed types (state.py: MULTI_GPU, MULTI_NPU, ...). With use_cpu=True on 2 gloo
processes the Trainer keeps DistributedType.MULTI_CPU, ignores `fsdp_config` without a word
and wraps the model in DistributedDataParallel (the comparison then says `"sharded":
false`); without use_cpu on a machine with no GPU it refuses: "ValueError: Using fsdp only
works in distributed training."."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.distributed.fsdp import fully_shard
from transformers import Trainer, TrainingArguments

from sharpcli.hessian.finite_difference import is_fsdp2
from sharpcli.integrations.hf import SharpnessCallback
from tests.integrations.fsdp_check import report
from tests.integrations.hf_fit import Model
from tests.integrations.problem import ADAM_LR, EVERY, LR, MOMENTUM, STEPS, TOL, examples


def train(root: Path) -> tuple[SharpnessCallback, bool]:
    """As tests/integrations/hf_fit.py's one process, with each Linear sharded by FSDP2 and
    then the model; the measurement set is the model's own loss on two dict batches."""
    x, y = examples()
    halves = [{"x": x[:16], "labels": y[:16]}, {"x": x[16:], "labels": y[16:]}]
    callback = SharpnessCallback(halves, None, root / "fsdp", every=EVERY, tol=TOL)
    model = Model()
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    args = TrainingArguments(output_dir=str(root / "hf"), max_steps=STEPS,
                             per_device_train_batch_size=len(x) // (2 * world),
                             gradient_accumulation_steps=2, max_grad_norm=0.0,
                             lr_scheduler_type="constant", learning_rate=LR, report_to="none",
                             # the Trainer makes the optimizer: under FSDP it refuses one given
                             optim="sgd", optim_args=f"momentum={MOMENTUM}",
                             save_strategy="no", logging_strategy="no", disable_tqdm=True,
                             use_cpu=not torch.cuda.is_available(), fsdp=True, fsdp_config={"fsdp_version": 2,
                                                     "transformer_layer_cls_to_wrap": ["Linear"],
                                                     "reshard_after_forward": True})
    dataset = [{"x": xi, "labels": yi} for xi, yi in zip(x, y)]
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback])
    trainer.train()
    return callback, is_fsdp2(trainer.model)


def by_hand(root: Path, adam: bool = False) -> SharpnessCallback:
    """The callback driven as the Trainer drives it, around a hand-written FSDP2 loop (each
    Linear, then the model, sharded over the launch's processes; each process's gradient of
    the mean loss over its half of the examples, which FSDP2 averages): what runs on the
    CPU of the Trainer's path, with the model and optimizer the Trainer's events carry."""
    x, y = examples()
    model = Model()
    for layer in model.net:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    opt = (torch.optim.AdamW(model.parameters(), lr=ADAM_LR) if adam else
           torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM))
    halves = [{"x": x[:16], "labels": y[:16]}, {"x": x[16:], "labels": y[16:]}]
    name = "hf-by-hand-adamw" if adam else "hf-by-hand"
    callback = SharpnessCallback(halves, None, root / name, every=EVERY, tol=TOL)
    args, state = SimpleNamespace(gradient_accumulation_steps=1), SimpleNamespace(global_step=0)
    callback.on_train_begin(args, state, None, model=model, optimizer=opt)
    mine = torch.chunk(torch.arange(len(x)), torch.distributed.get_world_size())
    mine = mine[torch.distributed.get_rank()]
    for step in range(STEPS):
        opt.zero_grad()
        model(x[mine], labels=y[mine])["loss"].backward()
        state.global_step = step
        callback.on_pre_optimizer_step(args, state, None)
        opt.step()
    callback.on_train_end(args, state, None)
    return callback


if __name__ == "__main__":
    root = Path(sys.argv[1])
    callback, sharded = train(root)
    report(root / "fsdp", sharded, "transformers Trainer, accelerate FSDP version 2",
           callback.measurer.tracker.dist.is_main)
