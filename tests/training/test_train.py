"""`sharp train` end to end on tiny runs: files, columns, checkpoints, and the logged
sharpness against the dense Hessian of the logged weights."""

import json
import math

import pandas as pd
import pytest
import torch

import sharpcli
from sharpcli.config import TrainConfig
from sharpcli.formats.checkpoints import list_checkpoints
from sharpcli.formats.schema import METRICS_COLUMNS
from sharpcli.training.loop import train
from tests.helpers import dense_hessian
from tests.runners import sharp, train_args


def metrics(tmp_path, run):
    return pd.read_csv(tmp_path / "reports" / run / "metrics.csv")


@pytest.fixture(scope="module")
def gd_run(tmp_path_factory):
    """One plain GD run that the tests below only read: rows, λ₁ (top 3, tol 1e-6) and
    checkpoints at steps 0, 3 and 6."""
    root = tmp_path_factory.mktemp("gd")
    sharp(*train_args(root, "r", "--steps", "6", "--checkpoint-every", "3",
                      "--sharpness-every", "3", "--eval-every", "3", "--sharpness-tol", "1e-6",
                      "--sharpness-k", "3")).ok()
    return root


def test_gd_run_writes_metrics_config_and_checkpoints(gd_run):
    df = metrics(gd_run, "r")
    assert tuple(df.columns) == METRICS_COLUMNS
    assert df["step"].tolist() == [0, 3, 6]
    assert (df["phase"] == "gd").all()
    assert df["sharpness"].notna().all() and df["alignment"].between(0, 1).all()
    assert df["gd_edge"].eq(2 / 0.3).all() and df["sam_edge"].isna().all() and df["rho"].isna().all()
    assert df[["preconditioned_sharpness", "adaptive_edge", "batch_sharpness"]].isna().all().all()
    assert df["train_loss"].iloc[-1] < df["train_loss"].iloc[0]
    config = json.loads((gd_run / "reports" / "r" / "config.json").read_text())
    assert config["lr"] == 0.3 and config["seed"] == 0 and config["train_size"] == 64
    assert "torch" in config["versions"] and config["total_steps"] == 6
    names = [p.name for p in list_checkpoints(gd_run / "checkpoints" / "r")]
    assert names == ["step-00000000.pt", "step-00000003.pt", "step-00000006.pt"]


def test_checkpoint_rebuilds_model_and_data(gd_run):
    """The logged loss and accuracies, recomputed from the checkpoint alone. (That the file
    loads with torch.load(weights_only=True) is in tests/formats/test_untrusted.py.)"""
    path = gd_run / "checkpoints" / "r" / "step-00000006.pt"
    ckpt = sharpcli.load_checkpoint(path)
    assert ckpt.step == 6 and not ckpt.model.training
    x, y, xt, yt = ckpt.data()
    assert x.shape == (64, 40) and xt.shape == (32, 40)
    with torch.no_grad():
        out = ckpt.model(x)
        loss = ckpt.loss_fn(out, y).item()
        acc = (out.argmax(1) == y).float().mean().item()
        test_acc = (ckpt.model(xt).argmax(1) == yt).float().mean().item()
    row = metrics(gd_run, "r").set_index("step").loc[6]
    assert loss == pytest.approx(row["train_loss"], rel=1e-6)
    assert acc == pytest.approx(row["train_acc"]) and test_acc == pytest.approx(row["test_acc"])


def test_logged_sharpness_is_the_dense_top_eigenvalue(gd_run):
    # The row at step t and the checkpoint at step t describe the same weights w_t.
    df = metrics(gd_run, "r").set_index("step")
    top = pd.read_csv(gd_run / "reports" / "r" / "top_eigenvalues.csv")
    assert top["step"].tolist() == [0, 0, 0, 3, 3, 3, 6, 6, 6] and top["index"].tolist() == [1, 2, 3] * 3
    for step in (3, 6):
        ckpt = sharpcli.load_checkpoint(gd_run / "checkpoints" / "r" / f"step-{step:08d}.pt")
        model = ckpt.model.double()
        x, y, _, _ = ckpt.data()
        lams, vecs = torch.linalg.eigh(dense_hessian(model, ckpt.loss_fn, x.double(), y))
        lams = lams.flip(0)[:3]
        assert df.loc[step, "sharpness"] == pytest.approx(lams[0].item(), rel=1e-4)
        # alignment = |cos(g, v₁)| with g the full-batch gradient at w_t (gd: ε ∝ g)
        model.zero_grad()
        ckpt.loss_fn(model(x.double()), y).backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        cos = (g @ vecs[:, -1]).abs() / g.norm()
        assert df.loc[step, "alignment"] == pytest.approx(cos.item(), rel=1e-3, abs=1e-6)
        logged = top[top["step"] == step]["eigenvalue"].to_numpy()
        assert logged == pytest.approx(lams.numpy(), rel=1e-4)


