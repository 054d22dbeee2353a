"""The one small training every integration test repeats: full-batch GD with momentum on 32
examples (a tanh MLP, MSE, float64), measured every 5 of 30 steps — by a plain loop around
sharpcli.Tracker (the reference), by Lightning and by the Hugging Face Trainer."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import sharpcli
from sharpcli.hessian.losses import mse_loss

N, STEPS, EVERY, LR, MOMENTUM = 32, 30, 5, 0.2, 0.9
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


def plain_loop(run_dir, model: nn.Module | None = None) -> list[dict]:
    """The reference: `STEPS` full-batch updates, the Tracker's rows at w_t before update t
    for t < STEPS (a trainer does not measure the weights after its last update)."""
    model = model or mlp()
    x, y = examples()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    with sharpcli.Tracker(model, mse_loss, x, y, optimizer=opt, run_dir=run_dir, every=EVERY,
                          tol=TOL) as tracker:
        for step in range(STEPS):
            opt.zero_grad()
            mse_loss(model(x), y).backward()
            tracker.step(step)
            opt.step()
    return tracker.rows


def assert_same_rows(rows: list[dict], reference: list[dict], rel: float = 1e-6) -> None:
    assert [r["step"] for r in rows] == [r["step"] for r in reference] == list(range(0, STEPS, EVERY))
    for row, ref in zip(rows, reference):
        for key in COMPARED:
            assert abs(row[key] - ref[key]) <= rel * abs(ref[key]), (key, row, ref)
        assert row["phase"] == ref["phase"] == "gd" and row["sharpness_converged"] == 1
