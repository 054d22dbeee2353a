"""The examples a measurement averages over, batch by batch: the one loop over data that the
objective, Hessian-vector products, the Gauss–Newton trace, batch sharpness, evaluation and
the PyHessian backend share.

Two kinds of source:

- `TensorSource`: in-memory examples, sliced along dim 0 into chunks (today's path and its
  numbers: no pass to count, no copy when they already live on the device);
- `StreamSource`: a DataLoader, a list of batches or a callable returning an iterator, read
  again on every pass and moved to the device one batch at a time (the next one already on
  its way), so data larger than the device can be measured.

Weighting. The measured objective is the mean over all loss terms, L = (1/T) Σ_terms ℓ. A
batch's loss is the mean over its own terms, so it enters with weight num_terms(batch)/T:
the numbers then do not depend on how the data is batched or chunked, nor on the number of
processes. `num_terms(batch)` counts examples by default (dim 0 of the first tensor of the
inputs); a per-token loss that ignores padding counts its unpadded targets. T is counted in
one pass over the data (or given as `total_terms`).

Under torchrun each process reads only its share: its contiguous block of in-memory
examples; every W-th batch of a stream (a DataLoader's batch sampler is split, so the other
batches are never loaded). The weights use the global T, so one all-reduce of the shares
gives the mean.

A stream that gives different batches on two passes (shuffling, random augmentation) would
give an operator that changes under the eigensolver. Before the first use two passes are
compared by fingerprint (shapes and two sums per tensor: cheap next to a forward pass) and
such a source is refused, unless the check is turned off.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler

from sharpcli.distributed import SINGLE, Dist
from sharpcli.errors import SharpError
from sharpcli.sources.structure import (describe, first_tensor, fingerprint, plain, slice_batch,
                                        tensors, to_device)

NumTerms = Callable[[Any], int]
DEFAULT_CHUNK = 4096  # examples per batch of in-memory data when the caller gives none


def chunk_slices(n: int, chunk_size: int) -> list[slice]:
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return [slice(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]


class TensorSource:
    """In-memory examples: `inputs` (a tensor, or a structure of tensors sharing dim 0) and
    `targets`; this process's contiguous shard, in slices of `chunk_size`."""

    deterministic = True

    def __init__(self, inputs, targets, chunk_size: int = 4096):
        first = first_tensor(inputs)
        if first is None or first.ndim == 0:
            raise ValueError("in-memory inputs must be a tensor (or tensors) with examples along dim 0")
        self.inputs, self.targets, self.n = plain(inputs), plain(targets), len(first)
        lengths = {len(t) for t in tensors(self.targets) + tensors(self.inputs)}
        if lengths != {self.n}:
            raise ValueError(f"inputs and targets hold different numbers of examples: {sorted(lengths)}")
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.chunk_size = chunk_size

    def __len__(self) -> int:
        return self.n

    def slices(self, dist: Dist = SINGLE) -> list[slice]:
        """This process's chunks, as slices of the whole set."""
        shard = dist.shard(self.n)
        return [slice(shard.start + c.start, shard.start + c.stop)
                for c in chunk_slices(shard.stop - shard.start, self.chunk_size)]

    def batches(self, dist: Dist = SINGLE) -> Iterator:
        for sl in self.slices(dist):
            yield slice_batch(self.inputs, sl), slice_batch(self.targets, sl)

    def head(self, n: int) -> "TensorSource":
        """The first n examples."""
        return TensorSource(slice_batch(self.inputs, slice(0, n)),
                            slice_batch(self.targets, slice(0, n)), self.chunk_size)


class StreamSource:
    """Batches read afresh on every pass: a DataLoader, any re-iterable of batches (a list),
    or a callable returning a new iterator."""

    deterministic = False

    def __init__(self, data):
        if isinstance(data, Iterator):
            raise SharpError(f"{{data}} is a one-pass iterator ({type(data).__name__}), but a "
                             "measurement reads its data many times: give a list, a DataLoader "
                             "or a callable that returns a new iterator", param="data")
        if not isinstance(data, Iterable) and not callable(data):
            raise SharpError("{data} must be a DataLoader, an iterable of batches or a callable "
                             f"returning an iterator, got {type(data).__name__}", param="data")
        self.data = data

    @property
    def shuffled(self) -> bool:
        """A DataLoader that draws a new order on each pass."""
        return isinstance(self.data, DataLoader) and isinstance(self.data.sampler, RandomSampler)

    def _iterate(self) -> Iterator:
        if isinstance(self.data, Iterable):
            return iter(self.data)
        it = self.data()
        if not isinstance(it, Iterable):
            raise SharpError(f"{{data}}() returned a {type(it).__name__}, not an iterator of "
                             "batches", param="data")
        return iter(it)

    def batches(self, dist: Dist = SINGLE) -> Iterator:
        """This process's batches: every W-th from the rank's own, read only where it can be
        (a DataLoader with a batch sampler loads only its share)."""
        if not dist.enabled:
            return self._iterate()
        loader = self.data
        if isinstance(loader, DataLoader) and loader.batch_sampler is not None \
                and not isinstance(loader.dataset, IterableDataset):
            return iter(_sharded_loader(loader, dist))
        return itertools.islice(self._iterate(), dist.rank, None, dist.world_size)


