"""sharpcli.Tracker in hand-written loops: the rows `sharp train` writes, by construction; the
model, its gradients, the RNG and BatchNorm left exactly as found; a run every `sharp`
command reads."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import sharpcli
from sharpcli.errors import SharpError
from sharpcli.formats.schema import METRICS_COLUMNS
from tests.cases import BN_MSE
from tests.runners import assert_one_line_error, csv_lines, sharp, train_args, without_column

STEPS = 40


def default_run_by_hand(run_dir, steps=STEPS, **tracker_kw):
    """`sharp train`'s default run (full-batch GD, tanh MLP, MSE, η = 0.3) written as a plain
    torch loop around a Tracker, at the TINY sizes of tests/runners.py."""
    from sharpcli.hessian.losses import mse_loss
    from sharpcli.workload.data import load_dataset
    from sharpcli.workload.models import build_model

    torch.manual_seed(0)
    data = load_dataset("mnist1d", train_size=64, test_size=32)
    model = build_model("mlp", data.input_shape, data.num_classes, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    x, y = data.x_train, data.y_train
    with sharpcli.Tracker(model, mse_loss, x, y, optimizer=opt, run_dir=run_dir,
                          test=(data.x_test, data.y_test), **tracker_kw) as tracker:
        for step in range(steps + 1):
            opt.zero_grad()
            mse_loss(model(x), y).backward()
            tracker.step(step)
            if step < steps:
                opt.step()
    return model


def test_a_plain_loop_writes_what_sharp_train_writes(tmp_path):
    sharp(*train_args(tmp_path, "cli", "--steps", STEPS, "--checkpoint-every", 20)).ok()
    default_run_by_hand(tmp_path / "reports" / "loop", checkpoint_every=20)
    cli = csv_lines(tmp_path / "reports" / "cli" / "metrics.csv")
    loop = csv_lines(tmp_path / "reports" / "loop" / "metrics.csv")
    assert loop[0] == ",".join(METRICS_COLUMNS) and len(loop) == STEPS // 20 + 2
    assert without_column(loop, "seconds") == without_column(cli, "seconds")
    measured = pd.read_csv(tmp_path / "reports" / "cli" / "metrics.csv").dropna(subset=["sharpness"])
    assert (measured["sharpness_converged"] == 1).all()  # the new column: every λ₁ converged
    config = json.loads((tmp_path / "reports" / "loop" / "config.json").read_text())
    assert config["built_by"] == "sharpcli.Tracker" and config["model"] == "MLP"
    assert config["num_params"] == 490 and config["optimizer"] == "gd" and config["lr"] == 0.3
    assert config["optimizer_class"] == "torch.optim.sgd.SGD" and config["train_size"] == 64
    assert config["checkpoint_dir"] == "checkpoints"  # inside the run folder
    # its checkpoints hold the same weights as sharp train's, inside the run's own folder
    for step in (0, 20, 40):
        a = torch.load(tmp_path / "checkpoints" / "cli" / f"step-{step:08d}.pt", weights_only=True)
        b = torch.load(tmp_path / "reports" / "loop" / "checkpoints" / f"step-{step:08d}.pt",
                       weights_only=True)
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert not (tmp_path / "checkpoints" / "loop").exists()


def test_every_command_reads_a_plain_loop_run(tmp_path, monkeypatch):
    run = tmp_path / "reports" / "loop"
    default_run_by_hand(run, steps=60, checkpoint_every=30, every=10)
    result = sharp("eos", run, "--band", "0.5")
    assert result.code in (0, 1) and "loop" in result.stdout and "wrote" in result.stdout
    assert pd.read_csv(run / "eos.csv")["edge"].notna().all()
    sharp("plot", run).ok()
    assert (run / "sharpness.png").exists()
    sharp("summarize", run, "--out", tmp_path / "summary.csv").ok()
    # its checkpoints need the model's factory: sharpcli did not build it
    assert_one_line_error(sharp("spectrum", run, "--quiet"), 2, "sharpcli.Tracker", "--model-factory")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "loopmodel.py").write_text(
        "from sharpcli.workload.models import build_model\n"
        "def make():\n    return build_model('mlp', (40,), 10, width=8)\n")
    sharp("spectrum", run, "--model-factory", "loopmodel:make", "--dataset", "mnist1d",
          "--train-size", "64", "--top-k", "1", "--tol", "1e-8", "--quiet").ok()
    spectrum = pd.read_csv(run / "spectrum.csv")
    logged = pd.read_csv(run / "metrics.csv").set_index("step")["sharpness"]
    assert list(spectrum["step"]) == [0, 30, 60]
    for _, row in spectrum.iterrows():  # the checkpoint's λ₁ is the λ₁ logged at that step
        assert row["value"] == pytest.approx(logged[row["step"]], rel=1e-4)


def test_the_tracker_leaves_everything_as_it_found_it(tmp_path):
    """Mode (per module), .grad (values and objects), the global RNG and BatchNorm buffers,
    after a step that measures λ₁, evaluates and saves a checkpoint."""
    model, loss_fn, x, y = BN_MSE()
    model.train()
    model[3].eval()  # a mixed state, to be restored as it is
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn(model(x), y).backward()
    modes = [m.training for m in model.modules()]
    grads = [(p.grad, p.grad.clone()) for p in model.parameters()]
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num" in k}
    rng = torch.get_rng_state()
    with sharpcli.Tracker(model, loss_fn, x, y, optimizer=opt, run_dir=tmp_path / "r",
                          every=1, k=2, checkpoint_every=1) as tracker:
        row = tracker.step(0)
    assert row["sharpness"] > 0 and row["train_loss"] > 0
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is g and torch.equal(p.grad, c) for p, (g, c) in zip(model.parameters(), grads))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in buffers.items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_steps_off_the_schedule_do_nothing(tmp_path):
    model, loss_fn, x, y = BN_MSE()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with sharpcli.Tracker(model, loss_fn, x, y, optimizer=opt, run_dir=tmp_path / "r",
                          every=10) as tracker:
        assert tracker.step(3) is None  # no gradient needed either: nothing is measured
    assert len(csv_lines(tmp_path / "r" / "metrics.csv")) == 1


class SAM(torch.optim.Optimizer):
    """davda54/sam's interface (first_step, second_step, base_optimizer; ρ in the groups)."""

    def __init__(self, params, base_optimizer, rho=0.05, **kw):
        super().__init__(params, dict(rho=rho, **kw))
        self.base_optimizer = base_optimizer(self.param_groups, **kw)
        self.param_groups = self.base_optimizer.param_groups

    def first_step(self, zero_grad=False): ...

    def second_step(self, zero_grad=False): ...


