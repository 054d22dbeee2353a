"""`sharp eos`: edges per measured step, verdicts, eos.csv, the CLI and its errors.

The metrics files are built here to sit at, below or above the edge, so the expected
verdicts are known by construction."""

import math

import numpy as np
import pandas as pd
import pytest

from sharpcli.edges import gd_edge, sam_edge
from sharpcli.analysis.eos import edge_table, eos_run, summarize_edges
from sharpcli.errors import SharpError
from sharpcli.formats.runs import write_run
from sharpcli.formats.schema import EOS_COLUMNS
from tests.helpers import dense_hessian
from tests.runners import assert_one_line_error, sharp, start_sharp, train_args

LR = 0.1  # GD edge 2/η = 20


def base_config(**overrides):
    config = {"optimizer": "gd", "lr": LR, "momentum": 0.0, "nesterov": False, "rho": 0.05,
              "batch_size": None, "sam_start": None, "steps": 400, "epochs": None, "seed": 0,
              "run_name": None, "checkpoints_dir": "checkpoints", "loss": "mse"}
    config.update(overrides)
    return config


def climb_then(level_fn, steps=range(0, 410, 10), climb_until=150, start=0.25, seed=0):
    """λ₁/edge: a linear climb from `start` to 1 by `climb_until`, then level_fn(step, noise)."""
    rng = np.random.default_rng(seed)
    ratios = []
    for s in steps:
        noise = rng.uniform(-1, 1)
        if s <= climb_until:
            ratios.append(start + (1 - start) * s / climb_until)
        else:
            ratios.append(level_fn(s, noise))
    return list(steps), ratios


def gd_rows(ratios_fn, write_edges=True, **kw):
    steps, ratios = climb_then(ratios_fn, **kw)
    rows = []
    for s, r in zip(steps, ratios):
        row = {"step": s, "epoch": float(s), "phase": "gd", "lr": LR, "grad_norm": 0.2,
               "sharpness": 20.0 * r, "train_loss": 1.0 / (1 + s), "test_acc": 0.5}
        if write_edges:
            row["gd_edge"] = 20.0
        rows.append(row)
    return rows


def at_edge(s, noise):  # hovers within ±5% of 2/η
    return 1 + 0.05 * noise


def above_edge(s, noise):  # keeps climbing past the edge, to 1.6 × 2/η
    return 1 + 0.6 * (s - 150) / 250 + 0.02 * noise


def settle_below(s, noise):  # reaches the edge, then drops to half of it (e.g. lr decay)
    return (1 + 0.03 * noise) if s < 200 else 0.5 + 0.02 * noise


def sam_rows(seed=1):
    """A full-batch SAM run (η = 0.1, ρ = 0.05) whose λ₁ climbs to the SAM edge and hovers
    within ±5% of it; ‖g‖ wanders around 0.3, so the edge moves (≈ 8.36 at ‖g‖ = 0.3).
    gd_edge / sam_edge are left empty: eos computes them from lr, rho and grad_norm."""
    rng = np.random.default_rng(seed)
    steps, ratios = climb_then(at_edge, seed=seed)
    rows = []
    for s, r in zip(steps, ratios):
        g = 0.3 * (1 + 0.2 * rng.uniform(-1, 1))
        rows.append({"step": s, "phase": "sam", "lr": LR, "rho": 0.05, "grad_norm": g,
                     "sharpness": r * sam_edge(LR, 0.05, g)})
    return rows


@pytest.fixture
def runs(tmp_path):
    """reports/ with the four canonical runs."""
    reports = tmp_path / "reports"
    paths = {
        "at": write_run(reports / "at", base_config(run_name="at"), gd_rows(at_edge)),
        "below": write_run(reports / "below", base_config(run_name="below"),
                           gd_rows(lambda s, n: 0.6 + 0.02 * n, start=0.2, climb_until=10_000)),
        "above": write_run(reports / "above", base_config(run_name="above"), gd_rows(above_edge)),
        "sam": write_run(reports / "sam", base_config(optimizer="sam", run_name="sam"), sam_rows()),
    }
    return paths


# --- the library ------------------------------------------------------------------------

def test_verdicts_by_construction(runs):
    verdicts = {name: eos_run(path).summary.verdict for name, path in runs.items()}
    assert verdicts == {"at": "at-edge", "below": "below-edge", "above": "above-edge",
                        "sam": "at-edge"}


def test_at_edge_summary(runs):
    s = eos_run(runs["at"]).summary
    # the climb reaches ratio 0.9 at step 130: 0.25 + 0.75 · 130/150 = 0.9
    assert s.edge_step == 130
    assert s.in_band == 1.0  # the hover is within ±5%, the band ±10%
    assert 0.95 <= s.median_ratio <= 1.05
    assert s.n_measured == 41 and s.edges == "GD"


