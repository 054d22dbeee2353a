"""`sharp flow` end to end on a tiny full-batch GD run that reaches the edge: the files and
their columns, the central flow held at 2/η, distances at the checkpoints, Ctrl-C (exit 130,
rows and state kept) and --resume (the uninterrupted rows exactly), the refusals, the Python
API, and flow.png."""

import signal

import numpy as np
import pandas as pd
import pytest

import sharpcli
import sharpcli.flows.run
from sharpcli.hessian.losses import mse_loss
from sharpcli.formats.runs import read_flow
from sharpcli.formats.schema import FLOW_COLUMNS, FLOW_EIGENVALUE_COLUMNS
from tests.runners import (assert_one_line_error, csv_lines, sharp, train_args,
                           without_column)

LR = 0.6  # λ₁ starts at 2.8 < 2/η = 3.33; the central flow reaches the edge at step ~18
STEPS = 26
FLOW = ["--steps", STEPS, "--substeps", 2, "--quiet"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow")
    sharp(*train_args(root, "gd", "--width", 16, "--steps", 30, "--lr", LR, "--checkpoint-every", 10,
                      "--eval-every", 1, "--sharpness-every", 2)).ok()
    sharp("flow", root / "reports" / "gd", *FLOW).ok()
    return root


def test_rows_columns_and_the_edge(root):
    run = root / "reports" / "gd"
    assert csv_lines(run / "flow.csv")[0] == ",".join(FLOW_COLUMNS)
    assert csv_lines(run / "flow_eigenvalues.csv")[0] == ",".join(FLOW_EIGENVALUE_COLUMNS)
    flow = read_flow(run / "flow.csv")
    assert list(flow["step"]) == [t for t in range(STEPS + 1) for _ in range(2)]
    assert list(flow["process"][:2]) == ["central", "stable"]
    central = flow[flow["process"] == "central"].set_index("step")
    stable = flow[flow["process"] == "stable"].set_index("step")
    held = central[central["critical"] > 0]
    assert len(held) >= 3, "the flow must reach the edge within the test's steps"
    # from the substep after it first meets the threshold, λ₁ sits at 2/η
    assert (held["sharpness"].iloc[1:] - 2 / LR).abs().max() < 1e-3 * 2 / LR
    assert (held["sigma_trace"] > 0).all() and (held["n_third"] > 0).all()
    assert (held["predicted_loss"] > held["train_loss"]).all()
    assert stable["sharpness"].iloc[-1] > 2 / LR and (stable["critical"] == 0).all()
    # ‖w − w_GD‖ at the run's checkpoints 0, 10, 20 and nowhere else; 0 at the start
    assert list(central.index[central["distance"].notna()]) == [0, 10, 20]
    assert central.loc[0, "distance"] == stable.loc[0, "distance"] == 0
    assert central.loc[STEPS, "substeps"] == 0 and central.loc[0, "substeps"] == 2
    sigma = pd.read_csv(run / "flow-sigma.csv")  # Σ's eigenvalues where critical; no
    assert list(sigma.columns) == ["step", "index", "sigma2", "displacement2"]  # dense checkpoints
    assert sigma.groupby("step")["index"].max().to_dict() == {
        t: c for t, c in held["critical"].items()} and sigma["displacement2"].isna().all()
    assert np.allclose(sigma.groupby("step")["sigma2"].sum(), held["sigma_trace"], rtol=1e-6)
    eig = pd.read_csv(run / "flow_eigenvalues.csv")
    assert eig.groupby(["step", "process"])["index"].max().min() >= 2


def test_interrupt_keeps_rows_and_resume_reaches_the_same_rows(root, tmp_path, monkeypatch):
    run = root / "reports" / "gd"
    real, calls = sharpcli.flows.run.stable_step, []

    def signal_at_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 13:  # during step 12: the loop stops before step 13
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(sharpcli.flows.run, "stable_step", signal_at_step)
    out = tmp_path / "flow"
    result = sharp("flow", run, *FLOW, "--out", out, "--save-every", 5)
    assert_one_line_error(result, 130, "interrupted at step 13", "--resume")
    assert csv_lines(out / "flow.csv")[-1].startswith("12,stable,")
    monkeypatch.setattr(sharpcli.flows.run, "stable_step", real)
    sharp("flow", run, *FLOW, "--out", out, "--resume").ok()
    for name in ("flow.csv", "flow_eigenvalues.csv"):
        resumed, expected = csv_lines(out / name), csv_lines(run / name)
        if name == "flow.csv":
            resumed, expected = (without_column(x, "seconds") for x in (resumed, expected))
        assert resumed == expected, name
    result = sharp("flow", run, *FLOW, "--out", out, "--resume", "--substeps", 3)
    assert_one_line_error(result, 2, "substeps", "without --resume")


def test_python_api_returns_the_rows(root):
    rows = sharpcli.flow(root / "reports" / "gd", steps=4, substeps=2)
    assert len(rows) == 10 and rows[-1]["substeps"] == 0  # step 4 is measured, not integrated
    expected = read_flow(root / "reports" / "gd" / "flow.csv").head(8)
    got = pd.DataFrame(rows).head(8)
    for col in ("step", "train_loss", "predicted_loss", "sharpness", "critical", "n_hvp"):
        assert list(got[col]) == list(expected[col]), col
    with pytest.raises(sharpcli.errors.SharpError, match="substeps must be positive"):
        sharpcli.flow(root / "reports" / "gd", substeps=0)


def test_plot_draws_flow_png(root):
    result = sharp("plot", root / "reports" / "gd", "--only", "flow").ok()
    assert (root / "reports" / "gd" / "flow.png").is_file() and "flow.png" in result.stdout


def test_summary(root):
    from sharpcli.analysis.flow import flow_summary
    summary = flow_summary(root / "reports" / "gd")
    assert summary.edge_step is not None and summary.loss_gap is not None
    assert abs(summary.sharpness["central"] - 2 / LR) < 1e-3 * 2 / LR
    assert summary.n_checkpoints >= 1
    assert any("median relative gap" in line for line in summary.lines())


@pytest.mark.parametrize("flags, words", [
    (["--optimizer", "sgd", "--batch-size", 16], ["full-batch gradient descent",
                                                  "optimizer sgd with batches of 16"]),
    (["--momentum", 0.9], ["momentum 0.9"]),
    (["--optimizer", "sam"], ["optimizer sam"]),
])
def test_other_runs_are_refused(tmp_path, flags, words):
    sharp(*train_args(tmp_path, "other", "--steps", 2, *flags)).ok()
    assert_one_line_error(sharp("flow", tmp_path / "reports" / "other", "--quiet"), 2, *words)


def test_bad_flags(root):
    run = root / "reports" / "gd"
    assert_one_line_error(sharp("flow", run, "--threshold", 2.5), 2, "--threshold")
    assert_one_line_error(sharp("flow", run, "--sdcp", "mosek"), 2, "--sdcp")
    assert_one_line_error(sharp("flow", root / "reports" / "nothing"), 2, "does not exist")


USER_MODULE = '''
import torch
from torch import nn


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
'''


def test_a_tracker_run_with_model_factory(tmp_path, monkeypatch):
    """A hand-written GD loop measured by sharpcli.Tracker: the flow needs the model's factory
    and the data; the CLI and the Python API give the same rows."""
    import torch
    (tmp_path / "flowmodels.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    from flowmodels import mlp
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 5, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    torch.save({"x": x, "y": y}, tmp_path / "data.pt")
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss_fn = mse_loss
    run = tmp_path / "reports" / "loop"
    with sharpcli.Tracker(model, loss_fn, x, y, optimizer=opt, run_dir=run, every=2,
                          checkpoint_every=4) as tracker:
        for step in range(9):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            tracker.step(step)
            opt.step()
    assert_one_line_error(sharp("flow", run, "--quiet"), 2, "--model-factory")
    sharp("flow", run, "--model-factory", "flowmodels:mlp", "--data", tmp_path / "data.pt",
          "--quiet").ok()
    flow = read_flow(run / "flow.csv")
    assert flow["step"].max() == 8
    assert list(flow.loc[flow["distance"].notna(), "step"].unique()) == [0, 4, 8]
    rows = pd.DataFrame(sharpcli.flow(run, model=mlp(), loss_fn="mse", data=x, y=y))
    for col in ("train_loss", "sharpness", "distance"):
        assert rows[col].equals(flow[col]), col
