"""sharpcli: the sharpness of neural-network training, from the shell and from notebooks."""

__version__ = "0.1.0"

__all__ = ["load_checkpoint", "__version__"]


def __getattr__(name: str):
    # Lazy: importing torch takes seconds, and `sharp --help` or `sharp summarize` need none.
    if name == "load_checkpoint":
        from sharpcli.formats.checkpoints import load_checkpoint

        return load_checkpoint
    raise AttributeError(f"module 'sharpcli' has no attribute {name!r}")
