"""Vectors split by coordinates across processes: the basis of a restarted solver, sharded.

Under torchrun every process applies the same operator (each to its share of the data, the
products summed), so a replicated solver keeps W copies of the same basis. Sharded, process
r keeps coordinates [lo_r, hi_r) of every basis vector: the basis, the scratch and the
reorthogonalisation's work are divided by W, and a budget holds W times the vectors
(docs/guides/large-models.md#many-processes).

What changes is where sums happen. A solver reaches every reduction over coordinates through
a `Space` (projection.py): `inner` (xᵀy in float64), `norms` (column norms) and `sum_`. The
local space sums this process's coordinates, the sharded one adds an all-reduce of the small
result (one for all the pieces of a basis). A product
gathers the vector (its slice placed in a zero vector, summed over the processes), applies
the operator, whose own products are already summed, and keeps this process's slice. Random
vectors are drawn whole from the generator that every process seeds alike, and sliced, so the
start vectors and the numbers are those of one process up to the order of summation.

Linear algebra stays free of torch.distributed: an operator that lives on several processes
says so with `shards` (a `Shards`: its rank, the number of processes and the in-place sum of
a tensor over them); a wrapper around it (`.op`) spans the same processes (`shards_of`), and
`sharded` wraps either.

A model sharded by FSDP2 has operators whose vectors are split already: each process's
coordinates are its local shards of the parameters, and a product needs no gather (its
`Shards` give `dim`, the whole space's size, and `draw`, its own random vectors).
`LocalShards` is the same basis-splitting without the gather: nothing on any process is
ever a whole vector, the eigenvectors included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from sharpcli.linalg.projection import LOCAL, Space
from sharpcli.linalg.results import apply_block, random_vector, start_block


@dataclass(frozen=True)
class Shards:
    """Where an operator's vectors may be split: `rank` of `world` processes, and `sum_`, the
    in-place sum of a tensor over them (every process gets the same result)."""

    rank: int
    world: int
    sum_: Callable[[torch.Tensor], torch.Tensor]
    # vectors split already (FSDP2): the whole space's size, and random vectors' local part
    dim: int | None = None
    draw: Callable[[torch.Generator, str], torch.Tensor] | None = None


class ShardedSpace(Space):
    """Reductions over coordinates split across processes: each local sum, then summed."""

    def __init__(self, sum_: Callable[[torch.Tensor], torch.Tensor], device: torch.device):
        self._sum_, self.device = sum_, device

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Summed on the operator's device (nccl's collectives take no host tensors), returned
        where `t` was (a basis in host memory)."""
        return self._sum_(t.to(self.device)).to(t.device)

    def norms(self, w: torch.Tensor) -> torch.Tensor:
        squares = torch.linalg.vector_norm(w, dim=0).double() ** 2
        return self.sum_(squares).sqrt().to(w.dtype)


def space_of(op) -> Space:
    return getattr(op, "space", LOCAL)


class Sharded:
    """`op` on this process's coordinates [lo, hi) of its vectors; `dim` is op's size."""

    def __init__(self, op, shards: Shards):
        self.op, self.shards = op, shards
        n, r, w = op.size, shards.rank, shards.world
        self.lo, self.hi = r * n // w, (r + 1) * n // w
        self.size, self.dim = self.hi - self.lo, n
        self.dtype, self.device = op.dtype, op.device
        self.space = ShardedSpace(shards.sum_, op.device)
        self.gathered = shards.world  # slices per whole vector that a product gathers

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """The whole vector (or block of columns) from every process's slice."""
        whole = local.new_zeros((self.dim,) + tuple(local.shape[1:]))
        whole[self.lo:self.hi] = local
        return self.shards.sum_(whole)

    # The slice is copied out so that the whole product is freed at once: between products a
    # process holds its slices only, as it holds its slice of the basis.
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.op.matvec(self.gather(v))[self.lo:self.hi].clone()

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        return apply_block(self.op, self.gather(vs))[self.lo:self.hi].clone()

    def random(self, gen: torch.Generator, kind: str = "gaussian") -> torch.Tensor:
        return random_vector(self.op, gen, kind)[self.lo:self.hi]

    def start(self, v0) -> torch.Tensor:
        """The warm-start columns, normalised whole, as this process's slice."""
        return start_block(self.op, v0)[self.lo:self.hi]

    def local(self, rows: torch.Tensor) -> torch.Tensor:
        """This process's columns of whole vectors given as rows (n, dim)."""
        return rows[:, self.lo:self.hi]


