"""Untrusted checkpoints (SPEC §6): loading never executes code. Each planted file holds a
pickle whose unpickling would create a marker file; every way of loading it must refuse it
with a clear error, and the marker must never appear."""

import os
import pickle

import pytest
import torch

import sharpcli
from sharpcli.errors import SharpError
from tests.runners import assert_one_line_error, sharp, train_args


class CreatesFile:
    """Unpickling this calls open(path, "w"): the file appears if the pickle is executed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def plant_raw_pickle(path, marker, protocol=2):
    """A bare pickle (torch's legacy format) of the malicious object."""
    with open(path, "wb") as f:
        pickle.dump(CreatesFile(marker), f, protocol=protocol)


def plant_raw_pickle_5(path, marker):
    plant_raw_pickle(path, marker, protocol=5)


def plant_in_checkpoint(path, marker):
    """A zip checkpoint that looks like ours, with the malicious object as one of its fields."""
    torch.save({"format": "sharpcli-checkpoint", "version": 1, "step": 4, "epoch": 4.0,
                "config": {}, "model": {"w": CreatesFile(marker)}, "optimizer": {}, "rng": {}},
               path)


# What the refusal says: the object the file asks for, or (protocol 5 stops torch's
# restricted unpickler at its first instruction) that the content is unsupported.
PLANTS = {"raw-pickle": (plant_raw_pickle, "could run code; refused"),
          "raw-pickle-protocol-5": (plant_raw_pickle_5, "unsupported pickle content"),
          "inside-checkpoint": (plant_in_checkpoint, "could run code; refused")}


@pytest.fixture(params=PLANTS)
def planted(request, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "ckpts" / "step-00000004.pt"
    path.parent.mkdir()
    plant, says = PLANTS[request.param]
    plant(path, marker)
    assert not marker.exists()
    return path, marker, says


@pytest.mark.parametrize("plant", [plant_raw_pickle, plant_raw_pickle_5, plant_in_checkpoint])
def test_the_planted_file_is_live(tmp_path, plant):
    """Control: each planted file really creates its marker when loaded without care."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    plant(path, marker)
    try:
        torch.load(path, weights_only=False)
    except RuntimeError:  # a bare pickle is not torch's format: it fails, after running
        pass
    assert marker.exists()


def test_load_checkpoint_refuses(planted):
    path, marker, says = planted
    with pytest.raises(SharpError, match=says):
        sharpcli.load_checkpoint(path)
    assert not marker.exists()


def test_spectrum_refuses(planted, tmp_path):
    path, marker, says = planted
    result = sharp("spectrum", path, "--quiet", "--out", tmp_path / "s.csv")
    assert_one_line_error(result, 2, str(path), says)
    assert not marker.exists()
    assert not (tmp_path / "s.csv").exists()


def test_resume_refuses(planted, tmp_path):
    """--resume reads the newest checkpoint of the run: a planted one is refused, not run."""
    path, marker, says = planted
    args = train_args(tmp_path, "r", "--steps", "4", "--checkpoint-every", "2")
    assert sharp(*args).code == 0
    target = tmp_path / "checkpoints" / "r" / "step-00000006.pt"  # newer than the run's own
    os.replace(path, target)
    assert_one_line_error(sharp(*args, "--resume"), 2, str(target), says)
    assert not marker.exists()
