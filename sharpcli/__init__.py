"""sharpcli: the sharpness of neural-network training, from the shell and from notebooks."""

from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["Tracker", "density", "eigs", "flow", "hessian", "load_checkpoint", "spectrum",
           "trace", "__version__"]

if TYPE_CHECKING:  # for type checkers and the API reference; imported on first use at run time
    from sharpcli.flows.api import flow
    from sharpcli.hessian.api import hessian
    from sharpcli.linalg.api import density, eigs, trace
    from sharpcli.spectra.api import spectrum
    from sharpcli.training.tracker import Tracker
    from sharpcli.workload.rebuild import load_checkpoint

# Lazy: importing torch takes seconds, and `sharp --help` or `sharp summarize` need none.
_EXPORTS = {"load_checkpoint": "sharpcli.workload.rebuild", "Tracker": "sharpcli.training.tracker",
            "spectrum": "sharpcli.spectra.api", "flow": "sharpcli.flows.api",
            "eigs": "sharpcli.linalg.api",
            "trace": "sharpcli.linalg.api", "density": "sharpcli.linalg.api"}


def __getattr__(name: str):
    import importlib

    if name == "hessian":  # the package sharpcli.hessian, callable as the function (its __init__)
        return importlib.import_module("sharpcli.hessian")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sharpcli' has no attribute {name!r}")