def test_sam_wrappers_and_other_optimizers(tmp_path):
    """A SAM optimizer around SGD (davda54/sam's interface) logs the SAM edge; an optimizer
    whose edge sharpcli does not know logs its name and no edge."""
    model, loss_fn, x, y = BN_MSE()
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.0)
    loss_fn(model(x), y).backward()
    with sharpcli.Tracker(model, loss_fn, x, y, optimizer=sam, run_dir=tmp_path / "s") as t:
        row = t.step(0)
    from sharpcli.edges import gd_edge, sam_edge

    assert row["phase"] == "sam" and row["rho"] == 0.1
    assert row["sam_edge"] == pytest.approx(sam_edge(0.2, 0.1, row["grad_norm"]))
    assert row["gd_edge"] == pytest.approx(gd_edge(0.2))
    adagrad = torch.optim.Adagrad(model.parameters(), lr=0.01)
    with sharpcli.Tracker(model, loss_fn, x, y, optimizer=adagrad, run_dir=tmp_path / "a") as t:
        row = t.step(0)
    assert row["phase"] == "adagrad" and row.get("gd_edge") is None and row["sharpness"] > 0
    frame = pd.read_csv(tmp_path / "a" / "metrics.csv")  # readable by every command
    assert frame["phase"].tolist() == ["adagrad"] and np.isnan(frame["gd_edge"][0])


def test_step_before_backward_is_an_error(tmp_path):
    model, loss_fn, x, y = BN_MSE()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with sharpcli.Tracker(model, loss_fn, x, y, optimizer=opt, run_dir=tmp_path / "r") as tracker:
        with pytest.raises(SharpError, match="no .grad; call it after loss.backward"):
            tracker.step(0)


def test_minibatch_loops_count_epochs_and_log_sgd(tmp_path):
    model, loss_fn, x, y = BN_MSE()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    loss_fn(model(x[:5]), y[:5]).backward()
    with sharpcli.Tracker(model, loss_fn, x, y, optimizer=opt, run_dir=tmp_path / "r",
                          batch_size=5, every=7) as tracker:
        row = tracker.step(14)
    from sharpcli.edges import gd_edge

    assert row["phase"] == "sgd" and row["epoch"] == pytest.approx(14 / 5)  # ⌈23/5⌉ = 5
    assert row["gd_edge"] == pytest.approx(gd_edge(0.1, 0.9, nesterov=True))