class LocalShards(Sharded):
    """`op` whose vectors are this process's part already (FSDP2's local shards): products,
    random vectors and warm starts stay local; only sums cross processes."""

    def __init__(self, op, shards: Shards):
        self.op, self.shards = op, shards
        self.size, self.dim = op.size, shards.dim
        self.dtype, self.device = op.dtype, op.device
        self.space = ShardedSpace(shards.sum_, op.device)
        self.gathered = 0

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        return local  # the eigenvectors stay as this process's shards

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.op.matvec(v)

    def matmat(self, vs: torch.Tensor) -> torch.Tensor:
        return apply_block(self.op, vs)

    def random(self, gen: torch.Generator, kind: str = "gaussian") -> torch.Tensor:
        return self.shards.draw(gen, kind)

    def start(self, v0) -> torch.Tensor:
        cols = start_block(self.op, v0)
        return cols * (cols.norm(dim=0) / self.space.norms(cols))  # unit norm over processes

    def local(self, rows: torch.Tensor) -> torch.Tensor:
        return rows


def shards_of(op) -> Shards | None:
    """The processes op's products span: its own `shards`, or those of the operator it wraps
    (`.op`: a diagonal scaling, a restriction, a deflation, a stop check), or None."""
    while op is not None:
        if getattr(op, "shards", None) is not None:
            return op.shards
        op = getattr(op, "op", None)
    return None


def sharded(op):
    """`op` sharded across the processes it lives on, or `op` itself on one process."""
    shards = shards_of(op)
    if shards is not None and shards.dim is not None:
        return op if isinstance(op, LocalShards) else LocalShards(op, shards)
    return Sharded(op, shards) if shards is not None and shards.world > 1 else op


def own_shards(op):
    """`op` on its own shards (LocalShards) where its vectors are split already (FSDP2), else
    `op` itself: what the trace and the density solve. Unlike `sharded`, a torchrun operator
    whose vectors are whole on every process stays as it is (a trace keeps a few vectors, and
    a gather per product would cost an all-reduce of a whole vector)."""
    shards = shards_of(op)
    if shards is None or shards.dim is None:
        return op
    return op if isinstance(op, LocalShards) else LocalShards(op, shards)


def shards_note(op, what: str) -> str:
    """For a result's note: that `what` (probes, vectors) lived as shards, over how many
    processes; "" for an operator whose vectors are whole."""
    if not isinstance(op, LocalShards):
        return ""
    world = op.shards.world
    return f"{what} sharded like the parameters over {world} process{'es' if world > 1 else ''}"


def own_space(op) -> Space:
    """Where sums over op's own vectors happen: across processes when they are split already
    (FSDP2), else here (a torchrun Hessian's vectors are whole on every process)."""
    shards = shards_of(op)
    return ShardedSpace(shards.sum_, op.device) if shards is not None and shards.dim else LOCAL


def draw(op, gen: torch.Generator, kind: str = "gaussian") -> torch.Tensor:
    """A random vector of op's (local) size: sliced from the whole one when sharded."""
    return op.random(gen, kind) if isinstance(op, Sharded) else random_vector(op, gen, kind)


def start(op, v0) -> torch.Tensor:
    return op.start(v0) if isinstance(op, Sharded) else start_block(op, v0)


def dimension(op) -> int:
    """The dimension of the space op acts on (not the length of a local slice)."""
    shards = shards_of(op)
    if shards is not None and shards.dim is not None:
        return shards.dim
    return getattr(op, "dim", op.size)
