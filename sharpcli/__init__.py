"""sharpcli: the sharpness of neural-network training, from the shell and from notebooks."""

__version__ = "0.1.0"

from sharpcli.checkpoints import load_checkpoint  # noqa: E402

__all__ = ["load_checkpoint", "__version__"]