def test_adam_in_a_plain_loop_logs_the_preconditioned_sharpness(tmp_path):
    """torch.optim.Adam around a Tracker: phase adam, the adaptive edge (2 + 2β₁)/((1 − β₁)η),
    and λ₁(P⁻¹H) once the optimizer has a state (none before the first update)."""
    from sharpcli.edges import adam_edge

    model, loss_fn, x, y = BN_MSE()
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.99))
    with sharpcli.Tracker(model, loss_fn, x, y, optimizer=opt, run_dir=tmp_path / "a",
                          every=2) as tracker:
        rows = []
        for step in range(5):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            rows.append(tracker.step(step))
            opt.step()
    first, later = rows[0], rows[2]
    assert first["phase"] == later["phase"] == "adam"
    assert first["preconditioned_sharpness"] is None and later["preconditioned_sharpness"] > 0
    assert later["adaptive_edge"] == pytest.approx(adam_edge(0.01, 0.8)) == pytest.approx(3.6 / 0.002)


def test_sam_is_recognised_by_what_the_optimizer_is_not_by_a_rho_key(tmp_path):
    """Adadelta's param groups hold `rho` (its averaging constant): it is no SAM and has no
    edge sharpcli knows. Neither has a SAM around Adam (named apart from `sam`, so that
    `sharp eos` does not apply the SAM edge to it), nor a class called SAM without
    davda54's interface. (Old main logged Adadelta as SAM, with a SAM edge.)"""
    model, loss_fn, x, y = BN_MSE()
    loss_fn(model(x), y).backward()

    class Sam(torch.optim.SGD):  # a `rho` key and the name, but not the interface
        def __init__(self, params):
            super().__init__(params, lr=0.1)
            self.param_groups[0]["rho"] = 0.05

    optimizers = {"adadelta": torch.optim.Adadelta(model.parameters(), lr=0.5, rho=0.9),
                  "sam+adam": SAM(model.parameters(), torch.optim.Adam, rho=0.1, lr=0.01),
                  "gd": Sam(model.parameters())}
    for name, opt in optimizers.items():
        with sharpcli.Tracker(model, loss_fn, x, y, optimizer=opt, run_dir=tmp_path / name) as t:
            row = t.step(0)
        assert row["phase"] == name and row["rho"] is None, (name, row)
        edges = [row.get(e) for e in ("gd_edge", "sam_edge", "adaptive_edge")]
        assert edges == ([pytest.approx(20.0), None, None] if name == "gd" else [None] * 3), name
        result = sharp("eos", tmp_path / name)
        if name == "gd":
            assert result.code in (0, 1), result.stderr
        else:  # sharp eos computes no edge for them either
            assert_one_line_error(result, 2, "the edge is unknown")


def test_an_existing_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    """(Old main overwrote an existing run's files silently.)"""
    run = tmp_path / "run"
    default_run_by_hand(run, steps=20, every=10)
    before = (run / "metrics.csv").read_text()
    with pytest.raises(SharpError, match="already holds a run.*resume=True.*overwrite=True"):
        default_run_by_hand(run, steps=20, every=10)
    assert (run / "metrics.csv").read_text() == before
    with pytest.raises(SharpError, match="give one"):
        default_run_by_hand(run, resume=True, overwrite=True)
    default_run_by_hand(run, steps=10, every=10, overwrite=True)
    assert pd.read_csv(run / "metrics.csv")["step"].tolist() == [0, 10]


def test_resume_continues_the_files_exactly(tmp_path):
    """A run stopped after step 30 and resumed from its step-20 checkpoint (the loop loads
    the model and optimizer; the Tracker drops the rows from step 20 on and takes the warm
    start and the clock from that checkpoint) writes the uninterrupted run's metrics.csv."""
    from sharpcli.hessian.losses import mse_loss

    whole = tmp_path / "whole"
    default_run_by_hand(whole, steps=40, every=10, checkpoint_every=20)
    run = tmp_path / "run"
    default_run_by_hand(run, steps=30, every=10, checkpoint_every=20)
    model = default_run_by_hand(tmp_path / "scratch", steps=0)  # the architecture
    saved = torch.load(run / "checkpoints" / "step-00000020.pt", weights_only=True)
    model.load_state_dict(saved["model"])
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    opt.load_state_dict(saved["optimizer"])
    from sharpcli.workload.data import load_dataset

    data = load_dataset("mnist1d", train_size=64, test_size=32)
    x, y = data.x_train, data.y_train
    with sharpcli.Tracker(model, mse_loss, x, y, optimizer=opt, run_dir=run, every=10,
                          checkpoint_every=20, test=(data.x_test, data.y_test), resume=True) as t:
        for step in range(20, 41):
            opt.zero_grad()
            mse_loss(model(x), y).backward()
            t.step(step)
            if step < 40:
                opt.step()
    lines = csv_lines(run / "metrics.csv")
    assert without_column(lines, "seconds") == without_column(csv_lines(whole / "metrics.csv"),
                                                              "seconds")
    seconds = pd.read_csv(run / "metrics.csv")["seconds"]
    assert seconds.is_monotonic_increasing  # the clock carried over from the checkpoint


