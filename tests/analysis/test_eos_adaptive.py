"""`sharp eos` choosing its measure (docs/guides/eos.md#measure): λ₁(P⁻¹H) against the adaptive edge in adam,
adamw and rmsprop phases, the batch sharpness against the GD edge in sgd phases that measured
it, `--measure` overriding; the calculator's adaptive edges; the figure and the summary.
Runs are built here to sit at the edge by one measure and far below it by the other."""

import numpy as np
import pandas as pd
import pytest

from sharpcli.analysis.eos import eos_run
from sharpcli.analysis.plots import plot_runs
from sharpcli.analysis.summarize import summarize
from sharpcli.formats.runs import write_run
from sharpcli.formats.schema import EOS_COLUMNS
from tests.runners import assert_one_line_error, sharp

LR = 1e-3  # Adam's edge 38/η = 38000; RMSProp's 2/η = 2000


def config(optimizer, **overrides):
    return {"optimizer": optimizer, "lr": LR, "momentum": 0.0, "nesterov": False, "beta1": 0.9,
            "rho": 0.05, "batch_size": None, "sam_start": None, "steps": 200, "epochs": None,
            "seed": 0, "run_name": None, "loss": "mse", **overrides}


def rows(phase, edge, measured, raw=20.0, seed=0, **columns):
    """Rows every 10 steps whose `measured` column climbs to `edge` and hovers within ±5%,
    its first cell empty (no optimizer state at step 0); λ₁ stays at `raw`."""
    rng = np.random.default_rng(seed)
    out = []
    for i, step in enumerate(range(0, 210, 10)):
        ratio = min(1.0, 0.3 + 0.1 * i) + (0.05 * rng.uniform(-1, 1) if i > 7 else 0.0)
        out.append({"step": step, "phase": phase, "lr": columns.get("lr", LR), "grad_norm": 0.1,
                    "sharpness": raw, "train_loss": 1.0, "test_acc": 0.5,
                    measured: None if i == 0 else ratio * edge})
    return out


@pytest.fixture
def adaptive_runs(tmp_path):
    reports = tmp_path / "reports"
    return {
        "adam": write_run(reports / "adam", config("adam"),
                          rows("adam", 38 / LR, "preconditioned_sharpness")),
        "rmsprop": write_run(reports / "rmsprop", config("rmsprop", momentum=0.5),
                             rows("rmsprop", 3 / LR, "preconditioned_sharpness")),
        # minibatch SGD at η = 0.1: batch sharpness at 2/η = 20, λ₁ at 5
        "sgd": write_run(reports / "sgd", config("sgd", lr=0.1, batch_size=16),
                         rows("sgd", 20.0, "batch_sharpness", raw=5.0, lr=0.1)),
    }


def test_adaptive_phases_are_measured_by_preconditioned_sharpness(adaptive_runs):
    for name, edge in [("adam", 38 / LR), ("rmsprop", 3 / LR)]:
        result = eos_run(adaptive_runs[name])
        t = result.table
        assert tuple(t.columns) == EOS_COLUMNS
        assert (t["measure"] == "preconditioned_sharpness").all() and t["step"].iloc[0] == 10
        assert np.allclose(t["edge"], edge) and np.allclose(t["ratio"], t["sharpness"] / edge)
        assert result.summary.edges == "adaptive" and result.summary.verdict == "at-edge"


def test_sgd_with_batch_sharpness_is_measured_by_it(adaptive_runs):
    result = eos_run(adaptive_runs["sgd"])
    assert (result.table["measure"] == "batch_sharpness").all()
    assert np.allclose(result.table["edge"], 20.0)  # the GD edge of η = 0.1
    assert result.summary.edges == "batch" and result.summary.verdict == "at-edge"


def test_measure_overrides(adaptive_runs):
    # λ₁ of the same runs, against the GD edge: far below it
    raw = eos_run(adaptive_runs["sgd"], measure="sharpness")
    assert (raw.table["measure"] == "sharpness").all() and len(raw.table) == 21
    assert raw.summary.edges == "GD" and raw.summary.verdict == "below-edge"
    adam = eos_run(adaptive_runs["adam"], measure="sharpness")
    assert np.allclose(adam.table["edge"], 2 / LR) and adam.summary.verdict == "below-edge"
    out = sharp("eos", adaptive_runs["sgd"], "--measure", "sharpness").ok().stdout
    assert "below-edge" in out
    assert (pd.read_csv(adaptive_runs["sgd"] / "eos.csv")["measure"] == "sharpness").all()
    line = assert_one_line_error(sharp("eos", adaptive_runs["adam"], "--measure",
                                       "batch_sharpness"), 2, "no batch_sharpness")
    assert "--batch-sharpness" in line


