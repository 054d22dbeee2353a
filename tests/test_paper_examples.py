"""examples/paper_*.sh in their smoke mode (SMOKE=1), end to end on random CIFAR-shaped files
in CIFAR's format: every command of each batch runs and the summary has its groups. One seed
for the CIFAR batches (their networks cost seconds a run here), all three for Cohen's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.fakes import write_cifar
from tests.script_server import sharp_server

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# script -> (recipe, SEEDS, the runs it makes, the optimizers of its summary's groups)
BATCHES = {
    "paper_eigensam.sh": ("eigensam-cifar100-resnet18", "0",
                          ["sgd-seed0", "sam-seed0", "eigen-sam-seed0"], ["eigen-sam", "sam", "sgd"]),
    "paper_sam.sh": ("sam-cifar10-wrn28-10", "0", ["sgd-seed0", "sam-seed0"], ["sam", "sgd"]),
    "paper_late_sam.sh": ("late-sam-cifar10-resnet18", "0",
                          ["sgd-seed0", "sam-seed0", "late-sam-seed0"], ["sam", "sam", "sgd"]),
    "paper_cohen.sh": ("cohen-cifar5k-fc-tanh", "0 1 2",
                       [f"gd-lr{lr}-seed{s}" for s in range(3) for lr in ("0.01", "0.02", "0.04")],
                       None),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    write_cifar(root / "data", "cifar10", 512, 128)
    write_cifar(root / "data", "cifar100", 512, 128)
    with sharp_server(root) as env:
        yield root, env


@pytest.mark.parametrize("script", BATCHES)
def test_paper_batch_runs_in_smoke_mode(server, script):
    root, env = server
    recipe, seeds, runs, optimizers = BATCHES[script]
    out = root / script.removesuffix(".sh")
    result = subprocess.run(["bash", str(EXAMPLES / script)], cwd=root, capture_output=True,
                            text=True, timeout=600,
                            env=dict(env, SMOKE="1", SEEDS=seeds, DATA_DIR=str(root / "data"),
                                     OUT=str(out)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (out / "reports").iterdir()) == sorted(runs)
    for run in runs:
        config = json.loads((out / "reports" / run / "config.json").read_text())
        assert config["recipe"] == recipe and config["train_size"] == 512
    summary = pd.read_csv(out / "summary.csv")
    if script == "paper_cohen.sh":  # one optimizer: the groups differ by their step size
        assert sorted(summary["lr"]) == [0.01, 0.02, 0.04]
    else:
        assert sorted(summary["optimizer"]) == optimizers
    assert (summary["n_seeds"] == len(seeds.split())).all()
    assert "| n |" in result.stdout  # the markdown table
    if script == "paper_late_sam.sh":  # SGD up to the switch at step 4, SAM after it
        phases = pd.read_csv(out / "reports" / "late-sam-seed0" / "metrics.csv")["phase"]
        assert list(phases) == ["sgd", "sam"]
