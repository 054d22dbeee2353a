"""A memory budget for the eigensolvers: sizes as users write them, and how many vectors of an
operator's size they hold.

Units. Decimal units are powers of ten, binary units powers of two, as IEC 80000-13 and the
SI have it: kB/KB = 10³, MB = 10⁶, GB = 10⁹, TB = 10¹² bytes; KiB = 2¹⁰, MiB = 2²⁰,
GiB = 2³⁰, TiB = 2⁴⁰. Letters are case-insensitive ("1.5gb"); a bare number ("2e9",
2_000_000_000) is bytes. A bare "G" or "M" is refused: it means GiB to some people and GB to
others. Sizes are printed back in decimal units ("1.5 GB").

What a budget covers: the vectors a solver keeps (its Krylov basis, sketch or probes) and its
scratch, beyond the model and one product's output (an operator's own working memory is the
operator's). Each solver says in its docstring how many vectors of the budget it needs.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

import torch

from sharpcli.linalg.results import LinalgInputError

UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
# A basis goes to the device only if it leaves this share of the free memory to the products.
DEVICE_SHARE = 0.5
WHERE = ("auto", "device", "host")


def parse_memory(value, name: str = "max_memory") -> int:
    """Bytes from an int, a float, or a string such as "800MB", "1.5GB", "512MiB", "2e9"
    (see the module docstring for units). Raises LinalgInputError naming `name` and the
    value when it is not a positive size."""
    if isinstance(value, MemoryBudget):
        return value.bytes
    number = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        match = _SIZE.match(value)
        unit = match and UNITS.get(match.group(2).lower() or "b")
        number = float(match.group(1)) * unit if unit else None
    if number is None or not math.isfinite(number) or number < 1:
        raise LinalgInputError(f"{name} must be a size such as 800MB, 1.5GB, 512MiB or a number "
                               f"of bytes, got {value!r}")
    return int(number)


def human_bytes(n: float) -> str:
    """A byte count in decimal units, three significant digits: "1.5 GB", "800 MB"."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


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
