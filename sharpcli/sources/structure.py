"""Batches as PyTorch code holds them: a tensor, or any nested tuple, list, dict, `UserDict`
or Hugging Face `BatchEncoding` of tensors.

torch's pytree walks tuples, lists and dicts (ModelOutput registers itself), but takes a
`UserDict` — and so a `BatchEncoding` — for a leaf; `plain` turns those into dicts first,
so that every function here sees every tensor of a batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.utils._pytree as pytree

_PREVIEW = 160  # characters of a batch's description in an error


def _foreign_mapping(obj) -> bool:
    return isinstance(obj, Mapping) and not isinstance(obj, dict)


def _plain_node(obj):
    return plain(dict(obj)) if _foreign_mapping(obj) else obj


def plain(tree):
    """`tree` with every non-dict Mapping (UserDict, BatchEncoding) made a dict, at any depth."""
    return pytree.tree_map(_plain_node, tree, is_leaf=_foreign_mapping)


def tensors(tree) -> list[torch.Tensor]:
    """The tensors of a batch, in pytree order."""
    return [t for t in pytree.tree_leaves(plain(tree)) if isinstance(t, torch.Tensor)]


def first_tensor(tree) -> torch.Tensor | None:
    found = tensors(tree)
    return found[0] if found else None


def to_device(tree, device: torch.device | str, dtype: torch.dtype | None = None):
    """The batch on `device`, each tensor copied at most once. A copy from pinned host memory
    is asynchronous (non_blocking), so the transfer of the next batch overlaps the work on
    this one. With `dtype`, floating tensors are cast to it (integer ones, such as token ids
    and labels, never are)."""
    device = torch.device(device)

    def move(t: torch.Tensor) -> torch.Tensor:
        cast = dtype if dtype is not None and t.is_floating_point() else t.dtype
        if t.device == device and t.dtype == cast:
            return t
        return t.to(device=device, dtype=cast, non_blocking=t.device.type == "cpu" and t.is_pinned())

    return pytree.tree_map_only(torch.Tensor, move, plain(tree))


def describe(tree) -> str:
    """A short picture of a batch's structure for error messages:
    "{'input_ids': Tensor(4, 9) int64, 'labels': Tensor(4, 9) int64}"."""
    text = repr(pytree.tree_map_only(torch.Tensor, _Shape, plain(tree)))
    return text if len(text) <= _PREVIEW else text[:_PREVIEW - 1] + "…"


class _Shape:
    def __init__(self, t: torch.Tensor):
        self.text = f"Tensor{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"

    def __repr__(self) -> str:
        return self.text


def fingerprint(tree) -> tuple:
    """What tells two batches apart cheaply: each tensor's shape and dtype, its sum and a sum
    weighted by position (so a reordering within the batch shows too). Two passes over a
    deterministic source give equal fingerprints; shuffling or random augmentation does not."""
    leaves = tensors(tree)
    shapes = tuple((tuple(t.shape), t.dtype) for t in leaves)
    sums = []
    for t in leaves:
        flat = t.detach().reshape(-1).double()
        ramp = torch.arange(flat.numel(), device=flat.device, dtype=torch.float64) % 97 + 1
        sums += [flat.sum(), (flat * ramp).sum()]
    return shapes, tuple(torch.stack(sums).tolist()) if sums else ()


def slice_batch(tree, sl: slice):
    """Examples `sl` (along dim 0) of every tensor of an in-memory batch."""
    if isinstance(tree, torch.Tensor):  # the common case, without the tree walk
        return tree[sl]
    return pytree.tree_map_only(torch.Tensor, lambda t: t[sl], tree)
