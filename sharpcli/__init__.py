"""sharpcli: the sharpness of neural-network training, from the shell and from notebooks."""

__version__ = "0.1.0"