class _EveryWth:
    """A batch sampler's batches r, r + W, r + 2W, …"""

    def __init__(self, batch_sampler, rank: int, world_size: int):
        self.batch_sampler, self.rank, self.world_size = batch_sampler, rank, world_size

    def __iter__(self):
        return itertools.islice(iter(self.batch_sampler), self.rank, None, self.world_size)

    def __len__(self) -> int:
        return len(range(self.rank, len(self.batch_sampler), self.world_size))


def _sharded_loader(loader: DataLoader, dist: Dist) -> DataLoader:
    """The same loader (workers, collate, pinning) over this process's batches only."""
    return DataLoader(loader.dataset, batch_sampler=_EveryWth(loader.batch_sampler, dist.rank,
                                                                dist.world_size),
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory, timeout=loader.timeout,
                      worker_init_fn=loader.worker_init_fn,
                      multiprocessing_context=loader.multiprocessing_context,
                      generator=loader.generator,
                      persistent_workers=loader.persistent_workers)


def default_num_terms(batch) -> int:
    """Examples: the length along dim 0 of the first tensor of the inputs (of the batch, if
    it is not an (inputs, targets) pair)."""
    inputs = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch
    first = first_tensor(inputs)
    if first is None or first.ndim == 0:
        raise SharpError(f"cannot count the examples of a batch {describe(batch)}: give num_terms")
    return len(first)


class Data:
    """The examples a measurement averages over, as this process iterates them: each of its
    batches on the device with its weight num_terms(batch)/T (module docstring).

    `device`: where batches go (None: where they are). `num_terms` counts a batch's loss
    terms (None: examples). `total_terms` is T when known; otherwise one pass counts it.
    `check_deterministic` compares two passes of a stream before its first use. Errors name
    the arguments by their Python names (SharpError.param; the CLI says its flags)."""

    def __init__(self, source: TensorSource | StreamSource, *, num_terms: NumTerms | None = None,
                 total_terms: int | None = None, dist: Dist = SINGLE,
                 device: torch.device | str | None = None, check_deterministic: bool = True):
        self.source, self.num_terms, self.dist = source, num_terms, dist
        self.device = torch.device(device) if device is not None else None
        if num_terms is not None and not callable(num_terms):
            raise SharpError(f"{{num_terms}} must be a callable batch → int, got "
                             f"{type(num_terms).__name__}", param="num_terms")
        if total_terms is not None and (isinstance(total_terms, bool) or not isinstance(total_terms, int)
                                        or total_terms <= 0):
            raise SharpError(f"{{total_terms}} must be a positive integer, got {total_terms!r}",
                             param="total_terms")
        self.check = check_deterministic and not source.deterministic
        if self.check and isinstance(source, StreamSource) and source.shuffled:
            raise SharpError("{data} is a DataLoader with shuffle=True: each pass would see other "
                             "batches; use shuffle=False (or pass {check_deterministic=False} to "
                             "measure anyway)", param=("data", "check_deterministic"))
        if total_terms is not None and num_terms is None and isinstance(source, TensorSource):
            # in-memory examples are counted as examples: a total would be overwritten
            raise SharpError("{total_terms} applies with {num_terms} or a stream of batches; "
                             "in-memory examples are counted as they are",
                             param=("total_terms", "num_terms"))
        self._total = total_terms
        self._counts: list[int] | None = None  # this process's batches' terms, once counted
        if self.default_terms:
            self._total = len(source)
            self._counts = [sl.stop - sl.start for sl in source.slices(dist)]

    @property
    def default_terms(self) -> bool:
        """In-memory examples counted as examples: the weights are known without a pass."""
        return self.num_terms is None and isinstance(self.source, TensorSource)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.source, TensorSource)

    @property
    def total(self) -> int:
        """T, the loss terms of the whole data set (over every process)."""
        if self._total is None or (self.check and self._counts is None):
            self._prepare()
        return self._total

    @property
    def n_batches(self) -> int:
        """This process's batches."""
        if self._counts is None:
            self._prepare()
        return len(self._counts)

    def terms(self, batch) -> int:
        n = (self.num_terms or default_num_terms)(batch)
        if isinstance(n, torch.Tensor) and n.numel() == 1:
            n = n.item()
        if isinstance(n, float) and n.is_integer():
            n = int(n)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise SharpError(f"{{num_terms}} must return a whole number ≥ 0 for each "
                             f"batch, got {n!r}", param="num_terms")
        return n

    def _prepare(self) -> None:
        """One pass to count (and, for a stream, a second to compare with the first);
        every process takes the same decision."""
        counts, prints = [], []
        for batch in self.source.batches(self.dist):
            counts.append(self.terms(batch))
            if self.check:
                prints.append(fingerprint(batch))
        if self.dist.sum(float(len(counts))) == 0:
            raise SharpError("{data} yields no batches", param="data")
        total = int(self.dist.sum(float(sum(counts))))
        if total == 0:
            raise SharpError("{num_terms} counts no loss terms in the whole data set "
                             "(it returned 0 for every batch)", param="num_terms")
        if self.check:
            again = [fingerprint(b) for b in self.source.batches(self.dist)]
            if self.dist.any(again != prints):
                raise SharpError("{data} gives different batches on two passes "
                                 "(shuffling or random augmentation?): a Hessian needs the same data on "
                                 "every pass; fix the order, or pass {check_deterministic=False} "
                                 "to measure anyway", param=("data", "check_deterministic"))
        self._counts = counts
        if self._total is None:
            self._total = total

    def __iter__(self) -> Iterator[tuple[float, Any]]:
        """(num_terms/T, batch on the device) for this process's batches; batches with no
        loss terms are skipped (their mean loss is undefined, and they weigh nothing)."""
        total, counts = self.total, self._counts
        for i, batch in enumerate(_one_ahead(self._moved())):
            terms = counts[i] if counts is not None and i < len(counts) else None
            if terms is None:
                terms = self.terms(batch)
            if terms:
                yield terms / total, batch

    def _moved(self) -> Iterator:
        for batch in self.source.batches(self.dist):
            yield batch if self.device is None else to_device(batch, self.device)

    def first_batch(self):
        """One batch (this process's first, else the data set's first) on the device."""
        for batch in self._moved():
            return batch
        for batch in self.source.batches(SINGLE):
            return batch if self.device is None else to_device(batch, self.device)
        raise SharpError("{data} yields no batches", param="data")


