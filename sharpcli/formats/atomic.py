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

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class _RememberWriteErrors:
    """The file as `write` sees it, remembering the first OSError a write raised: torch.save
    reports a failed write as a RuntimeError, and we still want to say "disk full"."""

    def __init__(self, f) -> None:
        self._f, self.error = f, None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    target = None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from the group
        with os.fdopen(fd, mode) as f:
            target = _RememberWriteErrors(f)
            write(target)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        _remove_quietly(tmp)
        cause = target.error if target is not None and target.error is not None else err
        if isinstance(cause, OSError) and cause.errno in _DISK_FULL:
            raise SharpError(f"no space left on the device while writing {path}; "
                             f"free some space (or use --keep-last) and --resume") from None
        raise


def atomic_write_json(path: str | Path, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    atomic_write(path, lambda f: f.write(text), mode="w")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
