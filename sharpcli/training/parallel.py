"""Data-parallel training passes: the gradient of the mean loss over a global batch, each
process taking its shard, exact whatever the shards
(docs/reference/processes.md#gradients).

Under torchrun the model trains inside DistributedDataParallel, whose hooks all-reduce
gradient buckets while the backward pass is still running (communication overlaps
computation on a GPU). DDP averages over the W processes; each process scales its share
of the loss, Σ over its examples of ℓᵢ/B with B the global batch, by W, so the average is
exactly ∇ of the batch mean, Σ_r (n_r/B)·∇L_r, however unevenly the B examples fall
(1001 on 2 processes: 500 and 501). Chunks of a shard accumulate under `no_sync()` and
synchronise once, on the last; a process with an empty shard (a batch smaller than W)
adds zeros to the all-reduce. Hessian-vector products never go through DDP: they use the
module itself and sum their shares explicitly (sharpcli.hessian.operator).
"""

from __future__ import annotations

import torch
from torch import nn

from sharpcli.distributed import SINGLE, Dist
from sharpcli.errors import SharpError
from sharpcli.hessian.losses import LossFn
from sharpcli.hessian.objective import accumulate_gradient


def data_parallel(model: nn.Module, dist: Dist, sync_bn: bool = False) -> nn.Module:
    """The module training passes go through: the model itself in one process, else wrapped
    in DistributedDataParallel (SyncBatchNorm first with `sync_bn`, on CUDA only)."""
    if sync_bn:
        if dist.backend != "nccl":
            raise SharpError("{sync_bn} needs several CUDA processes (torchrun with nccl): "
                             "SyncBatchNorm has no CPU implementation", param="sync_bn")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if not dist.enabled:
        return model
    devices = [dist.local_rank] if dist.backend == "nccl" else None
    # forward_sync_buffers=False: BatchNorm's running statistics are averaged over the
    # processes after each step instead (average_running_stats), rather than rank 0's
    # copied over the others' before every forward pass.
    return nn.parallel.DistributedDataParallel(model, device_ids=devices,
                                               forward_sync_buffers=False)


def average_running_stats(model: nn.Module, dist: Dist) -> None:
    """Average BatchNorm's running mean and variance over the processes (each updated them
    with its own shard's batch statistics), so that every process measures and checkpoints
    the same network: an exponential average of the shards' mean statistics. One
    all-reduce of the concatenated buffers; nothing for networks without BatchNorm, for one
    process, or under SyncBatchNorm, whose statistics are global already."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats and not isinstance(m, nn.SyncBatchNorm)]
    if not dist.enabled or not norms:
        return
    buffers = [b for m in norms for b in (m.running_mean, m.running_var)]
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.sum_(flat).div_(dist.world_size)
    with torch.no_grad():
        for b, piece in zip(buffers, torch.split(flat, [b.numel() for b in buffers])):
            b.copy_(piece.view_as(b))


def batch_gradient(train_model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor,
                   chunk_size: int, dist: Dist = SINGLE, *, sync: bool = True) -> torch.Tensor:
    """.grad ← ∇ of the mean loss over the global batch (x, y), this process computing its
    shard's share; returns that share of the loss (0-d, on the device).

    `sync=False` (SAM's first pass under --sam-sync local): no all-reduce, .grad is the
    gradient of this shard's own mean loss.
    """
    sl = dist.shard(len(x))
    xs, ys = x[sl], y[sl]
    if not dist.enabled:
        return accumulate_gradient(train_model, loss_fn, xs, ys, chunk_size)
    if not sync:
        module = train_model.module
        if len(xs) == 0:
            raise SharpError(f"{{sam_sync=local}} needs every process to hold examples of each "
                             f"batch; a batch of {len(x)} on {dist.world_size} processes leaves "
                             "some with none", param="sam_sync")
        return accumulate_gradient(module, loss_fn, xs, ys, chunk_size)
    return accumulate_gradient(train_model, loss_fn, xs, ys, chunk_size, total=len(x),
                               scale=dist.world_size, no_sync=train_model.no_sync)
