"""Many processes under torchrun: one small object owns the process group, and the rest of
sharpcli asks it for its rank, its share of the examples and sums over processes.

Every process holds the whole data set (small next to the model) and takes a contiguous
shard of each batch: rank r of W gets examples [⌊rn/W⌋, ⌊(r+1)n/W⌋) of a batch of n. Each
process computes its share of a mean, Σ over its examples of ℓᵢ/N with N the size of the
whole batch, and one all-reduce sums the shares: every example weighs 1/N however unevenly
the shards fall, so the numbers do not depend on the number of processes. Without torchrun
there is one process, `SINGLE`, and every sum is the identity (no collective, no copy).
"""

from __future__ import annotations

import datetime
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from sharpcli.config import DEFAULT_DIST_TIMEOUT
from sharpcli.errors import SharpError
from sharpcli.interrupt import held
from sharpcli.launch import env_local_rank, launched_by_torchrun

if dist.is_available():
    # Imported now, before any process group exists. Its functions take group=group.WORLD as
    # a default argument, evaluated once, at import; DistributedDataParallel's constructor
    # imports it, so a group created first would stay referenced by those defaults for the
    # life of the interpreter, and destroy_process_group could not free it. Its gloo worker
    # threads then outlive the command, and at the interpreter's exit one still releasing the
    # last collective's tensors needs the GIL while Python finalises: the thread is unwound
    # through a destructor and std::terminate aborts the process ("terminate called without
    # an active exception", SIGABRT after every file was written: 2 of 33 launches of a
    # 2-process SAM run on 2 busy cores). Destroyed here, the group joins its threads.
    import torch.distributed.nn.functional  # noqa: F401


@dataclass(frozen=True)
class Dist:
    """This process's place among the processes of a run. `Dist()` is one process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files, prints and shows progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of n examples (possibly empty when n < W)."""
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the processes, in place; every process gets the same result."""
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum(self, value: float, device=None) -> float:
        """A number summed over the processes, in float64."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device or self.device)
        return float(self.sum_(t)[0])

    def any(self, flag: bool) -> bool:
        """Whether `flag` holds on some process: one decision every process takes together."""
        return self.sum(1.0 if flag else 0.0) > 0 if self.enabled else flag

    def broadcast(self, obj):
        """Rank 0's `obj` on every process (a decision only one process may take, such as a
        run's name, which depends on which folders exist when it looks)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @property
    def device(self) -> torch.device:
        """Where this process's collectives run: its GPU under nccl, the CPU under gloo."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    @staticmethod
    def current() -> "Dist":
        """The process group torch.distributed was initialised with, or one process."""
        if not (dist.is_available() and dist.is_initialized()):
            return SINGLE
        return Dist(dist.get_rank(), dist.get_world_size(), env_local_rank(), dist.get_backend())


SINGLE = Dist()


@contextmanager
def process_group(device: str, timeout: float = DEFAULT_DIST_TIMEOUT) -> Iterator[Dist]:
    """Join the process group of a torchrun launch (nccl on CUDA, gloo on the CPU) for the
    duration of a command, with `timeout` seconds for any collective; one process otherwise.
    `--device auto` or `cuda` becomes cuda:LOCAL_RANK."""
    if not launched_by_torchrun() or dist.is_initialized():
        yield Dist.current()
        return
    if not timeout > 0:
        raise SharpError(f"{{dist_timeout}} must be positive, got {timeout}", param="dist_timeout")
    local_rank = env_local_rank()
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise SharpError(f"{{device={device}}}: CUDA is not available on this machine",
                             param="device")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout),
                            **({"device_id": torch.device("cuda", local_rank)} if cuda else {}))
    try:
        yield Dist.current()
    except BaseException as err:
        # The frames an exception passed through hold the DDP model, which holds the group:
        # cleared, the group is freed (its threads joined) below, not at the interpreter's exit.
        traceback.clear_frames(err.__traceback__)
        raise
    finally:
        with held():  # a signal now is exit 130 all the same, once the group is gone
            dist.destroy_process_group()


def process_device(device: str, d: Dist) -> str:
    """The device a process of a launch computes on: its own GPU under nccl."""
    if d.backend == "nccl":
        return f"cuda:{d.local_rank}"
    if d.enabled and device == "auto":
        return "cpu"
    return device
