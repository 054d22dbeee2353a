"""`sharp summarize`: grouping by setting, mean ± std over seeds, CSV / table / markdown."""

import math

import pandas as pd
import pytest

from sharpcli.errors import SharpError
from sharpcli.formats.runs import write_run
from sharpcli.analysis.summarize import format_mean_std, setting_of, summarize, to_markdown
from tests.runners import assert_one_line_error, sharp

# Two settings × three seeds. Each run logs test_acc at steps 0, 10, 20 and sharpness at
# 0 and 10 (step 20 has no sharpness: the final sharpness is the step-10 value).
#                   final test acc      best test acc (step 10)   final sharpness
RUNS = {
    ("gd", 0): dict(final=0.90, best=0.91, sharp=10.0),
    ("gd", 1): dict(final=0.92, best=0.95, sharp=12.0),
    ("gd", 2): dict(final=0.94, best=0.96, sharp=14.0),
    ("sam", 0): dict(final=0.93, best=0.94, sharp=5.0),
    ("sam", 1): dict(final=0.95, best=0.95, sharp=6.0),
    ("sam", 2): dict(final=0.94, best=0.97, sharp=7.0),
}
# By hand, mean and sample std (ddof = 1):
#   gd  final: (0.90 + 0.92 + 0.94)/3 = 0.92; deviations −0.02, 0, 0.02 → √(0.0008/2) = 0.02
#   gd  best : (0.91 + 0.95 + 0.96)/3 = 0.94; deviations −0.03, 0.01, 0.02 → √(0.0014/2) = 0.026458
#   gd  λ₁   : (10 + 12 + 14)/3 = 12; √((4 + 0 + 4)/2) = 2
#   sam final: (0.93 + 0.95 + 0.94)/3 = 0.94; deviations −0.01, 0.01, 0 → √(0.0002/2) = 0.01
#   sam best : (0.94 + 0.95 + 0.97)/3 = 0.953333; √((0.013333² + 0.003333² + 0.016667²)/2) = 0.015275
#   sam λ₁   : 6; √((1 + 0 + 1)/2) = 1
EXPECTED = {
    "gd": dict(final=(0.92, 0.02), best=(0.94, 0.026458), sharp=(12.0, 2.0)),
    "sam": dict(final=(0.94, 0.01), best=(0.953333, 0.015275), sharp=(6.0, 1.0)),
}


def config(optimizer, seed, **extra):
    c = {"dataset": "mnist1d", "model": "mlp", "optimizer": optimizer, "lr": 0.1,
         "rho": 0.05 if optimizer == "sam" else 0.0, "steps": 20, "seed": seed,
         "run_name": f"{optimizer}-s{seed}", "device": "auto", "resolved_device": "cpu",
         "versions": {"torch": f"2.{seed}"}, "num_params": 1234}
    c.update(extra)
    return c


def rows(final, best, sharp):
    return [{"step": 0, "test_acc": 0.1, "sharpness": 1.0},
            {"step": 10, "test_acc": best, "sharpness": sharp},
            {"step": 20, "test_acc": final}]


@pytest.fixture
def reports(tmp_path):
    """reports/<exp>/<run>: gd runs under exp-a, sam runs under exp-b/nested."""
    root = tmp_path / "reports"
    for (optimizer, seed), v in RUNS.items():
        where = root / "exp-a" if optimizer == "gd" else root / "exp-b" / "nested"
        write_run(where / f"{optimizer}-s{seed}", config(optimizer, seed), rows(**v))
    return root


def test_means_and_stds_by_hand(reports):
    s = summarize([reports])
    t = s.table.set_index("optimizer")
    assert s.settings == ["optimizer", "rho"]  # seed, run_name, versions... are ignored
    assert list(t.index) == ["gd", "sam"]
    assert t["n_seeds"].tolist() == [3, 3]
    for optimizer, expected in EXPECTED.items():
        for stem, key in [("final_test_acc", "final"), ("best_test_acc", "best"),
                          ("final_sharpness", "sharp")]:
            mean, std = expected[key]
            assert t.loc[optimizer, f"{stem}_mean"] == pytest.approx(mean, abs=1e-6)
            assert t.loc[optimizer, f"{stem}_std"] == pytest.approx(std, abs=1e-6)


def test_grouping_ignores_seed_and_run_name_only(reports, tmp_path):
    # a run that differs in lr is a new setting, even with a seed the others have
    write_run(reports / "exp-a" / "gd-lr", config("gd", 0, lr=0.2, run_name="gd-lr"),
              rows(0.5, 0.6, 30.0))
    s = summarize([reports])
    assert s.settings == ["lr", "optimizer", "rho"]
    # sorted by lr, then optimizer: (0.1, gd), (0.1, sam), (0.2, gd)
    assert s.table["n_seeds"].tolist() == [3, 3, 1]
    single = s.table.iloc[2]
    assert single["lr"] == 0.2 and single["final_test_acc_mean"] == 0.5
    assert math.isnan(single["final_test_acc_std"])  # one seed: no std
    # --ignore folds lr into the setting
    s = summarize([reports], ignore=["lr"])
    assert s.table["n_seeds"].tolist() == [4, 3]