def test_nothing_is_written_outside_run_dir(tmp_path):
    """Checkpoints go to <run_dir>/checkpoints, and `sharp spectrum` finds them from the
    run folder, the checkpoints folder or a file, writing its rows into the run folder.
    (Old main wrote them to <run_dir>/../../checkpoints/<name>.)"""
    run = tmp_path / "a" / "b" / "run"
    default_run_by_hand(run, steps=20, every=10, checkpoint_every=10)
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert all(p.parts[:3] == ("a", "b", "run") for p in written), written
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-00000000.pt", "step-00000010.pt", "step-00000020.pt"]
    from sharpcli.formats.runs import checkpoint_files
    from sharpcli.workload.targets import expand_targets, report_dir_for

    assert [p.name for p in checkpoint_files(run)] == [f"step-{s:08d}.pt" for s in (0, 10, 20)]
    config = json.loads((run / "config.json").read_text())
    for arg in (run, run / "checkpoints", run / "checkpoints" / "step-00000010.pt"):
        for target in expand_targets([arg]):
            assert report_dir_for(target, config).resolve() == run.resolve()


def test_an_unconverged_measurement_is_flagged_and_warned_about_once(tmp_path):
    """max_iter too small for tol: every measured row says sharpness_converged 0, and one
    warning says so. (Old main threw the solver's verdict away.)"""
    model, loss_fn, x, y = BN_MSE()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(UserWarning) as caught:
        with sharpcli.Tracker(model, loss_fn, x, y, optimizer=opt, run_dir=tmp_path / "r",
                              every=1, eval_every=2, tol=1e-12, max_iter=3) as tracker:
            for step in range(3):
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                tracker.step(step)
                opt.step()
    messages = [str(w.message) for w in caught if "did not reach tol" in str(w.message)]
    assert len(messages) == 1 and "max_iter=3" in messages[0], [str(w.message) for w in caught]
    frame = pd.read_csv(tmp_path / "r" / "metrics.csv")
    assert frame["sharpness_converged"].tolist() == [0, 0, 0]
    assert frame.columns[-2:].tolist() == ["sharpness_converged", "seconds"]


def test_max_memory_bounds_the_solver_and_keeps_the_sharpness(tmp_path):
    """A budget of 4 vectors of the MLP's 490 parameters (the least λ₁ runs in) makes every
    measurement a thick-restart Lanczos; λ₁ agrees with the unbudgeted run's to its tol."""
    default_run_by_hand(tmp_path / "free", every=10)
    default_run_by_hand(tmp_path / "tight", every=10, max_memory=4 * 490 * 4, tol=1e-3)
    free = pd.read_csv(tmp_path / "free" / "metrics.csv").dropna(subset=["sharpness"])
    tight = pd.read_csv(tmp_path / "tight" / "metrics.csv").dropna(subset=["sharpness"])
    assert len(free) == len(tight) == STEPS // 10 + 1
    assert (tight["sharpness_converged"] == 1).all()
    assert np.allclose(tight["sharpness"], free["sharpness"], rtol=2e-3, atol=0)


@pytest.mark.parametrize("value, k, words", [
    ("lots", 1, ["max_memory", "lots"]),
    (7 * 490 * 4, 2, ["max_memory", "7 vectors", "k=2", "minimum of 8"]),
])
def test_a_budget_too_small_or_unreadable_is_refused_at_once(tmp_path, value, k, words):
    model = nn.Linear(48, 10)  # 490 parameters
    x, y = torch.randn(8, 48), torch.randn(8, 10)
    with pytest.raises(SharpError) as err:
        sharpcli.Tracker(model, nn.functional.mse_loss, x, y, run_dir=tmp_path / "r", k=k,
                         max_memory=value)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert not (tmp_path / "r").exists()


def test_chunk_size_with_a_source_of_batches_is_refused(tmp_path):
    """A source comes in its own batches: a chunk size would be ignored."""
    model = nn.Linear(48, 10)
    x, y = torch.randn(8, 48), torch.randn(8, 10)
    with pytest.raises(SharpError, match="^chunk_size batches in-memory examples"):
        sharpcli.Tracker(model, nn.functional.mse_loss, [(x, y)], run_dir=tmp_path / "r",
                         chunk_size=4)
    assert not (tmp_path / "r").exists()
