"""Ctrl-C and SIGTERM: exit 130 with one line, whatever the process was doing, never a
traceback and never a half-written file.

Two layers. The entry point calls `install()` before anything heavy is imported: from then
on a signal is recorded, and raised (as `Stopped`) only where the CLI catches it: inside
`interruptible(...)`, the command itself, and outside an import. Everywhere else
(start-up, teardown, the interpreter's exit) it waits: the CLI turns a recorded signal into
exit 130 when the command returns. An exception thrown into an import leaves modules half
initialised (numpy recursed in its `__getattr__`, torch's C++ start-up aborted), so a signal
during one is raised again just after it. Loops that can stop at a safe point (training,
spectra) take over with `stop_on_signals()`: a signal sets a flag they poll.
"""

from __future__ import annotations

import _thread
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from sharpcli.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_POLL_SECONDS = 0.005  # how often a signal that came during an import checks it has finished


class Stopped(BaseException):
    """A signal, raised where the command was. Not KeyboardInterrupt: click answers that
    with an extra line on stderr, and CPython, once one has left code that eval() ran from
    a string (typer evaluates annotations so), kills the process by SIGINT at exit whatever
    its exit code. A BaseException, so that no `except Exception` swallows it."""


class _State:
    received: str | None = None  # the first signal's name, since install()
    held: int = 0  # depth of held() sections: signals are recorded, never raised


def _record(signum: int) -> None:
    _State.received = _State.received or signal.Signals(signum).name


def received() -> str | None:
    """The name of the first SIGINT/SIGTERM since the handlers were installed, or None."""
    return _State.received


def interruptible(fn: Callable, *args, **kwargs):
    """fn(*args, **kwargs), during which a signal raises Stopped (the caller catches it):
    the one place the handler may raise."""
    if _State.received:  # it came during start-up, while signals only waited
        raise Stopped
    return fn(*args, **kwargs)


def _raise_here(frame) -> bool | None:
    """Whether the handler, called at `frame`, may raise: True inside interruptible() and
    outside an import, None inside interruptible() but within an import (raise it once the
    import is done), False elsewhere."""
    importing = False
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            importing = True
        elif frame.f_code is interruptible.__code__:
            return None if importing else True
        frame = frame.f_back
    return False


def _handler(signum, frame) -> None:
    _record(signum)
    if _State.held:
        return
    where = _raise_here(frame)
    if where:
        raise Stopped
    if where is None:
        _signal_again_after_the_import(signum)


def _signal_again_after_the_import(signum: int) -> None:
    """Watch the main thread from another one and, once it is out of the import, deliver
    the signal again: the handler then raises where the main thread stands. (A timer would
    mostly land in the next import: start-up is little else.)"""
    main = threading.main_thread().ident

    def watch():
        while True:
            time.sleep(_POLL_SECONDS)
            frame = sys._current_frames().get(main)
            if frame is None:  # the interpreter is exiting
                return
            where = _raise_here(frame)
            if where is not None:
                if where:
                    _thread.interrupt_main(signum)
                return

    threading.Thread(target=watch, name="sharpcli-signal", daemon=True).start()


def install() -> None:
    """Record SIGINT and SIGTERM from now on, for the rest of the process (the entry point
    calls this first): a signal after the command has finished is recorded, not raised, so
    the interpreter's exit cannot be cut short. Only in the main thread."""
    if threading.current_thread() is threading.main_thread():
        _State.received, _State.held = None, 0
        for s in SIGNALS:
            signal.signal(s, _handler)


def installed() -> bool:
    return all(signal.getsignal(s) is _handler for s in SIGNALS)


@contextmanager
def exit_on_signals() -> Iterator[None]:
    """install() for the duration of a command run in-process (tests, notebooks), restoring
    the previous handlers and forgetting the signal afterwards; nothing when the entry point
    installed them already, or off the main thread."""
    if installed() or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    install()
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _State.received, _State.held = None, 0


@contextmanager
def held() -> Iterator[None]:
    """A section no signal interrupts (tearing down the process group): one that arrives
    is recorded, and the CLI exits 130 when the command returns."""
    _State.held += 1
    try:
        yield
    finally:
        _State.held -= 1


class StopRequest:
    def __init__(self) -> None:
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """SIGINT/SIGTERM set `request.signal_name`; a second SIGINT raises KeyboardInterrupt at
    once for the impatient. A request the loop never polled (it came after the last safe
    point, with everything written) raises Interrupted on the way out: exit 130 all the
    same. Outside the main thread, signals are left alone."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        if request.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        request.signal_name = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if request.requested:
        raise Interrupted(f"stopped by {request.signal_name} as the work ended; its output "
                          "is complete")


def check_stop(should_stop: Callable[[], bool] | None, dist=None) -> None:
    """Raise Interrupted if a stop was requested: long computations poll this between
    Hessian-vector products or chunks, so Ctrl-C ends them within one. With `dist` (under
    torchrun) a request to any process stops every process at the same poll."""
    requested = should_stop is not None and should_stop()
    if dist is not None and dist.enabled:
        requested = dist.any(requested)
    if requested:
        raise Interrupted("interrupted")
