"""`sharp flow` on a tiny full-batch RMSProp run (it sits at its edge λ₁(P⁻¹H) ≈ 2/η from its
first steps): the flows start from the first checkpoint after step 0 with its optimizer
state, the central flow holds λ₁(P⁻¹H) at 2/η and its predicted loss follows RMSProp's
time-averaged loss more closely than the stable flow's loss or its own L(w); Adam is refused."""

import pytest

from tests.runners import csv_lines, without_column

from sharpcli.analysis.flow import flow_summary
from sharpcli.formats.runs import read_flow
from tests.runners import assert_one_line_error, sharp, train_args

LR = 0.003
STEPS = 30


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("rmsprop-flow")
    sharp(*train_args(root, "rms", "--optimizer", "rmsprop", "--lr", LR, "--steps", STEPS,
                      "--checkpoint-every", 10, "--eval-every", 1, "--sharpness-every", 2)).ok()
    run = root / "reports" / "rms"
    sharp("flow", run, "--substeps", 2, "--quiet").ok()
    return run


def test_rmsprop_flow_holds_the_adaptive_edge_and_predicts_the_loss(run):
    flow = read_flow(run / "flow.csv")
    assert flow["step"].min() == 10 and flow["step"].max() == STEPS
    central = flow[flow["process"] == "central"].set_index("step")
    held = central[central["critical"] > 0]
    assert len(held) >= 10
    # λ₁(P⁻¹H) at 2/η within 1% where critical (its first steps come down onto it), and
    # within 3e-3 (the eigensolver's tolerance, 1e-3, and the refreshes between solves) from
    # the third
    gap = (held["sharpness"] - 2 / LR).abs() * LR / 2
    assert gap.max() < 0.01 and gap.iloc[2:].max() < 3e-3
    later = held.iloc[1:]  # the first row may sit between the threshold and the edge: Σ = 0
    assert (later["sigma_trace"] > 0).all() and (later["predicted_loss"] > later["train_loss"]).all()
    summary = flow_summary(run)
    assert summary.loss_gap < 0.01
    assert summary.loss_gap < summary.own_loss_gap and summary.loss_gap < summary.stable_loss_gap / 2
    assert summary.sharpness["stable"] > 1.2 * 2 / LR  # the stable flow leaves the edge
    assert summary.distance["central"][1] < summary.distance["stable"][1] / 2


def test_resume_keeps_nu(run, tmp_path):
    """Stopped at step 20 and resumed to 30: the rows of the uninterrupted flow (ν is in
    flow-state.pt)."""
    out = tmp_path / "flow"
    sharp("flow", run, "--substeps", 2, "--quiet", "--out", out, "--steps", 20).ok()
    sharp("flow", run, "--substeps", 2, "--quiet", "--out", out, "--steps", STEPS, "--resume").ok()
    for name in ("flow.csv", "flow-sigma.csv"):
        resumed, expected = csv_lines(out / name), csv_lines(run / name)
        if name == "flow.csv":
            resumed, expected = (without_column(x, "seconds") for x in (resumed, expected))
        assert resumed == expected, name


def test_start_and_adam(run, tmp_path):
    assert_one_line_error(sharp("flow", run, "--start", 5, "--quiet"), 2, "step-00000005.pt")
    assert_one_line_error(sharp("flow", run, "--steps", 5, "--quiet"), 2, "--steps 5", "step 10")
    sharp(*train_args(tmp_path, "adam", "--optimizer", "adam", "--steps", 2)).ok()
    assert_one_line_error(sharp("flow", tmp_path / "reports" / "adam", "--quiet"), 2,
                          "no central flow for adam")


TRACKER_MODULE = '''
import torch
from torch import nn


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))
'''


def tracker_rmsprop_run(tmp_path, monkeypatch, checkpoint_every):
    """A hand-written full-batch RMSProp loop measured by sharpcli.Tracker (MSE, η = 0.01:
    λ₁(P⁻¹H) passes 2/η = 200 within a few steps), 9 steps; its model factory and data."""
    import torch

    import sharpcli
    (tmp_path / "rmsmodels.py").write_text(TRACKER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    from rmsmodels import mlp
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 5, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    torch.save({"x": x, "y": y}, tmp_path / "data.pt")
    model = mlp()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.01)
    run = tmp_path / "reports" / "loop"
    with sharpcli.Tracker(model, "mse", x, y, optimizer=opt, run_dir=run, every=1,
                          checkpoint_every=checkpoint_every) as tracker:
        for step in range(9):
            opt.zero_grad()
            loss = 0.5 * ((model(x) - torch.nn.functional.one_hot(y, 3).float()) ** 2).sum(1).mean()
            loss.backward()
            tracker.step(step)
            opt.step()
    return run, ["--model-factory", "rmsmodels:mlp", "--data", tmp_path / "data.pt"]


def test_a_tracker_rmsprop_run(tmp_path, monkeypatch):
    """The Tracker records torch's RMSprop (alpha, eps) and saves its state with each
    checkpoint, so `sharp flow` takes the run as it takes `sharp train`'s: from the first
    checkpoint after step 0 with the ν saved there, λ₁(P⁻¹H) held at 2/η."""
    run, source = tracker_rmsprop_run(tmp_path, monkeypatch, checkpoint_every=4)
    sharp("flow", run, *source, "--substeps", 2, "--quiet").ok()
    central = read_flow(run / "flow.csv").query("process == 'central'").set_index("step")
    assert central.index.min() == 4 and central.index.max() == 8
    held = central[central["sigma_trace"] > 0]
    assert len(held) >= 2
    assert ((held["sharpness"] - 200).abs() / 200).max() < 0.01  # 2/η, λ₁(P⁻¹H)
    assert 0 < central.loc[8, "distance"] < central.loc[8, "train_loss"]  # w_RMSProp known there


def test_a_tracker_rmsprop_run_without_checkpoints(tmp_path, monkeypatch):
    """Without checkpoint_every the Tracker saves no weights and no ν: the flows have no
    start, and say so in one line."""
    run, source = tracker_rmsprop_run(tmp_path, monkeypatch, checkpoint_every=None)
    assert_one_line_error(sharp("flow", run, *source, "--quiet"), 2, "no checkpoints")
