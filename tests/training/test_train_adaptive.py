"""`sharp train` with Adam, AdamW and RMSProp, and with --batch-sharpness, end to end on tiny
runs: the new columns, the logged λ₁(P⁻¹H) against a dense P^{-1/2} H P^{-1/2} of the
checkpoint of the same step, the logged batch sharpness against its definition, checkpoint
spectra and eos from checkpoints, and an exact resume."""

import pandas as pd
import pytest
import torch

import sharpcli
from sharpcli.config import TrainConfig
from sharpcli.formats.schema import METRICS_COLUMNS
from sharpcli.hessian.batch_sharpness import batch_sharpness, random_batches
from sharpcli.hessian.objective import gradient_norm
from sharpcli.training.optim import build_base_optimizer
from sharpcli.training.tracker import StepInfo, Tracker
from tests.cases import MLP_MSE
from tests.helpers import dense_hessian
from tests.runners import assert_one_line_error, csv_lines, sharp, train_args, without_column

ADAM = ["--optimizer", "adam", "--lr", "0.01", "--steps", "6", "--sharpness-every", "3",
        "--eval-every", "3", "--checkpoint-every", "3", "--sharpness-tol", "1e-7"]


def metrics(root, run):
    return pd.read_csv(root / "reports" / run / "metrics.csv")


def checkpoint(root, run, step):
    return sharpcli.load_checkpoint(root / "checkpoints" / run / f"step-{step:08d}.pt")


@pytest.fixture(scope="module")
def adam_run(tmp_path_factory):
    """Full-batch Adam, η = 0.01: rows and checkpoints at steps 0, 3 and 6."""
    root = tmp_path_factory.mktemp("adam")
    sharp(*train_args(root, "a", *ADAM)).ok()
    return root


def test_adam_run_columns(adam_run):
    df = metrics(adam_run, "a")
    assert tuple(df.columns) == METRICS_COLUMNS
    assert (df["phase"] == "adam").all() and df["step"].tolist() == [0, 3, 6]
    assert df["adaptive_edge"].tolist() == pytest.approx([38 / 0.01] * 3)
    # no state before the first update, so no P at step 0
    assert df["preconditioned_sharpness"].isna().tolist() == [True, False, False]
    assert df["batch_sharpness"].isna().all() and df["sharpness"].notna().all()


def test_logged_preconditioned_sharpness_is_the_dense_one(adam_run):
    """The row at step t and the checkpoint of step t hold w_t and the optimizer state before
    update t: λ₁ of P^{-1/2} H P^{-1/2} built densely from them is the logged value."""
    df = metrics(adam_run, "a").set_index("step")
    for step in (3, 6):
        ckpt = checkpoint(adam_run, "a", step)
        p = ckpt.preconditioner().double()
        model = ckpt.model.double()
        x, y, _, _ = ckpt.data()
        h = dense_hessian(model, ckpt.loss_fn, x.double(), y)
        d = p.rsqrt()
        top = torch.linalg.eigvalsh(d[:, None] * h * d[None, :])[-1].item()
        assert df.loc[step, "preconditioned_sharpness"] == pytest.approx(top, rel=1e-4)
        assert ckpt.payload["optimizer"]["state"][0]["step"] == step  # t = updates so far


def test_spectrum_and_eos_of_adam_checkpoints(adam_run, tmp_path):
    out = tmp_path / "spec.csv"
    result = sharp("spectrum", adam_run / "reports" / "a", "--preconditioned", "--top-k", "2",
                   "--tol", "1e-7", "--out", out).ok()
    assert "skipped step-00000000.pt" in result.stdout  # no P before the first update
    spec = pd.read_csv(out)
    logged = metrics(adam_run, "a").set_index("step")["preconditioned_sharpness"]
    top = spec[spec["index"] == 1].set_index("step")["value"]
    assert top.index.tolist() == [3, 6]
    assert top.tolist() == pytest.approx(logged.loc[[3, 6]].tolist(), rel=1e-5)
    sharp("eos", adam_run / "reports" / "a", "--from-checkpoints", "--tol", "1e-7",
          "--out", tmp_path / "eos.csv").ok()
    eos = pd.read_csv(tmp_path / "eos.csv")
    assert (eos["measure"] == "preconditioned_sharpness").all() and eos["step"].tolist() == [3, 6]
    assert eos["sharpness"].tolist() == pytest.approx(logged.loc[[3, 6]].tolist(), rel=1e-5)


def test_spectrum_preconditioned_refuses_other_optimizers(tmp_path):
    sharp(*train_args(tmp_path, "g", "--steps", "1", "--sharpness-every", "0")).ok()
    assert_one_line_error(sharp("spectrum", tmp_path / "checkpoints" / "g", "--preconditioned"),
                          2, "adam, adamw or rmsprop", "gd")