def test_below_edge_never_reached(runs):
    s = eos_run(runs["below"]).summary
    assert s.edge_step is None and s.in_band is None and s.median_ratio is None
    assert s.max_ratio < 0.9


def test_sam_run_is_measured_against_the_sam_edge(runs):
    result = eos_run(runs["sam"])
    t = result.table
    assert (t["phase"] == "sam").all() and result.summary.edges == "SAM"
    # computed from each row's lr, rho and ‖g‖ ...
    expected = [sam_edge(LR, 0.05, g) for g in t["grad_norm"]]
    assert np.allclose(t["sam_edge"], expected)
    assert np.allclose(t["edge"], t["sam_edge"])
    assert np.allclose(t["gd_edge"], 20.0)
    # ... and far below the GD edge: against 2/η this run would be below-edge
    assert (t["sharpness"] / t["gd_edge"]).max() < 0.5


def test_edge_table_columns_and_rows(runs):
    metrics = pd.read_csv(runs["at"] / "metrics.csv")
    metrics.loc[metrics["step"] % 20 == 10, "sharpness"] = np.nan  # measured every 20 steps
    table = edge_table(metrics, base_config())
    assert tuple(table.columns) == EOS_COLUMNS
    assert list(table["step"]) == list(range(0, 410, 20))  # only measured rows
    assert np.allclose(table["ratio"], table["sharpness"] / 20.0)
    assert list(table["at_edge"]) == list((table["ratio"] - 1).abs() <= 0.1)


def test_edges_computed_from_config_when_the_row_lacks_them():
    metrics = pd.DataFrame({"step": [0, 10], "phase": ["sgd", "sgd"], "lr": [0.1, np.nan],
                            "rho": [np.nan] * 2, "grad_norm": [1.0, 1.0],
                            "sharpness": [10.0, 10.0], "gd_edge": [np.nan] * 2,
                            "sam_edge": [np.nan] * 2})
    # heavy ball β = 0.9: (2 + 1.8)/η; row 2 has no lr, so the config's η = 0.2 applies
    table = edge_table(metrics, base_config(lr=0.2, momentum=0.9))
    assert table["gd_edge"].tolist() == pytest.approx([38.0, 19.0])
    assert table["sam_edge"].isna().all()  # no rho outside SAM phases
    nesterov = edge_table(metrics, base_config(lr=0.2, momentum=0.9, nesterov=True))
    assert nesterov["gd_edge"].tolist() == pytest.approx([gd_edge(0.1, 0.9, True),
                                                          gd_edge(0.2, 0.9, True)])


def test_rows_without_a_learning_rate_have_no_edge(tmp_path):
    # a cosine schedule ends at lr 0: no edge there, and the verdict ignores that row
    rows = gd_rows(at_edge)
    rows[-1]["lr"], rows[-1]["gd_edge"] = 0.0, None
    result = eos_run(write_run(tmp_path / "cos", base_config(schedule="cosine"), rows))
    assert math.isnan(result.table["edge"].iloc[-1]) and not result.table["at_edge"].iloc[-1]
    assert result.summary.n_measured == len(rows) - 1
    assert result.summary.verdict == "at-edge"
    # no lr anywhere: a clear error
    rows = [{"step": 0, "phase": "gd", "sharpness": 1.0}]
    with pytest.raises(SharpError, match="positive lr"):
        eos_run(write_run(tmp_path / "nolr", base_config(lr=None), rows))


def test_late_phase_sam_switches_edges(tmp_path):
    rows = gd_rows(at_edge)[:25]  # steps 0..240 at the GD edge
    for row in sam_rows()[25:]:   # steps 250..400 at the SAM edge
        rows.append(row)
    path = write_run(tmp_path / "late", base_config(optimizer="sam", sam_start=250), rows)
    result = eos_run(path)
    assert result.summary.edges == "GD+SAM" and result.summary.verdict == "at-edge"
    t = result.table.set_index("step")
    assert t.loc[240, "edge"] == pytest.approx(20.0)
    assert t.loc[250, "edge"] == pytest.approx(t.loc[250, "sam_edge"])


