"""Which torch device a `--device` flag names, checked against this machine."""

from __future__ import annotations

import torch

from sharpcli.errors import SharpError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name: str) -> torch.device:
    """auto: CUDA, else MPS, else the CPU. Anything this machine lacks is a SharpError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SharpError(f"unknown {{device}} {name!r}; expected {DEVICE_CHOICES}",
                         param="device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SharpError(f"{{device={name}}}: CUDA is not available on this machine; use "
                             "{device=cpu}", param="device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SharpError(f"{{device={name}}}: only {torch.cuda.device_count()} CUDA device(s)",
                             param="device")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise SharpError("{device=mps}: MPS is not available on this machine; use {device=cpu}",
                         param="device")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise SharpError(f"unsupported {{device}} {name!r}; expected {DEVICE_CHOICES}",
                         param="device")
    return device
