"""sharpcli: the sharpness of neural-network training, from the shell and from notebooks."""

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["Tracker", "flow", "load_checkpoint", "spectrum", "__version__"]

if TYPE_CHECKING:  # for type checkers and the API reference; imported on first use at run time
    from sharpcli.flows.api import flow
    from sharpcli.spectra.api import spectrum
    from sharpcli.training.tracker import Tracker
    from sharpcli.workload.rebuild import load_checkpoint

# Lazy: importing torch takes seconds, and `sharp --help` or `sharp summarize` need none.
_EXPORTS = {"load_checkpoint": "sharpcli.workload.rebuild", "Tracker": "sharpcli.training.tracker",
            "spectrum": "sharpcli.spectra.api", "flow": "sharpcli.flows.api"}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sharpcli' has no attribute {name!r}")