@pytest.mark.parametrize("ratios,verdict", [
    ([0.5, 0.95, 1.0, 1.05, 0.98], "at-edge"),
    ([0.5, 0.95, 0.5, 0.5, 0.5], "below-edge"),   # reached, then settled below
    ([0.5, 0.95, 1.3, 1.4, 1.5], "above-edge"),   # median after reaching 1.3 > 1.1
    ([0.5, 0.95, 1.2, 0.8, 1.2], "above-edge"),   # out of band, more often above
    ([0.5, 0.95, 1.2, 0.8, 0.8], "below-edge"),   # out of band, more often below
    ([0.5, 0.95, 1.2, 0.8], "below-edge"),        # a tie goes to below-edge
    ([0.5, 0.6, 0.7], "below-edge"),              # never reached
    ([0.5, 0.9], "at-edge"),                      # 0.9 is within a band of 0.1
])
def test_verdict_rule(ratios, verdict):
    table = pd.DataFrame({"step": range(len(ratios)), "phase": "gd", "ratio": ratios})
    assert summarize_edges(table, band=0.1).verdict == verdict


def test_threshold_and_band_are_checked():
    table = pd.DataFrame({"step": range(4), "phase": "gd", "ratio": [0.95, 1.0, 1.3, 1.3]})
    # half of the measurements after reaching the edge are in the band, median 1.15
    assert summarize_edges(table, band=0.1, threshold=0.5).verdict == "above-edge"
    assert summarize_edges(table, band=0.2, threshold=0.5).verdict == "at-edge"
    with pytest.raises(SharpError):
        summarize_edges(table, band=0.0)
    with pytest.raises(SharpError):
        summarize_edges(table, threshold=1.5)


# --- the CLI ------------------------------------------------------------------------------

def test_cli_writes_eos_csv_and_prints_the_verdicts(runs):
    out = sharp("eos", *runs.values()).ok().stdout
    for name, verdict in [("at", "at-edge"), ("below", "below-edge"), ("above", "above-edge")]:
        assert verdict in out and name in out
        df = pd.read_csv(runs[name] / "eos.csv")
        assert tuple(df.columns) == EOS_COLUMNS
        assert df["sharpness"].notna().all()
        assert df["at_edge"].dtype == bool


def test_cli_strict(runs):
    sharp("eos", "--strict", runs["at"], runs["sam"]).ok()
    assert_one_line_error(sharp("eos", "--strict", runs["at"], runs["above"]), 1, "above")
    assert (runs["above"] / "eos.csv").exists()  # the tables are written all the same


def test_cli_band_changes_the_verdict(runs):
    # ±5% noise around the edge: inside a band of 0.1, mostly outside a band of 0.01
    assert sharp("eos", "--band", "0.01", "--strict", runs["at"]).code == 1


def test_cli_out(runs, tmp_path):
    one = tmp_path / "one.csv"
    sharp("eos", runs["at"], "--out", one).ok()
    assert tuple(pd.read_csv(one).columns) == EOS_COLUMNS
    sharp("eos", runs["at"], runs["sam"], "--out", tmp_path / "many").ok()
    assert (tmp_path / "many" / "at" / "eos.csv").exists()
    assert (tmp_path / "many" / "sam" / "eos.csv").exists()


def test_cli_run_name_under_reports(runs, monkeypatch):
    monkeypatch.chdir(runs["at"].parent.parent)
    assert "at-edge" in sharp("eos", "at").ok().stdout


def test_calculator():
    out = sharp("eos", "--lr", "0.1", "--rho", "0.05", "--grad-norm", "0.3").ok().stdout
    assert "gd_edge  20" in out and "sam_edge 8.35782" in out
    out = sharp("eos", "--lr", "0.1").ok().stdout
    assert "gd_edge  20" in out and "sam_edge" not in out
    out = sharp("eos", "--lr", "0.1", "--momentum", "0.9", "--nesterov").ok().stdout
    assert "13.5714" in out and "(2+2β)/(η(1+2β))" in out
    assert "gd_edge  38" in sharp("eos", "--lr", "0.1", "--momentum", "0.9").ok().stdout


@pytest.mark.parametrize("args,needle", [
    (["eos"], "--lr"),
    (["eos", "--lr", "0.1", "--rho", "0.05"], "--grad-norm"),
    (["eos", "--lr", "0", "--rho", "0.05", "--grad-norm", "1"], "--lr"),
    (["eos", "--lr", "0.1", "--grad-norm", "1"], "--rho"),
    (["eos", "--lr", "0.1", "--momentum", "1.5"], "--momentum"),
])
def test_calculator_errors(args, needle):
    assert_one_line_error(sharp(*args), 2, needle)


def test_missing_run_dir(tmp_path):
    assert_one_line_error(sharp("eos", tmp_path / "nope"), 2, "nope", "does not exist")


def test_bad_metrics(tmp_path):
    run = write_run(tmp_path / "bad", base_config(), gd_rows(at_edge))
    pd.read_csv(run / "metrics.csv").drop(columns=["sharpness", "lr"]).to_csv(
        run / "metrics.csv", index=False)
    assert_one_line_error(sharp("eos", run), 2, "lacks columns lr,sharpness")
    # no sharpness measured at all
    run = write_run(tmp_path / "unmeasured", base_config(),
                    [{"step": s, "phase": "gd", "lr": LR} for s in range(3)])
    assert_one_line_error(sharp("eos", run), 2, "no sharpness was measured")
    # a config without its metrics
    (run / "metrics.csv").unlink()
    assert_one_line_error(sharp("eos", run), 2, "metrics.csv is missing")