def test_setting_of():
    c = config("sam", 3)
    assert setting_of(c) == {"dataset": "mnist1d", "model": "mlp", "optimizer": "sam",
                             "lr": 0.1, "rho": 0.05, "steps": 20}
    assert "steps" not in setting_of(c, ignore=["steps"])


def test_flags_the_optimizer_never_reads_do_not_split_groups(tmp_path):
    write_run(tmp_path / "a", config("gd", 0, rho=0.05), rows(0.9, 0.9, 1.0))
    write_run(tmp_path / "b", config("gd", 1, rho=0.1), rows(0.9, 0.9, 1.0))
    write_run(tmp_path / "c", config("sam", 0, rho=0.1), rows(0.9, 0.9, 1.0))
    assert summarize([tmp_path]).table["n_seeds"].tolist() == [2, 1]


def test_int_and_float_values_are_one_setting(tmp_path):
    write_run(tmp_path / "a", config("gd", 0, lr=1), rows(0.9, 0.9, 1.0))
    write_run(tmp_path / "b", config("gd", 1, lr=1.0), rows(0.9, 0.9, 1.0))
    assert summarize([tmp_path]).table["n_seeds"].tolist() == [2]


def test_format_mean_std():
    assert format_mean_std(0.932, 0.001, 100, 1) == "93.2 ± 0.1"
    assert format_mean_std(0.95, math.nan, 100, 1) == "95.0"
    assert format_mean_std(39.83, 0.412) == "39.8 ± 0.4"  # three significant digits
    assert format_mean_std(1.234, 0.05) == "1.23 ± 0.05"
    assert format_mean_std(math.nan, math.nan) == "–"


def test_markdown(reports, tmp_path):
    result = sharp("summarize", reports, "--format", "markdown", "--out", tmp_path / "s.csv").ok()
    out = result.stdout
    assert out.splitlines() == [
        "| optimizer | rho | n | final test acc (%) | best test acc (%) | final λ₁ |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        "| gd | – | 3 | 92.0 ± 2.0 | 94.0 ± 2.6 | 12.0 ± 2.0 |",  # rho: unused by gd
        "| sam | 0.05 | 3 | 94.0 ± 1.0 | 95.3 ± 1.5 | 6.00 ± 1.00 |",
    ]
    assert f"wrote {tmp_path / 's.csv'}" in result.stderr  # stdout stays pure markdown
    assert to_markdown(summarize([reports])) == out


def test_csv_and_terminal_table(reports, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = sharp("summarize", reports / "exp-a", reports / "exp-b").ok().stdout
    assert "92.0 ± 2.0" in out and "6 runs in 2 settings" in out
    df = pd.read_csv(tmp_path / "summary.csv")  # the default --out
    assert list(df.columns) == ["optimizer", "rho", "n_seeds", "final_test_acc_mean",
                                "final_test_acc_std", "best_test_acc_mean", "best_test_acc_std",
                                "final_sharpness_mean", "final_sharpness_std", "runs"]
    assert df["final_test_acc_mean"].tolist() == pytest.approx([0.92, 0.94])
    assert df["runs"][0].count(";") == 2


def test_single_run_dir_and_incomplete_runs(reports, tmp_path):
    run = reports / "exp-a" / "gd-s0"
    s = summarize([run])
    assert s.settings == [] and s.table["n_seeds"].tolist() == [1]
    # a run that has logged nothing yet is left out, with a warning
    (reports / "exp-a" / "starting").mkdir()
    (reports / "exp-a" / "starting" / "config.json").write_text("{}")
    err = sharp("summarize", reports, "--out", tmp_path / "s.csv").ok().stderr
    assert "skipped" in err and "starting" in err


def test_repeated_seed_warns(tmp_path):
    write_run(tmp_path / "r" / "a", config("gd", 0), rows(0.9, 0.9, 1.0))
    write_run(tmp_path / "r" / "b", config("gd", 0, run_name="again"), rows(0.9, 0.9, 1.0))
    err = sharp("summarize", tmp_path / "r", "--out", tmp_path / "s.csv").ok().stderr
    assert "same setting and seed" in err


def test_errors(tmp_path):
    assert_one_line_error(sharp("summarize", tmp_path / "nope"), 2, "does not exist")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(sharp("summarize", tmp_path / "empty"), 2, "no run directories")
    write_run(tmp_path / "bad", config("gd", 0), rows(0.9, 0.9, 1.0))
    pd.read_csv(tmp_path / "bad" / "metrics.csv").drop(columns=["test_acc"]).to_csv(
        tmp_path / "bad" / "metrics.csv", index=False)
    assert_one_line_error(sharp("summarize", tmp_path / "bad"), 2, "lacks columns test_acc")
    with pytest.raises(SharpError):
        summarize([tmp_path / "empty"])
