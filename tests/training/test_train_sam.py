"""`sharp train` with SAM, ASAM and Eigen-SAM end to end on tiny runs: the late-phase switch,
the SAM columns of metrics.csv, and an exact --resume of an Eigen-SAM run."""

import pandas as pd
import pytest

from sharpcli.edges import sam_edge
from sharpcli.formats.schema import METRICS_COLUMNS
from tests.runners import assert_one_line_error, sharp, train_args

# The step size the expected SAM edges below are computed with.
SAM = ["--lr", "0.2"]


def metrics(tmp_path, run):
    return pd.read_csv(tmp_path / "reports" / run / "metrics.csv")


def _check_sam_rows(df, rho, lr):
    assert df["rho"].eq(rho).all()
    assert df["sharpness"].notna().all() and df["alignment"].between(0, 1).all()
    expected = [sam_edge(lr, rho, g) for g in df["grad_norm"]]
    assert df["sam_edge"].tolist() == pytest.approx(expected, rel=1e-12)
    assert (df["sam_edge"] < df["gd_edge"]).all()


@pytest.mark.parametrize("optimizer,extra", [("sam", []), ("sam", ["--adaptive"]),
                                             ("eigen-sam", ["--eig-every", "2"])])
def test_sam_runs_log_rho_sam_edge_and_alignment(tmp_path, optimizer, extra):
    sharp(*train_args(tmp_path, "r", *SAM, "--optimizer", optimizer, *extra, "--rho", "0.1",
                      "--steps", "4", "--sharpness-every", "2", "--eval-every", "1")).ok()
    df = metrics(tmp_path, "r")
    assert tuple(df.columns) == METRICS_COLUMNS
    assert df["step"].tolist() == [0, 1, 2, 3, 4] and (df["phase"] == optimizer).all()
    assert df["train_loss"].iloc[-1] < df["train_loss"].iloc[0]
    measured = df[df["step"] % 2 == 0]
    _check_sam_rows(measured, 0.1, 0.2)
    assert df[df["step"] % 2 == 1][["sharpness", "alignment"]].isna().all().all()


@pytest.mark.parametrize("optimizer,batch,base", [("sam", [], "gd"),
                                                  ("eigen-sam", ["--batch-size", "16"], "sgd")])
def test_late_phase_switches_exactly_at_sam_start(tmp_path, optimizer, batch, base):
    sharp(*train_args(tmp_path, "late", *SAM, "--optimizer", optimizer, *batch, "--sam-start",
                      "3", "--steps", "6", "--eval-every", "1", "--sharpness-every", "1",
                      "--rho", "0.1")).ok()
    df = metrics(tmp_path, "late")
    assert df["phase"].tolist() == [base] * 3 + [optimizer] * 4
    before, after = df[df["step"] < 3], df[df["step"] >= 3]
    assert before[["rho", "sam_edge"]].isna().all().all()
    _check_sam_rows(after, 0.1, 0.2)


def test_late_phase_in_epochs(tmp_path):
    sharp(*train_args(tmp_path, "ep", *SAM, "--optimizer", "sam", "--batch-size", "32",
                      "--epochs", "3", "--sam-start", "2", "--eval-every", "1",
                      "--sharpness-every", "0")).ok()
    df = metrics(tmp_path, "ep")  # 2 steps per epoch: SAM from step 4
    assert df["phase"].tolist() == ["sgd"] * 4 + ["sam"] * 3


def test_eigen_sam_resume_is_exact(tmp_path):
    """Interrupted after step 7's checkpoint and resumed: the same metrics as one run. The
    Eigen-SAM estimate (refreshed at 0, 3, 6, 9) must come back from the checkpoint."""
    common = ["--optimizer", "eigen-sam", "--batch-size", "16", "--momentum", "0.9",
              "--eig-every", "3", "--eig-iters", "3", "--rho", "0.1", "--sharpness-every", "1",
              "--eval-every", "1", "--checkpoint-every", "5"]
    sharp(*train_args(tmp_path, "full", *SAM, *common, "--steps", "11")).ok()
    sharp(*train_args(tmp_path, "part", *SAM, *common, "--steps", "7")).ok()
    sharp(*train_args(tmp_path, "part", *SAM, *common, "--steps", "11", "--resume")).ok()
    a = metrics(tmp_path, "full").drop(columns="seconds")
    b = metrics(tmp_path, "part").drop(columns="seconds")
    assert a["step"].tolist() == list(range(12))
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_adaptive_needs_plain_sam(tmp_path):
    result = sharp(*train_args(tmp_path, "r", *SAM, "--optimizer", "eigen-sam", "--adaptive",
                               "--steps", "2"))
    assert_one_line_error(result, 2, "--adaptive")
    assert not (tmp_path / "checkpoints").exists()