def test_sgd_momentum_nesterov_cosine_and_epochs(tmp_path):
    sharp(*train_args(tmp_path, "s", "--optimizer", "sgd", "--batch-size", "16", "--epochs", "3",
                      "--lr", "0.1", "--momentum", "0.9", "--nesterov", "--schedule", "cosine",
                      "--weight-decay", "1e-4", "--eval-every", "4", "--sharpness-every", "4")).ok()
    df = metrics(tmp_path, "s")
    assert df["step"].tolist() == [0, 4, 8, 12]  # 3 epochs of ceil(64/16) = 4 steps
    assert df["epoch"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert (df["phase"] == "sgd").all()
    expected_lr = [0.5 * 0.1 * (1 + math.cos(math.pi * s / 12)) for s in (0, 4, 8, 12)]
    assert df["lr"].tolist() == pytest.approx(expected_lr)
    nesterov_edge = [(2 + 2 * 0.9) / (lr * (1 + 2 * 0.9)) for lr in expected_lr[:-1]]
    assert df["gd_edge"].iloc[:-1].tolist() == pytest.approx(nesterov_edge)


def test_heavy_ball_edge_and_sharpness_subset(tmp_path):
    sharp(*train_args(tmp_path, "m", "--optimizer", "gd", "--momentum", "0.5", "--steps", "2",
                      "--sharpness-every", "1", "--sharpness-samples", "20")).ok()
    df = metrics(tmp_path, "m")
    assert df["gd_edge"].tolist() == pytest.approx([(2 + 1.0) / 0.3] * 3)


def test_stop_loss_ends_the_run_with_a_checkpoint(tmp_path):
    cfg = TrainConfig(train_size=64, test_size=32, width=8, steps=50, eval_every=1,
                      sharpness_every=0, stop_loss=10.0, run_name="stop",
                      reports_dir=str(tmp_path / "reports"), checkpoints_dir=str(tmp_path / "ck"))
    result = train(cfg)
    assert result.stopped_early and result.last_step == 0
    assert (tmp_path / "ck" / "stop" / "step-00000000.pt").exists()


def test_default_run_names_do_not_overwrite(tmp_path):
    for _ in range(2):
        sharp(*train_args(tmp_path, None, "--steps", "1", "--sharpness-every", "0")).ok()
    runs = sorted(p.name for p in (tmp_path / "reports").iterdir())
    assert runs == ["mnist1d-mlp-gd-lr0.3-seed0", "mnist1d-mlp-gd-lr0.3-seed0-2"]


def test_resume_continues_to_the_same_metrics(tmp_path):
    common = ["--steps", "8", "--sharpness-every", "2", "--eval-every", "2", "--checkpoint-every", "4"]
    sharp(*train_args(tmp_path, "full", *common)).ok()
    # A run stopped after step 4's checkpoint, then resumed with more steps allowed.
    sharp(*train_args(tmp_path, "part", "--steps", "5", "--sharpness-every", "2",
                      "--eval-every", "2", "--checkpoint-every", "4")).ok()
    sharp(*train_args(tmp_path, "part", *common, "--resume")).ok()
    a = metrics(tmp_path, "full").drop(columns="seconds")
    b = metrics(tmp_path, "part").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)


def test_compile_trains_the_same_run(tmp_path, monkeypatch):
    """--compile sends the training passes through torch.compile and leaves the measurements
    eager; with the "eager" backend (graph capture without code generation, which would cost
    tens of seconds) the numbers are the uncompiled run's."""
    compile_ = torch.compile
    calls = []
    monkeypatch.setattr(torch, "compile",
                        lambda model, **kw: calls.append(model) or compile_(model, backend="eager", **kw))
    common = ["--steps", "4", "--sharpness-every", "2", "--eval-every", "2"]
    sharp(*train_args(tmp_path, "plain", *common)).ok()
    sharp(*train_args(tmp_path, "compiled", *common, "--compile")).ok()
    assert len(calls) == 1
    a, b = (metrics(tmp_path, r).drop(columns="seconds") for r in ("plain", "compiled"))
    pd.testing.assert_frame_equal(a, b, rtol=1e-6)



def test_fp64_run_is_float64_throughout(tmp_path):
    """--precision fp64: the weights, the inputs and the measurements in float64, the
    checkpoint rebuilt in float64, and the logged λ₁ the dense float64 top eigenvalue to the
    solver's tolerance (far below float32's rounding, which --sharpness-tol 1e-10 would not reach)."""
    sharp(*train_args(tmp_path, "f64", "--steps", "4", "--checkpoint-every", "4",
                      "--sharpness-every", "4", "--eval-every", "4", "--sharpness-tol", "1e-10",
                      "--precision", "fp64")).ok()
    ckpt = sharpcli.load_checkpoint(tmp_path / "checkpoints" / "f64" / "step-00000004.pt")
    assert {p.dtype for p in ckpt.model.parameters()} == {torch.float64}
    x, y, xt, _ = ckpt.data()
    assert x.dtype == xt.dtype == torch.float64 and y.dtype == torch.int64
    lam = torch.linalg.eigvalsh(dense_hessian(ckpt.model, ckpt.loss_fn, x, y))[-1].item()
    assert metrics(tmp_path, "f64").set_index("step").loc[4, "sharpness"] == pytest.approx(lam, rel=1e-9)
    # and the same run in float32 differs from it by float32's rounding, not by 1e-9
    sharp(*train_args(tmp_path, "f32", "--steps", "4", "--eval-every", "4",
                      "--sharpness-every", "0")).ok()
    a, b = (metrics(tmp_path, r).set_index("step").loc[4, "train_loss"] for r in ("f64", "f32"))
    assert 1e-12 < abs(a - b) / a < 1e-5
