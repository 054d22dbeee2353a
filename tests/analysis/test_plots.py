"""`sharp plot`: the PNGs exist, are valid, and hold what they should."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from sharpcli.edges import sam_edge
from sharpcli.errors import SharpError
from sharpcli.analysis.plots import figures, plot_runs
from sharpcli.formats.runs import load_run, write_run
from tests.runners import assert_one_line_error, sharp

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run(path: Path, optimizer="gd", sam_start=None, alignment=True, density=False):
    """A run at η = 0.1 whose λ₁ climbs to 2/η = 20; with SAM from `sam_start` it drops to
    the SAM edge (ρ = 0.05)."""
    rng = np.random.default_rng(0)
    rows = []
    for step in range(0, 210, 10):
        sam = optimizer == "sam" and (sam_start is None or step >= sam_start)
        g = 0.3 * (1 + 0.1 * rng.uniform(-1, 1))
        edge = sam_edge(0.1, 0.05, g) if sam else 20.0
        rows.append({"step": step, "epoch": float(step), "phase": "sam" if sam else "gd",
                     "lr": 0.1, "rho": 0.05 if sam else None, "grad_norm": g,
                     "sharpness": min(5 + step / 5, edge) * (1 + 0.03 * rng.uniform(-1, 1)),
                     "alignment": rng.uniform(0, 1) if alignment else None,
                     "train_loss": 1 / (1 + step / 20), "test_loss": 1.2 / (1 + step / 25),
                     "train_acc": 1 - 0.9 * np.exp(-step / 50), "test_acc": 0.8 - 0.7 * np.exp(-step / 50)})
    config = {"optimizer": optimizer, "lr": 0.1, "momentum": 0.0, "nesterov": False, "rho": 0.05,
              "sam_start": sam_start, "seed": 0}
    write_run(path, config, rows)
    if density:
        grid = np.linspace(-2, 25, 80)
        frames = [pd.DataFrame({"checkpoint": f"step-{s:08d}.pt", "step": s, "eigenvalue": grid,
                                "density": np.exp(-grid ** 2) + 0.05 * np.exp(-(grid - s / 10) ** 2)})
                  for s in (0, 100, 200)]
        pd.concat(frames).to_csv(path / "density.csv", index=False)
    return path


def assert_png(path: Path, min_size=(100, 100)):
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        img.load()  # decodes the whole image: a truncated file fails here
        assert img.format == "PNG"
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1]
        return img.size


def test_single_run_writes_every_figure_into_its_folder(tmp_path):
    run = make_run(tmp_path / "reports" / "late", optimizer="sam", sam_start=100, density=True)
    out = sharp("plot", run, "--dpi", "40").ok().stdout
    for name in ("sharpness", "loss", "alignment", "density"):
        path = run / f"{name}.png"
        assert f"wrote {path}" in out
        assert_png(path)
    # sharpness.png is an 8 × 5 inch figure: 320 × 200 pixels at 40 dpi
    assert assert_png(run / "sharpness.png") == (320, 200)


def test_missing_data_skips_figures(tmp_path):
    run = make_run(tmp_path / "plain", alignment=False)
    out = sharp("plot", run, "--dpi", "20", "--only", "alignment", "--only", "density").ok().stdout
    assert "skipped alignment" in out and "skipped density" in out and "wrote" not in out
    assert not (run / "alignment.png").exists() and not (run / "density.png").exists()


def test_several_runs_make_one_combined_set(tmp_path):
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", optimizer="sam", density=True)
    # default folder: the first run's, names prefixed compare-
    out = sharp("plot", a, b, "--dpi", "20", "--only", "sharpness").ok().stdout
    assert out == f"wrote {a / 'compare-sharpness.png'}\n"
    assert_png(a / "compare-sharpness.png", min_size=(150, 90))
    assert not (a / "sharpness.png").exists()  # the run's own figures are left alone
    out_dir = tmp_path / "figs"
    sharp("plot", a, b, "--out", out_dir, "--dpi", "20", "--log-scale").ok()
    assert sorted(p.name for p in out_dir.iterdir()) == ["alignment.png", "density.png",
                                                         "loss.png", "sharpness.png"]
    for path in out_dir.iterdir():
        assert_png(path, min_size=(100, 80))


def test_figure_contents(tmp_path):
    runs = [load_run(make_run(tmp_path / "exp1" / "gd")),
            load_run(make_run(tmp_path / "exp1" / "sam", optimizer="sam", density=True))]
    figs = figures(runs, log_scale=True)
    ax = figs["sharpness"].axes[0]
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "step" and "λ₁" in ax.get_ylabel()
    texts = [t.get_text() for legend in _legends(ax) for t in legend.get_texts()]
    assert {"gd", "sam", "sharpness λ₁", "GD edge 2/η", "SAM edge"} <= set(texts)
    loss_ax, acc_ax = figs["loss"].axes
    assert loss_ax.get_yscale() == "log" and acc_ax.get_ylabel() == "accuracy (%)"
    # accuracies are drawn in percent
    assert max(line.get_ydata().max() for line in acc_ax.get_lines()) > 1.5
    density_ax = figs["density"].axes[0]
    assert "sam" in density_ax.get_title()
    assert {t.get_text() for t in density_ax.get_legend().get_texts()} >= {"step 0", "step 200"}


def test_single_run_sharpness_has_both_edges(tmp_path):
    run = load_run(make_run(tmp_path / "late", optimizer="sam", sam_start=100))
    ax = figures([run])["sharpness"].axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert np.allclose(lines["GD edge 2/η"].get_ydata(), 20.0)
    sam_steps = lines["SAM edge"].get_xdata()
    assert sam_steps.min() == 100  # the SAM edge is drawn over the SAM phase only
    assert np.all(lines["SAM edge"].get_ydata() < 20.0)


def _legends(ax):
    return [a for a in ax.get_children() if a.__class__.__name__ == "Legend"]


def test_errors(tmp_path):
    assert_one_line_error(sharp("plot", tmp_path / "missing"), 2, "does not exist")
    run = make_run(tmp_path / "bad")
    pd.read_csv(run / "metrics.csv").drop(columns=["test_acc"]).to_csv(run / "metrics.csv",
                                                                       index=False)
    assert_one_line_error(sharp("plot", run), 2, "lacks columns test_acc")


def test_library_returns_paths(tmp_path):
    run = make_run(tmp_path / "r")
    result = plot_runs([run], dpi=20, only=["sharpness", "density"])
    assert result.written == [run / "sharpness.png"]
    assert set(result.skipped) == {"density"}
    with pytest.raises(SharpError, match="unknown figure"):
        plot_runs([run], only=["nope"])


def write_block_densities(path: Path, steps=(0, 200)):
    """density.csv with the whole network's density and three blocks', as `sharp spectrum
    --blocks … --density` writes it."""
    grid = np.linspace(-1, 6, 50)
    frames = [pd.DataFrame({"checkpoint": f"step-{s:08d}.pt", "step": s, "eigenvalue": grid,
                            "density": np.exp(-(grid - i) ** 2) + 1e-3, "block": block})
              for s in steps for i, block in enumerate(["all", "h.0.attn.query",
                                                        "h.0.attn.key", "h.0.mlp.c_fc"])]
    pd.concat(frames).to_csv(path / "density.csv", index=False)


def test_blocks_figure_sets_the_block_densities_side_by_side(tmp_path):
    run = make_run(tmp_path / "gpt")
    write_block_densities(run)
    fig = figures([load_run(run)], only=["blocks"])["blocks"]
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["h.0.attn.query", "h.0.attn.key", "h.0.mlp.c_fc"]
    assert all(len(ax.get_lines()) == 2 and ax.get_yscale() == "log" for ax in panels)
    assert {t.get_text() for t in panels[0].get_legend().get_texts()} == {"step 0", "step 200"}
    # the density figure keeps to the whole network's rows
    density_ax = figures([load_run(run)], only=["density"])["density"].axes[0]
    assert [line.get_label() for line in density_ax.get_lines()] == ["step 0", "step 200",
                                                                     "GD edge 2/η"]
    out = sharp("plot", run, "--only", "blocks", "--dpi", "30").ok().stdout
    assert out == f"wrote {run / 'blocks.png'}\n"
    assert_png(run / "blocks.png", min_size=(200, 60))
    # several runs: each run's last checkpoint, one colour per run
    other = make_run(tmp_path / "other")
    write_block_densities(other, steps=(0, 100, 300))
    fig = figures([load_run(run), load_run(other)], only=["blocks"])["blocks"]
    assert {t.get_text() for t in fig.axes[0].get_legend().get_texts()} == {"gpt", "other"}


def test_blocks_figure_is_skipped_without_block_densities(tmp_path):
    """A density.csv written before the block column is the whole network's."""
    run = make_run(tmp_path / "old", density=True)
    assert "block" not in pd.read_csv(run / "density.csv").columns
    out = sharp("plot", run, "--only", "blocks", "--only", "density", "--dpi", "20").ok().stdout
    assert "skipped blocks: no block densities" in out and "wrote" in out
