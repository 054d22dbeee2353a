"""The CLI parses and prints; the rules live in the library (docs/development.md#layout).
Each command's outcome is checked against the one library function it calls: `sharp train`
→ `sharpcli.recipes.train_config` then `train`, `sharp eos` → `edge_calculator` or `eos_runs`,
`sharp summarize` → `summarize`, `sharp plot` → `plot_runs`, `sharp spectrum` → `run_spectrum`,
`sharp flow` → `run_flow`."""

import pandas as pd
import pytest

from sharpcli.analysis.eos import eos_runs
from sharpcli.analysis.plots import plot_runs
from sharpcli.analysis.summarize import summarize
from sharpcli.config import TrainConfig
from sharpcli.edges import edge_calculator
from sharpcli.errors import SharpError
from sharpcli.formats.runs import write_run
from sharpcli.recipes import recipe_config, train_config
from tests.runners import sharp

CONFIG = {"optimizer": "gd", "lr": 0.1, "momentum": 0.0, "nesterov": False, "rho": 0.05,
          "batch_size": None, "sam_start": None, "steps": 100, "epochs": None,
          "run_name": None, "checkpoints_dir": "checkpoints", "loss": "mse"}


def toy_run(root, name, seed=0, level=1.0):
    """A gd run whose λ₁ climbs to `level` × 2/η (2/η = 20) and stays there."""
    rows = [{"step": s, "phase": "gd", "lr": 0.1, "grad_norm": 0.2, "gd_edge": 20.0,
             "sharpness": 20.0 * level * min(1.0, 0.3 + s / 50), "train_loss": 1 / (1 + s),
             "train_acc": 0.5, "test_loss": 1.0, "test_acc": 0.4 + 0.01 * seed}
            for s in range(0, 101, 10)]
    return write_run(root / "reports" / name, {**CONFIG, "seed": seed, "run_name": name}, rows)


def test_train_config_zero_sizes_mean_the_whole_split():
    config = TrainConfig(train_size=0, test_size=0)
    assert config.train_size is None and config.test_size is None
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert train_config({"train_size": 0}) == TrainConfig(train_size=None)


@pytest.mark.parametrize("argv, explicit", [
    (["--recipe", "cohen-cifar5k-fc-tanh", "--lr", "0.02", "--train-size", "0"],
     dict(lr=0.02, train_size=0)),
    (["--recipe", "late-sam-cifar10-resnet18", "--optimizer", "sgd", "--steps", "5"],
     dict(optimizer="sgd", steps=5)),
    (["--train-size", "0", "--lr", "0.2"], None),
])
def test_train_runs_the_config_the_library_resolves(monkeypatch, argv, explicit):
    seen = []
    monkeypatch.setattr("sharpcli.training.loop.train",
                        lambda config, progress=None, dist=None: seen.append(config))
    sharp("train", *argv, "--quiet").ok()
    if explicit is None:
        assert seen == [TrainConfig(train_size=None, lr=0.2, quiet=True)]
    else:
        assert seen == [recipe_config(argv[1], **explicit, quiet=True)]
        settings = {**TrainConfig().to_dict(), "recipe": argv[1], **explicit, "quiet": True}
        assert seen == [train_config(settings, given=["recipe", *explicit, "quiet"])]


def test_eos_calculator_prints_the_library_edges():
    for argv, kwargs in [(["--lr", "0.1", "--rho", "0.05", "--grad-norm", "0.3"],
                          dict(rho=0.05, grad_norm=0.3)),
                         (["--lr", "0.1", "--momentum", "0.9", "--nesterov"],
                          dict(momentum=0.9, nesterov=True)),
                         (["--lr", "0.1", "--optimizer", "adam"], dict(optimizer="adam"))]:
        printed = sharp("eos", *argv).ok().stdout.splitlines()
        assert printed == [edge.line() for edge in edge_calculator(0.1, **kwargs)]


def test_edge_calculator_errors_name_the_arguments():
    with pytest.raises(SharpError, match="^lr must be positive"):
        edge_calculator(0.0)
    with pytest.raises(SharpError, match="give grad_norm with rho"):
        edge_calculator(0.1, rho=0.05)


def test_eos_writes_what_the_library_computes(tmp_path):
    runs = [toy_run(tmp_path, "at", level=1.02), toy_run(tmp_path, "below", level=0.5)]
    out = sharp("eos", *runs, "--out", tmp_path / "eos").stdout
    report = eos_runs(runs, write=False)
    for run, result in zip(runs, report.results):
        written = pd.read_csv(tmp_path / "eos" / run.name / "eos.csv")
        pd.testing.assert_frame_equal(written, result.table, check_dtype=False)
        assert f"wrote {tmp_path / 'eos' / run.name / 'eos.csv'}" in out
    assert [r.summary.verdict for r in report.results] == ["at-edge", "below-edge"]


def test_summarize_writes_what_the_library_computes(tmp_path):
    for seed in (0, 1):
        toy_run(tmp_path, f"gd-seed{seed}", seed=seed)
    sharp("summarize", tmp_path / "reports", "--out", tmp_path / "cli.csv").ok()
    summary = summarize([tmp_path / "reports"], out=tmp_path / "lib.csv")
    assert summary.written == tmp_path / "lib.csv"
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "cli.csv").drop(columns="runs"),
                                  pd.read_csv(tmp_path / "lib.csv").drop(columns="runs"))


def test_plot_writes_what_the_library_draws(tmp_path):
    run = toy_run(tmp_path, "gd")
    printed = sharp("plot", run, "--only", "sharpness", "--out", tmp_path / "cli").ok().stdout
    drawn = plot_runs([run], tmp_path / "lib", only=["sharpness"]).written
    assert printed.split() == ["wrote", str(tmp_path / "cli" / "sharpness.png")]
    assert [p.name for p in drawn] == ["sharpness.png"]


@pytest.fixture(scope="module")
def gd_run(tmp_path_factory):
    """A tiny sharp train run with checkpoints at steps 0, 3 and 6."""
    from tests.runners import train_args

    root = tmp_path_factory.mktemp("thin")
    sharp(*train_args(root, "gd", "--steps", "6", "--checkpoint-every", "3", "--lr", "0.5")).ok()
    return root / "reports" / "gd"


def test_spectrum_writes_what_the_library_computes(gd_run, tmp_path):
    from sharpcli.spectra.config import SpectrumConfig
    from sharpcli.spectra.run import run_spectrum

    sharp("spectrum", gd_run, "--top-k", "2", "--trace", "--quiet", "--out", tmp_path / "cli.csv").ok()
    run_spectrum([gd_run], SpectrumConfig(top_k=2, trace=True), out=tmp_path / "lib.csv")
    cli, lib = (pd.read_csv(tmp_path / f"{n}.csv").drop(columns="seconds") for n in ("cli", "lib"))
    pd.testing.assert_frame_equal(cli, lib)


def test_flow_writes_what_the_library_computes(gd_run, tmp_path):
    from sharpcli.flows.config import FlowConfig
    from sharpcli.flows.run import run_flow

    sharp("flow", gd_run, "--substeps", "2", "--quiet", "--out", tmp_path / "cli").ok()
    rows = run_flow(gd_run, FlowConfig(substeps=2), out=tmp_path / "lib")
    cli = pd.read_csv(tmp_path / "cli" / "flow.csv").drop(columns="seconds")
    lib = pd.DataFrame(rows).drop(columns="seconds")
    pd.testing.assert_frame_equal(cli, lib[list(cli.columns)], check_dtype=False)
