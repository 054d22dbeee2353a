"""Sharded models (FSDP2): the memory per process of the ~25M GPT of benchmarks/gpt.py sharded
over W processes, and the cost of a finite-difference product against a training step.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc-per-node W benchmarks/bench_fsdp.py

Each process builds the model on the meta device (so that no process ever holds it whole),
shards it per block and at the root with `fully_shard`, materialises its shards and
initialises them, then times a training step (forward and backward of its share of the
batch, FSDP2's collectives included) and a Hessian-vector product by central differences
(two such gradients), and runs a short top-1 Lanczos through `sharpcli.spectrum`
(`--max-iter` products). Rank 0 prints one JSON line: peak RSS per process (the largest
over the processes) before the model, after sharding, and after the spectrum; the times."""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

import sharpcli
from benchmarks.gpt import GPT25M, GPT, _init, next_token_loss, token_batch
from sharpcli.distributed import Dist
from sharpcli.hessian import HessianOperator
from sharpcli.hessian.calls import Call
from sharpcli.sources.data import as_data


def peak_rss() -> float:
    """This process's peak resident memory so far, in GiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def sharded_gpt(seed: int, device: torch.device) -> nn.Module:
    with torch.device("meta"):
        model = GPT(**GPT25M)
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    model.to_empty(device=device)
    torch.manual_seed(seed)
    for module in model.modules():  # GPT-2's initialisation, on each process's shards
        _init(module)
        if isinstance(module, nn.LayerNorm):
            module.reset_parameters()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=8, help="sequences of 128 tokens")
    parser.add_argument("--max-iter", type=int, default=6, help="Lanczos products")
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl, one GPU "
                        "per process)")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    d = Dist.current()
    device = d.device
    base = peak_rss()
    model = sharded_gpt(0, device)
    local = sum(p.to_local().numel() for p in model.parameters())
    sharded = peak_rss()
    x, y = (t.to(device) for t in token_batch(GPT25M["vocab"], args.sequences,
                                              GPT25M["positions"]))
    shard = d.shard(len(x))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    start = time.perf_counter()
    (next_token_loss(model(x[shard]), y[shard]) * d.world_size).backward()
    sync()
    step = time.perf_counter() - start
    for p in model.parameters():
        p.grad = None
    op = HessianOperator(model, next_token_loss, x, y, hvp="finite-difference", dist=d,
                         chunk_size=len(x))
    v = op._draw(torch.Generator().manual_seed(0), "gaussian")
    start = time.perf_counter()
    op.matvec(v)
    sync()
    product = time.perf_counter() - start
    start = time.perf_counter()
    rows = sharpcli.spectrum(model, next_token_loss, x, y, top_k=1, max_iter=args.max_iter,
                             check_missed=False, check_deterministic=False)
    spectrum = time.perf_counter() - start
    gpu = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else 0.0
    peaks = torch.tensor([base, sharded, peak_rss(), gpu], dtype=torch.float64, device=device)
    dist.all_reduce(peaks, op=dist.ReduceOp.MAX)
    if d.is_main:
        print(json.dumps({"world": d.world_size, "parameters": op.dim, "local_rank0": local,
                          "rss_base_gib": peaks[0].item(), "rss_sharded_gib": peaks[1].item(),
                          "rss_spectrum_gib": peaks[2].item(), "gpu_peak_gib": peaks[3].item(),
                          "step_s": step,
                          "product_s": product, "spectrum_s": spectrum,
                          "products": rows[0]["n_hvp"], "lambda1": rows[0]["value"],
                          "note": rows[0]["note"]}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