def test_sgd_without_batch_sharpness_keeps_lambda_one(tmp_path):
    path = write_run(tmp_path / "plain", config("sgd", lr=0.1, batch_size=16),
                     rows("sgd", 20.0, "sharpness", raw=20.0, lr=0.1))
    result = eos_run(path)
    assert (result.table["measure"] == "sharpness").all() and result.summary.edges == "GD"


def test_adaptive_edge_computed_from_config_when_the_row_lacks_it(adaptive_runs, tmp_path):
    metrics = pd.read_csv(adaptive_runs["adam"] / "metrics.csv").drop(columns=["adaptive_edge"])
    path = write_run(tmp_path / "b", config("adam", beta1=0.5), metrics)
    assert np.allclose(eos_run(path).table["edge"], 3 / (0.5 * LR))  # (2 + 2β₁)/((1 − β₁)η)


@pytest.mark.parametrize("args,expected", [
    (["--lr", "1e-3", "--optimizer", "adam", "--beta1", "0.9"], "adaptive_edge 38000"),
    (["--lr", "1e-3", "--optimizer", "adamw"], "adaptive_edge 38000"),
    (["--lr", "0.01", "--optimizer", "adam", "--beta1", "0.5"], "adaptive_edge 600"),
    (["--lr", "0.01", "--optimizer", "rmsprop"], "adaptive_edge 200"),
    (["--lr", "0.01", "--optimizer", "rmsprop", "--momentum", "0.9"], "adaptive_edge 380"),
])
def test_calculator_prints_the_adaptive_edge(args, expected):
    out = sharp("eos", *args).ok().stdout
    assert out.startswith(expected) and "gd_edge" not in out


@pytest.mark.parametrize("args,needle", [
    (["--lr", "0.1", "--beta1", "0.9"], "--beta1"),
    (["--lr", "0.1", "--optimizer", "adam", "--momentum", "0.9"], "--momentum"),
    (["--lr", "0.1", "--optimizer", "adam", "--beta1", "1"], "--beta1"),
    (["--lr", "0.1", "--optimizer", "rmsprop", "--rho", "0.05"], "--rho"),
    (["--lr", "0.1", "--measure", "sharpness"], "--measure"),
])
def test_calculator_errors(args, needle):
    assert_one_line_error(sharp("eos", *args), 2, needle)


def test_preconditioned_figure_and_batch_line(adaptive_runs, tmp_path):
    result = plot_runs([adaptive_runs["adam"]], dpi=20, only=["sharpness", "preconditioned"])
    assert [p.name for p in result.written] == ["sharpness.png", "preconditioned.png"]
    result = plot_runs([adaptive_runs["sgd"]], dpi=20, only=["sharpness", "preconditioned"])
    assert [p.name for p in result.written] == ["sharpness.png"]
    assert "adam" in result.skipped["preconditioned"]
    both = plot_runs(list(adaptive_runs.values()), tmp_path / "all", dpi=20)
    assert {p.name for p in both.written} >= {"sharpness.png", "preconditioned.png"}


def test_summary_reports_the_final_preconditioned_sharpness(adaptive_runs):
    s = summarize([adaptive_runs["adam"].parent])
    assert "final_preconditioned_sharpness_mean" in s.table
    by_optimizer = s.table.set_index("optimizer")["final_preconditioned_sharpness_mean"]
    assert by_optimizer["adam"] == pytest.approx(
        pd.read_csv(adaptive_runs["adam"] / "metrics.csv")["preconditioned_sharpness"].iloc[-1])
    assert np.isnan(by_optimizer["sgd"])
    # only where present: a summary of the sgd run alone has no such column
    assert "final_preconditioned_sharpness_mean" not in summarize([adaptive_runs["sgd"]]).table
