"""The one small training every integration test repeats: full-batch GD with momentum on 32
examples (a tanh MLP, MSE, float64), measured every 5 of 30 steps — by a plain loop around
sharpcli.Tracker (the reference), by Lightning and by the Hugging Face Trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

import torch
from torch import nn

import sharpcli
from sharpcli.hessian.losses import mse_loss

N, STEPS, EVERY, LR, MOMENTUM = 32, 30, 5, 0.2, 0.9
ADAM_LR = 0.01  # AdamW's η where a test trains with it (the HF Trainer's default rule)
ROOT = Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT = 300  # seconds, a whole 2-process launch of a trainer
TOL = 1e-10  # λ₁ converged far below the 1e-6 of the comparisons
COMPARED = ("step", "lr", "grad_norm", "sharpness", "gd_edge", "train_loss")


def examples() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (N,), generator=g)
    return x, y


def mlp() -> nn.Module:
    """6 → 8 → 3, tanh: 83 parameters, the same weights on every call."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def plain_loop(run_dir, model: nn.Module | None = None, adamw_lr: float | None = None) -> list[dict]:
    """The reference: `STEPS` full-batch updates, the Tracker's rows at w_t before update t
    for t < STEPS (a trainer does not measure the weights after its last update); AdamW at
    `adamw_lr` instead of SGD with momentum when given."""
    model = model or mlp()
    x, y = examples()
    opt = (torch.optim.AdamW(model.parameters(), lr=adamw_lr) if adamw_lr is not None else
           torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM))
    with sharpcli.Tracker(model, mse_loss, x, y, optimizer=opt, run_dir=run_dir, every=EVERY,
                          tol=TOL) as tracker:
        for step in range(STEPS):
            opt.zero_grad()
            mse_loss(model(x), y).backward()
            tracker.step(step)
            opt.step()
    return tracker.rows


def assert_same_rows(rows: list[dict], reference: list[dict], rel: float = 1e-6,
                     phase: str = "gd") -> None:
    assert [r["step"] for r in rows] == [r["step"] for r in reference] == list(range(0, STEPS, EVERY))
    for row, ref in zip(rows, reference):
        for key in COMPARED:
            assert abs(row[key] - ref[key]) <= rel * abs(ref[key]), (key, row, ref)
        assert row["phase"] == ref["phase"] == phase and row["sharpness_converged"] == 1


def write_shard(root: Path, tracker) -> None:
    """Under torchrun: which examples this process measured, for the test to check."""
    shard = tracker.data.dist.shard(len(tracker.data.source))
    (root / f"rank{tracker.dist.rank}.json").write_text(
        json.dumps({"world_size": tracker.dist.world_size, "shard": [shard.start, shard.stop]}))


def assert_two_processes_log_the_same(module: str, root: Path, runs: dict) -> None:
    """`module` launched by torchrun on 2 CPU processes (gloo) into `root`: each measured its
    half of the 32 examples, and rank 0's metrics.csv in each of `runs` (folder name → the
    1-process callback) holds the 1-process rows."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", module, str(root)]
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                            timeout=LAUNCH_TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    shards = [json.loads((root / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert shards == [{"world_size": 2, "shard": [0, 16]}, {"world_size": 2, "shard": [16, 32]}]
    for name, callback in runs.items():
        rows = pd.read_csv(root / name / "metrics.csv").to_dict("records")
        assert_same_rows(rows, callback.rows)
