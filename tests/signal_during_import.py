"""`python -m sharpcli ARGS...` that sends itself SIGTERM as MODULE starts to import: a
signal at a known moment of start-up, for tests/test_interrupt.py.

    python tests/signal_during_import.py MODULE ARGS...
"""

import os
import runpy
import signal
import sys


class SignalOnImport:
    """A finder that finds nothing: it only sends the signal when asked for `module`."""

    def __init__(self, module: str):
        self.module = module

    def find_spec(self, name, path=None, target=None):
        if name == self.module:
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGTERM)
        return None


sys.meta_path.insert(0, SignalOnImport(sys.argv.pop(1)))
runpy.run_module("sharpcli", run_name="__main__", alter_sys=True)
