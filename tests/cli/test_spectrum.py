"""`sharp spectrum` end to end on a real tiny training run, against dense Hessians."""

import copy

import pandas as pd
import pytest
import torch

from sharpcli import load_checkpoint
from sharpcli.errors import Interrupted
from sharpcli.formats.schema import SPECTRUM_COLUMNS
from sharpcli.spectra.config import SpectrumConfig
from sharpcli.spectra.run import run_spectrum
from tests.helpers import dense_hessian
from tests.runners import assert_one_line_error, sharp, train_args


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """reports/tiny and checkpoints/tiny/step-{0,2,4}.pt: a 490-parameter MLP on 64 examples."""
    root = tmp_path_factory.mktemp("spectrum")
    sharp(*train_args(root, "tiny", "--steps", "4", "--checkpoint-every", "2",
                      "--sharpness-every", "0")).ok()
    return root


def _truth(path, split="train", samples=None):
    """Dense float64 Hessian of a checkpoint's mean loss, and its eigenvalues descending."""
    ckpt = load_checkpoint(path)
    x, y, x_test, y_test = ckpt.data()
    if split == "test":
        x, y = x_test, y_test
    x, y = x[:samples], y[:samples]
    h = dense_hessian(copy.deepcopy(ckpt.model).double(), ckpt.loss_fn, x.double(), y)
    return h, torch.linalg.eigvalsh(h).flip(0)


def test_run_dir_expands_to_every_checkpoint_in_step_order(run, monkeypatch):
    monkeypatch.chdir(run)
    out = sharp("spectrum", "reports/tiny", "--top-k", "3", "--tol", "1e-6").ok().stdout
    with open(run / "reports/tiny/spectrum.csv") as f:
        assert f.readline().strip() == ",".join(SPECTRUM_COLUMNS)
    df = pd.read_csv(run / "reports/tiny/spectrum.csv")
    assert df["step"].tolist() == [0, 0, 0, 2, 2, 2, 4, 4, 4]
    assert df["index"].tolist() == [1, 2, 3] * 3
    assert set(df["block"]) == {"all"} and set(df["quantity"]) == {"eigenvalue"}
    assert df["converged"].all() and (df["n_hvp"] > 0).all() and (df["seconds"] > 0).all()
    assert "λ₁" in out and "wrote" in out and "reports/tiny/spectrum.csv" in out
    # the checkpoint folder means the same run, and its rows go to the run's report folder
    sharp("spectrum", "checkpoints/tiny", "--top-k", "3", "--tol", "1e-6", "--quiet").ok()
    again = pd.read_csv(run / "reports/tiny/spectrum.csv")
    assert again["value"].tolist() == pytest.approx(df["value"].tolist(), rel=1e-6)


def test_eigenvalues_match_dense_hessian(run, tmp_path):
    path = run / "checkpoints/tiny/step-00000004.pt"
    _, truth = _truth(path)
    sharp("spectrum", path, "--top-k", "5", "--tol", "1e-5", "--out", tmp_path / "s.csv",
          "--quiet").ok()
    df = pd.read_csv(tmp_path / "s.csv")
    assert df["checkpoint"].tolist() == [str(path)] * 5
    # a float32 model: its products carry relative errors ~1e-7, far inside 1e-4
    assert df["value"].tolist() == pytest.approx(truth[:5].tolist(), rel=1e-4)
    assert (df["residual"] <= 1e-5 * truth[0].item() * 1.01).all()


def test_block_method_over_a_run_warm_and_cold(run, tmp_path):
    """--method block over the run's checkpoints, each started from the previous one's
    vectors (the default) or cold: the dense eigenvalues either way."""
    for flag in ("--warm-start", "--no-warm-start"):
        sharp("spectrum", run / "checkpoints/tiny", "--method", "block", "--top-k", "4",
              "--tol", "1e-6", "--out", tmp_path / f"{flag}.csv", "--quiet", flag).ok()
    warm, cold = (pd.read_csv(tmp_path / f"{f}.csv") for f in ("--warm-start", "--no-warm-start"))
    assert warm["value"].tolist() == pytest.approx(cold["value"].tolist(), rel=1e-5)
    for step in (0, 2, 4):
        _, truth = _truth(run / f"checkpoints/tiny/step-{step:08d}.pt")
        got = warm[warm["step"] == step]["value"].tolist()
        assert got == pytest.approx(truth[:4].tolist(), rel=1e-5), step
    assert warm["converged"].all() and (warm["n_hvp"] % 4 == 0).all()  # whole blocks of 4


