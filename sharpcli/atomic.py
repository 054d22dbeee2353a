"""Writes that never leave a half-written file behind: temp file in the same folder,
flush, fsync, rename. A full disk becomes a SharpError, not a corrupt file."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from sharpcli.errors import SharpError


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        _remove_quietly(tmp)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise SharpError(f"no space left on the device while writing {path}; "
                             f"free some space (or use --keep-last) and --resume") from None
        raise
    except BaseException:
        _remove_quietly(tmp)
        raise


def atomic_write_json(path: str | Path, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda f: f.write(text), mode="w")


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
