"""The examples for a model sharpcli did not build (`--data`): a `.pt` or `.npz` file read
as data only (no pickles), or MODULE:CALLABLE returning a Dataset, a DataLoader or an
iterable of batches (a source of the data layer, sharpcli.sources)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sharpcli.errors import SharpError
from sharpcli.workload.imports import import_object


@dataclass
class UserData:
    """Examples from a --data file: x, y and optionally x_test, y_test, as tensors."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None


def read_data(path: str | Path) -> UserData:
    """A `.pt` file (read with weights_only=True) or an `.npz` file (no pickles) holding x and
    y, optionally x_test and y_test. Integer labels become int64; everything else float."""
    path = Path(path)
    if not path.is_file():
        raise SharpError(f"{{data}} {str(path)!r} does not exist", param="data")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: torch.from_numpy(f[k]) for k in f.files}
        else:
            arrays = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise SharpError(f"{{data}} {path}: not a readable .pt or .npz file ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:160] if str(err) else ''})",
                         param="data") from None
    if not isinstance(arrays, dict) or "x" not in arrays or "y" not in arrays:
        keys = sorted(arrays) if isinstance(arrays, dict) else type(arrays).__name__
        raise SharpError(f"{{data}} {path}: expected arrays named x and y (and optionally x_test, "
                         f"y_test), found {keys}", param="data")
    pairs = [("x", "y"), ("x_test", "y_test")]
    out = []
    for xk, yk in pairs:
        if xk not in arrays or yk not in arrays:
            out += [None, None]
            continue
        x, y = torch.as_tensor(arrays[xk]), torch.as_tensor(arrays[yk])
        if len(x) != len(y):
            raise SharpError(f"{{data}} {path}: {xk} has {len(x)} examples and {yk} {len(y)}",
                             param="data")
        out += [x, y.long() if not y.is_floating_point() else y]
    return UserData(*out)


def is_callable_spec(data: str) -> bool:
    """--data MODULE:CALLABLE rather than a file: a colon, and no file of that name."""
    return ":" in data and not Path(data).exists() and not data.endswith((".pt", ".npz"))


@dataclass
class UserSource:
    """Examples from --data MODULE:CALLABLE: what the callable returned (a Dataset, a
    DataLoader or a re-iterable of batches), or the callable itself where it returns a
    one-pass iterator (it is then called again for every pass)."""

    data: object
    spec: str


def load_user_source(spec: str) -> UserSource:
    make = import_object(spec, "data")
    try:
        made = make()
    except Exception as err:
        raise SharpError(f"{{data}} {spec!r} failed: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}", param="data") from None
    return UserSource(make if isinstance(made, Iterator) else made, spec)