def test_trace_and_density_of_the_test_split(run, tmp_path):
    path = run / "checkpoints/tiny/step-00000002.pt"
    h, eig = _truth(path, split="test", samples=20)
    sharp("spectrum", path, "--split", "test", "--samples", "20", "--batch-size", "7",
          "--top-k", "2", "--tol", "1e-5", "--trace", "--trace-probes", "40", "--density",
          "--density-runs", "2", "--density-iters", "30", "--out", tmp_path / "s.csv",
          "--quiet").ok()
    df = pd.read_csv(tmp_path / "s.csv")
    assert df["value"][:2].tolist() == pytest.approx(eig[:2].tolist(), rel=1e-4)
    trace = df[df["quantity"] == "trace"].iloc[0]
    assert trace["index"] == 0 and trace["n_hvp"] == 40
    assert abs(trace["value"] - torch.trace(h).item()) <= 3 * trace["residual"]
    density = pd.read_csv(tmp_path / "density.csv")
    assert list(density.columns) == ["checkpoint", "step", "eigenvalue", "density", "block"]
    assert len(density) == 1000 and set(density["step"]) == {2} and set(density["block"]) == {"all"}
    assert (density["density"] >= 0).all()
    area = torch.trapezoid(torch.tensor(density["density"].values),
                           torch.tensor(density["eigenvalue"].values))
    assert area.item() == pytest.approx(1, abs=1e-6)
    assert df[df["quantity"] == "density"]["n_hvp"].item() == 60


def test_per_layer_and_pyhessian_backend(run, tmp_path):
    path = run / "checkpoints/tiny/step-00000000.pt"
    h, eig = _truth(path)
    sharp("spectrum", path, "--top-k", "4", "--tol", "1e-5", "--per-layer", "--out",
          tmp_path / "native.csv", "--quiet").ok()
    native = pd.read_csv(tmp_path / "native.csv")
    start = 0
    for block, n in [("fc1", 40 * 8 + 8), ("fc2", 8 * 8 + 8), ("head", 8 * 10 + 10)]:
        truth = torch.linalg.eigvalsh(h[start:start + n, start:start + n]).flip(0)[:4]
        start += n
        got = native[native["block"] == block]["value"].tolist()
        assert got == pytest.approx(truth.tolist(), rel=1e-4), block
    tol = 1e-5
    out = sharp("spectrum", path, "--backend", "pyhessian", "--top-k", "1", "--tol", tol,
                "--max-iter", "2000", "--out", tmp_path / "ph.csv").ok().stdout
    assert "pyhessian" in out
    ph = pd.read_csv(tmp_path / "ph.csv").iloc[0]
    # the error power iteration leaves once λ changes by < tol: about tol/(1 − (λ₂/λ₁)²)
    bound = tol / (1 - (eig[1] / eig[0]).item() ** 2)
    assert ph["value"] == pytest.approx(native["value"][0], rel=bound)
    assert abs(ph["value"] - eig[0].item()) <= ph["residual"]


def test_bare_checkpoint_file_writes_beside_itself(run, tmp_path, monkeypatch):
    payload = torch.load(run / "checkpoints/tiny/step-00000004.pt", weights_only=True)
    payload["config"].update(reports_dir="reports", run_name="elsewhere")
    lone = tmp_path / "lone" / "step-00000004.pt"
    lone.parent.mkdir()
    torch.save(payload, lone)
    monkeypatch.chdir(tmp_path)  # reports/elsewhere exists neither here nor beside lone/
    sharp("spectrum", lone, "--top-k", "1", "--quiet").ok()
    assert pd.read_csv(lone.parent / "spectrum.csv")["step"].tolist() == [4]


def test_interrupt_keeps_rows_already_written(run, tmp_path):
    done, polls = [], []  # Ctrl-C five products into the second checkpoint's solve
    with pytest.raises(Interrupted) as err:
        run_spectrum([run / "checkpoints/tiny"], SpectrumConfig(top_k=2, device="cpu"),
                     out=tmp_path / "s.csv", on_done=lambda *a: done.append(1),
                     should_stop=lambda: bool(done) and (polls.append(1) or len(polls) > 5))
    assert err.value.exit_code == 130 and "after 1 of 3 checkpoints" in str(err.value)
    assert pd.read_csv(tmp_path / "s.csv")["step"].tolist() == [0, 0]


@pytest.mark.parametrize("args,words", [
    (["nowhere/step-00000001.pt"], "does not exist"),
    (["empty"], "holds no checkpoints"),
    (["reports/nockpt"], "no checkpoints"),
    (["garbage.pt"], "garbage.pt is not a"),
    (["checkpoints/tiny", "--top-k", "491"], "--top-k 491 is more than the model's 490 parameters"),
    (["checkpoints/tiny", "--samples", "65"], "only 64 examples"),
    (["checkpoints/tiny", "--backend", "pyhessian", "--per-layer"], "--backend pyhessian cannot do"),
    (["checkpoints/tiny", "--max-iter", "3"], "--max-iter 3 is below --top-k 5"),
])
def test_bad_input_is_one_line_and_exit_2(run, tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").symlink_to(run / "checkpoints")
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    nockpt = tmp_path / "reports" / "nockpt"
    nockpt.mkdir(parents=True)
    (nockpt / "config.json").write_text('{"run_name": "nockpt", "checkpoints_dir": "checkpoints"}')
    result = sharp("spectrum", *args, "--quiet")
    assert_one_line_error(result, 2, words)
    assert result.stderr.count("\n") == 1