def test_adamw_and_rmsprop_runs(tmp_path):
    sharp(*train_args(tmp_path, "w", "--optimizer", "adamw", "--weight-decay", "0.1",
                      "--beta1", "0.8", "--lr", "0.01", "--steps", "2", "--sharpness-every", "1")).ok()
    sharp(*train_args(tmp_path, "r", "--optimizer", "rmsprop", "--momentum", "0.5",
                      "--lr", "0.001", "--steps", "2", "--sharpness-every", "1")).ok()
    w, r = metrics(tmp_path, "w"), metrics(tmp_path, "r")
    assert (w["phase"] == "adamw").all() and (r["phase"] == "rmsprop").all()
    assert w["adaptive_edge"].tolist() == pytest.approx([3.6 / (0.2 * 0.01)] * 3)
    assert r["adaptive_edge"].tolist() == pytest.approx([3.0 / 0.001] * 3)
    for df in (w, r):
        assert df["preconditioned_sharpness"].notna().tolist() == [False, True, True]


def test_optimizers_are_torch_own_with_the_flags_mapped():
    params = [torch.nn.Parameter(torch.zeros(2))]
    adam = build_base_optimizer(TrainConfig(optimizer="adam", weight_decay=0.1), params)
    adamw = build_base_optimizer(TrainConfig(optimizer="adamw", beta1=0.8, beta2=0.9, eps=1e-6), params)
    rms = build_base_optimizer(TrainConfig(optimizer="rmsprop", momentum=0.5), params)
    assert type(adam) is torch.optim.Adam and type(adamw) is torch.optim.AdamW
    assert adam.defaults["betas"] == (0.9, 0.999) and adam.defaults["weight_decay"] == 0.1
    assert adamw.defaults["betas"] == (0.8, 0.9) and adamw.defaults["eps"] == 1e-6
    assert type(rms) is torch.optim.RMSprop
    assert rms.defaults["alpha"] == 0.99 and rms.defaults["momentum"] == 0.5  # --beta2 unset
    rms = build_base_optimizer(TrainConfig(optimizer="rmsprop", beta2=0.9), params)
    assert rms.defaults["alpha"] == 0.9


def test_logged_batch_sharpness_is_its_definition(tmp_path):
    """The row's batch sharpness is the Monte-Carlo mean over the batches drawn for (seed,
    step), recomputed here from the checkpoint of that step; a gd run has none."""
    sharp(*train_args(tmp_path, "s", "--optimizer", "sgd", "--batch-size", "16", "--lr", "0.1",
                      "--steps", "4", "--sharpness-every", "2", "--checkpoint-every", "2",
                      "--batch-sharpness")).ok()
    df = metrics(tmp_path, "s").set_index("step")
    assert df["batch_sharpness"].notna().all() and df["preconditioned_sharpness"].isna().all()
    for step in (0, 4):
        ckpt = checkpoint(tmp_path, "s", step)
        x, y, _, _ = ckpt.data()
        expected = batch_sharpness(ckpt.model, ckpt.loss_fn, x, y,
                                   random_batches(len(x), 16, seed=0, step=step))
        assert 10 <= expected.n_batches <= 200
        assert df.loc[step, "batch_sharpness"] == pytest.approx(expected.value, rel=1e-6)


def test_adam_resume_is_byte_for_byte(tmp_path):
    """Minibatch Adam with batch sharpness, stopped at step 3 and resumed from there: the
    same metrics.csv, apart from `seconds`, as the run that went straight through (the Adam
    state and the warm start of λ₁(P⁻¹H) come from the checkpoint)."""
    common = ["--optimizer", "adam", "--lr", "0.01", "--batch-size", "16", "--batch-sharpness",
              "--sharpness-every", "2", "--eval-every", "2", "--checkpoint-every", "2"]
    sharp(*train_args(tmp_path, "full", *common, "--steps", "4")).ok()
    sharp(*train_args(tmp_path, "part", *common, "--steps", "3")).ok()
    sharp(*train_args(tmp_path, "part", *common, "--steps", "4", "--resume")).ok()
    lines = [without_column(csv_lines(tmp_path / "reports" / run / "metrics.csv"), "seconds")
             for run in ("full", "part")]
    assert lines[0] == lines[1] and len(lines[0]) == 4
    # λ₁(P⁻¹H) at steps 2 and 4, the batch sharpness at every measured step
    assert all(line.split(",")[-3] and line.split(",")[-1] for line in lines[0][2:])


def test_tracker_reads_a_users_adam(tmp_path):
    """The library Tracker given a torch Adam of its caller's: the adaptive edge from the
    optimizer's param groups, λ₁(P⁻¹H) from its state."""
    model, loss_fn, x, y = MLP_MSE()
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.5, 0.999))
    with Tracker(model, loss_fn, x, y, optimizer=opt, run_dir=tmp_path, every=1) as tracker:
        for step in range(3):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            tracker.measure(StepInfo(step, "adam", 0.01, gradient_norm(list(model.parameters())),
                                     loss=loss.detach()))
            opt.step()
    df = pd.read_csv(tmp_path / "metrics.csv")
    assert df["adaptive_edge"].tolist() == pytest.approx([3.0 / (0.5 * 0.01)] * 3)
    assert df["preconditioned_sharpness"].notna().tolist() == [False, True, True]
