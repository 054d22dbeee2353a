"""A memory budget for the eigensolvers: sizes as users write them (sharpcli.sizes: "800MB",
"1.5GB", "512MiB", "2e9"; decimal and binary units), and how many vectors of an operator's
size they hold.

What a budget covers: the vectors a solver keeps (its Krylov basis, sketch or probes) and its
scratch, beyond the model and one product's output (an operator's own working memory is the
operator's). Each solver says in its docstring how many vectors of the budget it needs.
"""

from __future__ import annotations

import re

from dataclasses import dataclass

import torch

from sharpcli.linalg.results import LinalgInputError
from sharpcli.sizes import human_bytes, parse_size
# A basis goes to the device only if it leaves this share of the free memory to the products.
DEVICE_SHARE = 0.5
WHERE = ("auto", "device", "host")


def parse_memory(value, name: str = "max_memory") -> int:
    """Bytes from an int, a float, or a string such as "800MB", "1.5GB", "512MiB", "2e9"
    (sharpcli.sizes). Raises LinalgInputError naming `name` and the value when it is not a
    positive size."""
    if isinstance(value, MemoryBudget):
        return value.bytes
    return parse_size(value, name, LinalgInputError)


def vector_bytes(size: int, dtype: torch.dtype) -> int:
    return int(size) * torch.empty((), dtype=dtype).element_size()


@dataclass(frozen=True)
class MemoryBudget:
    """`bytes` for what a solver keeps beyond the model and one product, and where its basis
    lives: `where` = "device" (the operator's), "host" (CPU memory, pinned when the operator
    is on CUDA) or "auto" (the device while the basis takes at most half of its free memory,
    else the host: `place`)."""

    bytes: int
    where: str = "auto"

    @classmethod
    def of(cls, value, name: str = "max_memory") -> "MemoryBudget | None":
        """None for None; a MemoryBudget as is; bytes or a size string as a budget."""
        if value is None or isinstance(value, MemoryBudget):
            return value
        return cls(parse_memory(value, name))

    def __post_init__(self):
        if self.where not in WHERE:
            raise LinalgInputError(f"where must be one of {WHERE}, got {self.where!r}")

    def vectors(self, size: int, dtype: torch.dtype) -> int:
        """How many vectors of `size` entries of `dtype` the budget holds."""
        return self.bytes // vector_bytes(size, dtype)

    def require(self, minimum: int, size: int, dtype: torch.dtype, why: str) -> int:
        """The vectors the budget holds, or LinalgInputError naming the minimum (`why`
        says what the minimum is made of)."""
        have = self.vectors(size, dtype)
        if have < minimum:
            need = minimum * vector_bytes(size, dtype)
            raise LinalgInputError(
                f"a budget of {human_bytes(self.bytes)} cannot hold the minimum of {minimum} "
                f"vectors ({need} bytes, {human_bytes(need)}) for this problem: {why}")
        return have

    def less(self, vectors: int, size: int, dtype: torch.dtype) -> "MemoryBudget":
        """The budget left after `vectors` vectors of this size are set aside."""
        return MemoryBudget(max(self.bytes - vectors * vector_bytes(size, dtype), 0), self.where)

    def place(self, device, nbytes: int) -> torch.device:
        """Where a basis of `nbytes` lives. Only a CUDA operator has a choice: its device
        while nbytes ≤ DEVICE_SHARE × free device memory (the rest is left to the products),
        else the host when the host has that much available (MemAvailable), else the device
        (and the allocation reports what is short)."""
        device = torch.device(device)
        if self.where == "device" or device.type != "cuda":
            return device
        if self.where == "host":
            return torch.device("cpu")
        free, _ = torch.cuda.mem_get_info(device)
        if nbytes <= DEVICE_SHARE * free or nbytes > host_available():
            return device
        return torch.device("cpu")


def cannot_hold(budget: MemoryBudget | None, op, vectors: int) -> bool:
    """Whether a budget is too small for `vectors` vectors of the operator's size: the one
    test by which every solver decides to run within it (restarted, capped, partial) rather
    than as without one."""
    return budget is not None and budget.vectors(op.size, op.dtype) < vectors


def require_minimum(budget: MemoryBudget, size: int, dtype: torch.dtype,
                    needs: list[tuple[int, str]]) -> None:
    """The one check of a budget against the least the requested solvers keep, before
    anything is computed: `needs` holds (vectors, what they are) for each solver, and the
    largest must fit. LinalgInputError (a SharpError) naming the budget (param max_memory),
    its vectors and the minimum."""
    need, why = max(needs)
    have = budget.vectors(size, dtype)
    if have < need:
        one = vector_bytes(size, dtype)
        raise LinalgInputError(f"{{max_memory}} {human_bytes(budget.bytes)} holds {have} vectors "
                               f"of the model's {size} parameters ({human_bytes(one)} each), below "
                               f"the minimum of {need} ({human_bytes(need * one)}): {why}",
                               # `why` may name arguments too ({check_missed=False})
                               param=("max_memory", *re.findall(r"\{(\w+)[^{}]*\}", why)))


def host_available() -> float:
    """Bytes of host memory available to a new allocation (Linux MemAvailable); infinity
    where /proc/meminfo cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")