def test_calculator_flags_with_runs_are_an_error(runs):
    assert_one_line_error(sharp("eos", runs["at"], "--lr", "0.1"), 2, "--lr")


def test_end_to_end_subprocess(runs):
    """`python -m sharpcli` as scripts call it: output, stderr line and exit code."""
    strict = start_sharp("eos", "--strict", runs["at"], runs["below"])
    out, err = strict.communicate(timeout=120)
    assert strict.returncode == 1
    assert "at-edge" in out and "below-edge" in out
    assert err == "error: --strict: not at the edge (below: below-edge)\n"


# --- --from-checkpoints ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def late_sam_run(tmp_path_factory):
    """A real tiny run of late-phase SAM (gd for steps 0–1, SAM from step 2), checkpointed
    at steps 0, 2 and 4, with a cosine schedule so that each step has its own lr."""
    root = tmp_path_factory.mktemp("late")
    sharp(*train_args(root, "late", "--optimizer", "sam", "--sam-start", "2", "--steps", "4",
                      "--schedule", "cosine", "--checkpoint-every", "2", "--sharpness-every", "2",
                      "--eval-every", "2", "--sharpness-samples", "40")).ok()
    return root / "reports" / "late"


def _dense_truth(ckpt, n):
    """λ₁ of the dense float64 Hessian and ‖g‖ over the first n training examples."""
    import torch

    model = ckpt.model.double()
    x, y = (t[:n] for t in ckpt.data()[:2])
    x = x.double()
    lam = torch.linalg.eigvalsh(dense_hessian(model, ckpt.loss_fn, x, y)).max().item()
    loss = ckpt.loss_fn(model(x), y)
    g = torch.autograd.grad(loss, list(model.parameters()))
    return lam, torch.cat([t.reshape(-1) for t in g]).norm().item()


def test_measure_checkpoints_against_dense_hessians(late_sam_run):
    import sharpcli
    from sharpcli.training.revisit import measure_checkpoints

    df = measure_checkpoints(late_sam_run, tol=1e-6)
    logged = pd.read_csv(late_sam_run / "metrics.csv").set_index("step")
    assert df["step"].tolist() == [0, 2, 4]
    assert df["phase"].tolist() == ["gd", "sam", "sam"]  # the phase each step's row logged
    assert df["lr"].tolist() == [logged.loc[s, "lr"] for s in (0, 2, 4)]
    assert math.isnan(df["rho"][0]) and df["rho"][1] == 0.05
    for _, row in df.iterrows():
        ckpt = sharpcli.load_checkpoint(late_sam_run.parent.parent / "checkpoints" / "late"
                                        / f"step-{int(row['step']):08d}.pt")
        lam, gnorm = _dense_truth(ckpt, 40)  # the run's --sharpness-samples
        assert row["sharpness"] == pytest.approx(lam, rel=1e-5)
        assert row["grad_norm"] == pytest.approx(gnorm, rel=1e-5)
    # --samples overrides the run's setting; the edges follow the phases
    df = measure_checkpoints(late_sam_run, samples=64, tol=1e-6)
    t = eos_run(late_sam_run, metrics=df).table
    assert t["edge"][0] == pytest.approx(gd_edge(df["lr"][0]))
    assert t["edge"][1] == pytest.approx(sam_edge(df["lr"][1], 0.05, t["grad_norm"][1]))


def test_from_checkpoints_cli_end_to_end(late_sam_run, tmp_path):
    """`sharp eos --from-checkpoints` on a real run (its checkpoints load with weights_only):
    λ₁ at each checkpoint matches what training logged at the same step, on the same 40
    examples (the run's --sharpness-samples)."""
    out = sharp("eos", late_sam_run, "--from-checkpoints", "--out", tmp_path / "ck.csv",
                "--max-iter", "100", "--tol", "1e-4").ok().stdout
    assert "step-00000002.pt: λ₁=" in out and "wrote" in out
    from_ckpt = pd.read_csv(tmp_path / "ck.csv").set_index("step")
    logged = pd.read_csv(late_sam_run / "metrics.csv").set_index("step")
    assert list(from_ckpt.index) == [0, 2, 4]
    for step in from_ckpt.index:
        assert from_ckpt.loc[step, "sharpness"] == pytest.approx(logged.loc[step, "sharpness"],
                                                                 rel=1e-3)
