"""What a launcher such as torchrun told this process, read from its environment in this
one place and without importing torch (the CLI needs it before anything else)."""

from __future__ import annotations

import os


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher of its protocol) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_rank() -> int:
    """This process's rank as the launcher set it, before any process group exists: the CLI
    prints an error on rank 0 only, even when it fails before joining one. 0 without one."""
    return _int("RANK")


def env_local_rank() -> int:
    """This process's index on its machine (its GPU under nccl)."""
    return _int("LOCAL_RANK")


def _int(name: str) -> int:
    try:
        return int(os.environ.get(name, "0"))
    except ValueError:
        return 0
