"""Checkpoint files (docs/reference/formats.md#checkpoints): plain tensors, numbers, strings, lists and dicts, loaded with
`weights_only=True` so that an untrusted file can never execute code."""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from sharpcli.formats.atomic import atomic_write
from sharpcli.errors import SharpError

CHECKPOINT_FORMAT = "sharpcli-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("format", "version", "step", "epoch", "config", "model", "optimizer", "rng")
_NAME = re.compile(r"^step-(\d{8})\.pt$")


def checkpoint_path(checkpoint_dir: str | Path, step: int) -> Path:
    return Path(checkpoint_dir) / f"step-{step:08d}.pt"


def list_checkpoints(checkpoint_dir: str | Path) -> list[Path]:
    """The run's checkpoint files in step order."""
    d = Path(checkpoint_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, *, step: int, epoch: float, config: dict, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None, extra: dict | None = None) -> Path:
    """Write atomically; `extra` carries the training loop's own state (tensors and numbers)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": int(step),
        "epoch": float(epoch),
        "config": config,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "rng": rng_state(),
        "extra": extra or {},
    }
    atomic_write(path, lambda f: torch.save(payload, f))
    return Path(path)


def read_checkpoint(path: str | Path) -> dict:
    """The validated payload of a checkpoint file, tensors on the CPU; never runs code."""
    path = Path(path)
    payload = load_payload(path)
    check_payload(payload, path)
    return payload


def load_payload(path: Path):
    """Whatever a .pt file holds, read with weights_only=True (tensors on the CPU), its zip
    checksums checked; a file that is unreadable or asks for code is one SharpError."""
    if not path.exists():
        raise SharpError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise SharpError(f"{path} is a folder, not a checkpoint file")
    _check_zip_checksums(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise SharpError(_refusal(path, str(err))) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise SharpError(f"{path} is not a readable checkpoint (truncated or corrupted?): "
                         f"{type(err).__name__}") from None
    except Exception as err:  # torch raises assorted types on garbage input
        raise SharpError(f"{path} is not a readable checkpoint: {type(err).__name__}") from None
    return payload


def check_payload(payload, path: Path) -> None:
    """A SharpError unless `payload` (as loaded) is a complete sharpcli checkpoint this
    version can read."""
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise SharpError(f"{path} is not a sharpcli checkpoint (no format={CHECKPOINT_FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise SharpError(f"{path} is an incomplete sharpcli checkpoint: missing {missing}")
    wrong = [k for k, kind in _KINDS.items() if not isinstance(payload[k], kind)]
    if wrong:
        raise SharpError(f"{path} is a damaged sharpcli checkpoint: {', '.join(wrong)} "
                         f"{'has' if len(wrong) == 1 else 'have'} the wrong type")
    if payload["version"] > CHECKPOINT_VERSION:
        raise SharpError(f"{path} has checkpoint version {payload['version']}; this sharpcli reads "
                         f"up to {CHECKPOINT_VERSION}: upgrade sharpcli")


# The type each field must have, so that a file with the right keys but the wrong contents
# is an error here rather than a traceback later.
_KINDS = {"version": int, "step": int, "epoch": (int, float), "config": dict, "model": dict,
          "optimizer": dict, "rng": dict}


def _check_zip_checksums(path: Path) -> None:
    """torch.load does not check the CRC-32 that torch.save writes for every entry of the zip,
    so a damaged file could load as plausible garbage; reading it once here (fast next to
    loading) catches that. Files that are not zips are left to torch.load to reject."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except Exception as err:  # zipfile raises assorted types on damaged headers
        raise SharpError(f"{path} is not a readable checkpoint (truncated or corrupted?): "
                         f"{type(err).__name__}") from None
    if damaged is not None:
        raise SharpError(f"{path} is a corrupted checkpoint: its contents fail their "
                         f"checksum (damaged on disk or in transfer)")


def _refusal(path: Path, message: str) -> str:
    """One line from torch's long weights_only explanation: the Python objects the file asked
    for (loading those could run code), or else what the unpickler could not read."""
    names = re.findall(r"GLOBAL ([\w.]+)", message)
    if names:
        return (f"{path} is not a sharpcli checkpoint: loading it would call "
                f"{', '.join(dict.fromkeys(names))}, which could run code; refused")
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", message)
    return (f"{path} is not a readable checkpoint: unsupported pickle content"
            + (f" ({detail.group(1).strip()})" if detail else ""))