_END = object()


def _one_ahead(items: Iterator) -> Iterator:
    """The items of `items`, each handed out only after the next was taken: its transfer to
    the device is under way while the caller works on this one."""
    current = next(items, _END)
    while current is not _END:
        following = next(items, _END)
        yield current
        current = following


def check_chunk_size(data, y, chunk_size: int | None) -> None:
    """A chunk size given for a stream, which comes in its own batches, is refused: it is
    read for in-memory examples (`data, y`) and map-style Datasets only."""
    if chunk_size is None or y is not None or isinstance(data, torch.Tensor):
        return  # a tensor without y is refused by as_data, with its own message
    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        return
    raise SharpError("{chunk_size} batches in-memory examples ({data}, {y}) and map-style "
                     f"Datasets; {{data}} is a {type(data).__name__}, which comes in its own "
                     "batches", param=("chunk_size", "data", "y"))


def as_data(data, y=None, *, num_terms: NumTerms | None = None, total_terms: int | None = None,
            chunk_size: int = 4096, dist: Dist = SINGLE, device=None,
            check_deterministic: bool = True) -> Data:
    """`data` as Data: a Data as it is; in-memory `data, y` (tensors or structures of them),
    or one `(x, y)` tuple of two tensors given as `data`;
    a map-style Dataset, batched by `chunk_size`; else a stream (DataLoader, list of
    batches, callable returning an iterator)."""
    if y is None and _is_pair(data):  # one (x, y) pair, as the trainer callbacks take it
        data, y = data
    if isinstance(data, Data):
        if y is not None or num_terms is not None or total_terms is not None:
            raise SharpError("{data} is already a Data: give {num_terms} and {total_terms} to it",
                             param=("data", "num_terms", "total_terms"))
        return data
    if y is not None:
        try:
            source = TensorSource(data, y, chunk_size)
        except ValueError as err:
            raise SharpError(f"{{data}}, {{y}}: {err}", param=("data", "y")) from None
    elif isinstance(data, torch.Tensor):
        raise SharpError("{data} is a tensor but {y} is missing: give x and y, or a source of "
                         "(inputs, targets) batches", param=("data", "y"))
    else:
        if isinstance(data, Dataset) and not isinstance(data, (IterableDataset, DataLoader)):
            data = DataLoader(data, batch_size=chunk_size)
        source = StreamSource(data)
    return Data(source, num_terms=num_terms, total_terms=total_terms, dist=dist, device=device,
                check_deterministic=check_deterministic)


def _is_pair(data) -> bool:
    """A tuple of two tensors: one in-memory (x, y), never a stream (a batch of a stream is
    one element of it, and a tensor is no (inputs, targets) batch)."""
    return (isinstance(data, tuple) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data))
