"""Untrusted checkpoints (docs/reference/formats.md#checkpoints): loading never executes code. Our own checkpoints load with
plain `torch.load(path, weights_only=True)`; each planted file holds a pickle whose unpickling
would run a shell command through os.system, and every way of loading it must refuse it with
a clear error while the command's marker file never appears."""

import json
import os
import pickle
import shlex
import shutil

import pytest
import torch

import sharpcli
from sharpcli.errors import SharpError
from sharpcli.formats.checkpoints import list_checkpoints
from tests.runners import assert_one_line_error, sharp, train_args

# The richest state a checkpoint holds: momentum buffers, the Eigen-SAM vector, the λ₁
# warm start, RNG states; plain GD has a subset of it.
RUNS = {"gd": [],
        "eigen-sam": ["--optimizer", "eigen-sam", "--batch-size", "16", "--momentum", "0.9",
                      "--eig-every", "2"]}
STEPS = ["--steps", "4", "--checkpoint-every", "2", "--sharpness-every", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, flags in RUNS.items():
        assert sharp(*train_args(root, name, *STEPS, *flags)).code == 0
    return root


class RunsCommand:
    """Unpickling this calls os.system("touch MARKER"): the marker appears if it is executed."""

    def __init__(self, marker):
        self.command = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self):
        return (os.system, (self.command,))


def plant_raw_pickle(path, marker, protocol=2):
    """A bare pickle (torch's legacy format) of the malicious object."""
    with open(path, "wb") as f:
        pickle.dump(RunsCommand(marker), f, protocol=protocol)


def plant_raw_pickle_5(path, marker):
    plant_raw_pickle(path, marker, protocol=5)


def plant_in_checkpoint(path, marker):
    """A zip checkpoint that looks like ours, with the malicious object as one of its fields."""
    torch.save({"format": "sharpcli-checkpoint", "version": 1, "step": 4, "epoch": 4.0,
                "config": {}, "model": {"w": RunsCommand(marker)}, "optimizer": {}, "rng": {}},
               path)


# What the refusal says: the function the file asks for (os.system is posix.system), or
# (protocol 5 stops torch's restricted unpickler at its first instruction) that the content
# is unsupported.
PLANTS = {"raw-pickle": (plant_raw_pickle, ["system", "could run code; refused"]),
          "raw-pickle-protocol-5": (plant_raw_pickle_5, ["unsupported pickle content"]),
          "inside-checkpoint": (plant_in_checkpoint, ["system", "could run code; refused"])}


@pytest.fixture(params=PLANTS)
def planted(request, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "ckpts" / "step-00000004.pt"
    path.parent.mkdir()
    plant, says = PLANTS[request.param]
    plant(path, marker)
    assert not marker.exists()
    return path, marker, says


@pytest.mark.parametrize("run", RUNS)
def test_our_checkpoints_load_with_torch_weights_only(runs, run):
    """torch's own restricted unpickler, not only our loader, reads every file we write."""
    paths = list_checkpoints(runs / "checkpoints" / run)
    assert [p.name for p in paths] == ["step-00000000.pt", "step-00000002.pt", "step-00000004.pt"]
    for path in paths:
        raw = torch.load(path, weights_only=True)
        assert raw["format"] == "sharpcli-checkpoint" and raw["step"] == int(path.stem[5:])
        assert {"model", "optimizer", "rng", "config", "epoch", "version", "extra"} <= set(raw)
        model = sharpcli.load_checkpoint(path).model.state_dict()
        assert model.keys() == raw["model"].keys()
        assert all(model[k].equal(raw["model"][k]) for k in model)
    if run == "eigen-sam":  # the state that makes this run the richer one is really there
        assert raw["optimizer"]["state"] and raw["extra"]["top_vectors"] is not None
        assert raw["extra"]["top_vector"] is not None  # v₁ alone, as older readers know it


@pytest.mark.parametrize("plant", [plant_raw_pickle, plant_raw_pickle_5, plant_in_checkpoint])
def test_the_planted_file_is_live(tmp_path, plant):
    """Control: each planted file really runs its command when loaded without care."""
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
    with pytest.raises(SharpError) as err:
        sharpcli.load_checkpoint(path)
    assert str(path) in str(err.value) and all(s in str(err.value) for s in says), err.value
    assert not marker.exists()


def test_spectrum_refuses(planted, tmp_path):
    path, marker, says = planted
    result = sharp("spectrum", path, "--quiet", "--out", tmp_path / "s.csv")
    assert_one_line_error(result, 2, str(path), *says)
    assert not marker.exists()
    assert not (tmp_path / "s.csv").exists()


def copy_with_planted(runs, root, planted_path):
    """A copy of the GD run under root whose config names the copy's checkpoints, with the
    planted file as its newest checkpoint (step 6, after the run's own 0, 2 and 4)."""
    shutil.copytree(runs / "checkpoints" / "gd", root / "checkpoints" / "gd")
    shutil.copytree(runs / "reports" / "gd", root / "reports" / "gd")
    config_json = root / "reports" / "gd" / "config.json"
    config = json.loads(config_json.read_text())
    config.update(reports_dir=str(root / "reports"), checkpoints_dir=str(root / "checkpoints"))
    config_json.write_text(json.dumps(config))
    target = root / "checkpoints" / "gd" / "step-00000006.pt"
    os.replace(planted_path, target)
    return target


def test_resume_refuses(planted, runs, tmp_path):
    """--resume reads the newest checkpoint of the run: a planted one is refused, not run."""
    path, marker, says = planted
    target = copy_with_planted(runs, tmp_path, path)
    assert_one_line_error(sharp(*train_args(tmp_path, "gd", *STEPS, "--resume")), 2,
                          str(target), *says)
    assert not marker.exists()


def test_eos_from_checkpoints_refuses(planted, runs, tmp_path):
    """`sharp eos --from-checkpoints` loads every checkpoint of the run: the planted one too."""
    path, marker, says = planted
    target = copy_with_planted(runs, tmp_path, path)
    assert_one_line_error(sharp("eos", tmp_path / "reports" / "gd", "--from-checkpoints",
                                "--out", tmp_path / "eos.csv"), 2, str(target), *says)
    assert not marker.exists()
