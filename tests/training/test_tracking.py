"""Tracking λ₁ in `sharp train` at its stated accuracy (--sharpness-tol: the relative error of
each logged eigenvalue), warm-started from the previous measurement's top-k eigenvectors,
and resumed exactly from checkpoints that hold them (or only v₁, as older ones do)."""

import pandas as pd
import pytest
import torch

import sharpcli
from sharpcli.formats.checkpoints import list_checkpoints, read_checkpoint
from tests.helpers import dense_hessian
from tests.runners import sharp, train_args

# lr 1 takes the tiny run to its edge (2/η = 2) within a few steps: λ₁ then hovers there
# while its eigenvector turns, the hard case for a warm start.
EDGE = ["--lr", "1", "--steps", "30", "--sharpness-every", "3", "--eval-every", "3",
        "--checkpoint-every", "3"]


def rows(root, run):
    return pd.read_csv(root / "reports" / run / "metrics.csv").set_index("step")


def dense_top(path, k):
    ckpt = sharpcli.load_checkpoint(path)
    x, y, _, _ = ckpt.data()
    return torch.linalg.eigvalsh(dense_hessian(ckpt.model.double(), ckpt.loss_fn, x.double(), y)).flip(0)[:k]


@pytest.fixture(scope="module")
def edge_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("edge")
    sharp(*train_args(root, "k1", *EDGE)).ok()
    sharp(*train_args(root, "k3", *EDGE, "--sharpness-k", "3")).ok()
    return root


@pytest.mark.parametrize("run,k", [("k1", 1), ("k3", 3)])
def test_every_logged_eigenvalue_is_within_the_default_tolerance(edge_run, run, k):
    """The default --sharpness-tol 1e-3 bounds the relative error of what is logged: each
    row's λ₁ (and λ₂, λ₃ of top_eigenvalues.csv) against the dense Hessian of the checkpoint
    of the same step."""
    df = rows(edge_run, run)
    top = pd.read_csv(edge_run / "reports" / run / "top_eigenvalues.csv") if k > 1 else None
    assert df["sharpness"].max() > 0.9 * df["gd_edge"].iloc[0]  # the run did reach its edge
    for path in list_checkpoints(edge_run / "checkpoints" / run):
        step = int(path.stem.split("-")[1])
        truth = dense_top(path, k)
        logged = [df.loc[step, "sharpness"]] if k == 1 else \
            top[top["step"] == step].sort_values("index")["eigenvalue"].tolist()
        assert torch.all((truth - torch.tensor(logged, dtype=torch.float64)).abs()
                         <= 1e-3 * truth.abs()), (step, logged, truth.tolist())


def test_checkpoints_hold_the_whole_warm_start(edge_run):
    extra = read_checkpoint(list_checkpoints(edge_run / "checkpoints" / "k3")[-1])["extra"]
    assert extra["top_vectors"].shape[1] == 3
    assert torch.equal(extra["top_vector"], extra["top_vectors"][:, 0])


@pytest.mark.parametrize("old_checkpoint", [False, True], ids=["top-vectors", "only-v1"])
def test_resume_with_top_k_warm_start(tmp_path, old_checkpoint):
    """--resume continues with the block the checkpoint holds: the same metrics and top
    eigenvalues as an uninterrupted run. A checkpoint written before the block was kept
    holds v₁ alone: it still resumes (the block is filled at random, so the answers agree
    to the tolerance, not to the bit)."""
    common = ["--steps", "8", "--sharpness-every", "2", "--eval-every", "2",
              "--checkpoint-every", "4", "--sharpness-k", "2", "--lr", "1"]
    sharp(*train_args(tmp_path, "full", *common)).ok()
    sharp(*train_args(tmp_path, "part", *common, "--steps", "5")).ok()
    if old_checkpoint:
        path = tmp_path / "checkpoints" / "part" / "step-00000004.pt"
        payload = torch.load(path, weights_only=True)
        del payload["extra"]["top_vectors"]
        torch.save(payload, path)
    sharp(*train_args(tmp_path, "part", *common, "--resume")).ok()
    a, b = (rows(tmp_path, r).drop(columns="seconds") for r in ("full", "part"))
    if old_checkpoint:
        assert (a["sharpness"] - b["sharpness"]).abs().max() <= 2e-3 * a["sharpness"].max()
        return
    pd.testing.assert_frame_equal(a, b)
    tops = [pd.read_csv(tmp_path / "reports" / r / "top_eigenvalues.csv") for r in ("full", "part")]
    pd.testing.assert_frame_equal(*tops)
