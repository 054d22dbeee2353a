"""Ctrl-C and SIGTERM as a request to stop at the next safe point, so that a long job
saves what it has done instead of dying mid-write."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from sharpcli.errors import Interrupted


class StopRequest:
    def __init__(self) -> None:
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """SIGINT/SIGTERM set `request.signal_name`; a second SIGINT raises KeyboardInterrupt at
    once for the impatient. Outside the main thread, signals are left alone."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        if request.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request.signal_name = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def check_stop(should_stop: Callable[[], bool] | None, dist=None) -> None:
    """Raise Interrupted if a stop was requested: long computations poll this between
    Hessian-vector products or chunks, so Ctrl-C ends them within one. With `dist` (under
    torchrun) a request to any process stops every process at the same poll."""
    requested = should_stop is not None and should_stop()
    if dist is not None and dist.enabled:
        requested = dist.any(requested)
    if requested:
        raise Interrupted("interrupted")
