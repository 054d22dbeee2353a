"""`sharp sweep GRID`: a 2 × 2 grid as 4 Slurm array tasks chosen by $SLURM_ARRAY_TASK_ID;
--count and --list; a finished task rerun does nothing; a task stopped by a real SIGTERM and
rerun (a requeue) ends with the metrics of an uninterrupted one; a task as a torchrun job
equals one process; `sharp summarize` over the sweep's reports groups the seeds; bad grids
and bad modes are one line, exit 2."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import pandas as pd
import pytest

from tests.runners import (Outcome, assert_one_line_error, csv_lines, sharp, start_sharp,
                           without_column)
from tests.test_distributed import assert_same_rows, metrics, torchrun
from tests.test_interrupt import SignalAfterRows

TRAIN = """
[train]
train-size = 64
test-size = 32
width = 8
steps = {steps}
eval-every = {every}
sharpness-every = {every}
checkpoint-every = {every}
device = "cpu"
"""
GRID = """
[grid]
lr = [0.1, 0.2]
seed = [0, 1]
"""
NAMES = ["demo-lr0.1-seed0", "demo-lr0.1-seed1", "demo-lr0.2-seed0", "demo-lr0.2-seed1"]


def write_grid(root: Path, *, steps: int = 20, every: int = 5, name: str = "demo",
               grid: str = GRID, extra: str = "") -> Path:
    path = root / "grid.toml"
    path.write_text(f'[sweep]\nname = "{name}"\nreports-dir = "{root / "reports"}"\n'
                    f'checkpoints-dir = "{root / "checkpoints"}"\n'
                    + TRAIN.format(steps=steps, every=every) + extra + grid)
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The 2 × 2 grid's 4 tasks, each run as a Slurm array task: $SLURM_ARRAY_TASK_ID = i."""
    root = tmp_path_factory.mktemp("sweep")
    grid = write_grid(root)
    with pytest.MonkeyPatch.context() as patch:
        for i in range(4):
            patch.setenv("SLURM_ARRAY_TASK_ID", str(i))
            sharp("sweep", grid).ok()
    return root, grid


def test_count_and_list(swept):
    _, grid = swept
    assert sharp("sweep", grid, "--count").ok().stdout == "4\n"
    lines = sharp("sweep", grid, "--list").ok().stdout.splitlines()
    fixed = ("--train-size 64 --test-size 32 --width 8 --steps 20 --eval-every 5 "
             "--sharpness-every 5 --checkpoint-every 5 --device cpu")
    assert lines == [f"{i}\t{name}\t{fixed} --lr {lr} --seed {seed}"
                     for i, (name, (lr, seed)) in enumerate(zip(NAMES, [(0.1, 0), (0.1, 1), (0.2, 0), (0.2, 1)]))]


def test_each_array_task_trains_its_setting_under_its_name(swept):
    root, _ = swept
    assert sorted(p.name for p in (root / "reports").iterdir()) == NAMES
    for name, (lr, seed) in zip(NAMES, [(0.1, 0), (0.1, 1), (0.2, 0), (0.2, 1)]):
        frame = pd.read_csv(root / "reports" / name / "metrics.csv")
        assert frame["step"].tolist() == [0, 5, 10, 15, 20]
        assert (frame["lr"] == lr).all()
        config = pd.read_json(root / "reports" / name / "config.json", typ="series")
        assert (config["seed"], config["run_name"]) == (seed, name)


def test_a_finished_task_rerun_does_nothing(swept):
    root, grid = swept
    files = sorted(p for d in ("reports", "checkpoints") for p in (root / d / NAMES[2]).rglob("*"))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    result = sharp("sweep", grid, "--task-id", "2").ok()
    assert "demo-lr0.2-seed0" in result.stdout and "nothing to do" in result.stdout
    after = sorted(p for d in ("reports", "checkpoints") for p in (root / d / NAMES[2]).rglob("*"))
    assert after == files
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in after} == before


def test_summarize_groups_the_seeds_of_each_learning_rate(swept, tmp_path):
    root, _ = swept
    out = tmp_path / "summary.csv"
    result = sharp("summarize", root / "reports", "--out", out).ok()
    table = pd.read_csv(out)
    assert table["lr"].tolist() == [0.1, 0.2] and table["n_seeds"].tolist() == [2, 2]
    for lr, names in ((0.1, NAMES[:2]), (0.2, NAMES[2:])):
        finals = [pd.read_csv(root / "reports" / n / "metrics.csv")["sharpness"].iloc[-1] for n in names]
        row = table[table["lr"] == lr].iloc[0]
        assert row["final_sharpness_mean"] == pytest.approx(sum(finals) / 2, rel=1e-9)
    assert "0.1" in result.stdout and "0.2" in result.stdout


@pytest.mark.slow
def test_a_task_stopped_by_sigterm_and_rerun_equals_an_uninterrupted_one(tmp_path):
    """Slurm's --signal=TERM@60, then the requeued task: exit 130 with a checkpoint, and the
    rerun resumes to the uninterrupted run's metrics.csv (but for the seconds column)."""
    stopped, reference = tmp_path / "stopped", tmp_path / "reference"
    for root in (stopped, reference):
        root.mkdir()
        write_grid(root, steps=300, every=10)
    csv = stopped / "reports" / NAMES[1] / "metrics.csv"
    term = SignalAfterRows(start_sharp("sweep", stopped / "grid.toml", "--task-id", "1", cwd=stopped),
                           csv, 2, signal.SIGTERM)
    code, err = term.finish()
    assert_one_line_error(Outcome(code, "", err), 130, "stopped by SIGTERM", "saved")
    assert len(csv_lines(csv)) < 32  # stopped before the end
    sharp("sweep", stopped / "grid.toml", "--task-id", "1").ok()
    sharp("sweep", reference / "grid.toml", "--task-id", "1").ok()
    lines = [without_column(csv_lines(root / "reports" / NAMES[1] / "metrics.csv"), "seconds")
             for root in (stopped, reference)]
    assert lines[0] == lines[1] and len(lines[0]) == 32  # the header and steps 0, 10, ..., 300


@pytest.mark.slow
def test_a_task_as_a_torchrun_job_equals_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for root in (one, two):
        root.mkdir()
        # float64, as test_distributed's equality claims (its RTOL): float32 rounding is
        # summed in another order by two processes
        write_grid(root, steps=10, every=5, extra='precision = "fp64"\n')
    sharp("sweep", one / "grid.toml", "--task-id", "3").ok()
    result = torchrun("-m", "sharpcli", "sweep", two / "grid.toml", "--task-id", "3", cwd=two)
    assert result.returncode == 0, result.stderr
    assert_same_rows(metrics(one, NAMES[3]), metrics(two, NAMES[3]))


@pytest.mark.slow
def test_all_in_processes_passes_sigterm_on_and_a_rerun_completes_the_sweep(tmp_path):
    """`--all --jobs 2`: both tasks run at once, each its own process; SIGTERM to the sweep
    reaches the running tasks, which checkpoint (exit 130); `--all` again completes both."""
    grid = write_grid(tmp_path, steps=300, every=10, grid="[grid]\nseed = [0, 1]\n")
    csv = tmp_path / "reports" / "demo-seed1" / "metrics.csv"
    code, err = SignalAfterRows(start_sharp("sweep", grid, "--all", "--jobs", "2", cwd=tmp_path),
                                csv, 2, signal.SIGTERM).finish()
    assert code == 130, err
    assert err.splitlines()[-1].startswith("error: stopped by SIGTERM; tasks "), err
    assert "demo-seed1/step-" in err  # the task's own line: its checkpoint
    sharp("sweep", grid, "--all").ok()
    for seed in (0, 1):
        lines = csv_lines(tmp_path / "reports" / f"demo-seed{seed}" / "metrics.csv")
        assert len(lines) == 32 and lines[-1].startswith("300,")


@pytest.mark.parametrize("body, words", [
    ("[train]\nlr = 0.1\n[grid]\nseeds = [0, 1]\n", ["[grid]", "'seeds'", "not a flag"]),
    ("[train]\ntrain_size = 10\n", ["'train_size'", "not a flag"]),
    ("[train]\nrun-name = 'x'\n", ["run-name", "the sweep sets"]),
    ("[grid]\nlr = 0.1\n", ["[grid] lr", "non-empty list"]),
    ("[grid]\nlr = [0.1, 0.1]\n", ["share the run name", "lr0.1"]),
    ("[trian]\nlr = 0.1\n", ["unknown section 'trian'"]),
    ("[sweep]\nfolder = 'x'\n", ["[sweep]", "'folder'", "reports-dir"]),
    ("[train]\nlr = 0.1\n[grid]\nlr = [0.2]\n", ["'lr'", "both [train] and [grid]"]),
    ("[train]\nlr = [0.1\n", ["not valid TOML"]),
    ("[train]\nsteps = 1.5\n", ["[train] steps = 1.5", "--steps takes a whole number"]),
    ("[grid]\nnesterov = [1, 0]\n", ["[grid] nesterov = 1", "--nesterov takes true or false"]),
    ("[grid]\nlr = ['big']\n", ["[grid] lr = 'big'", "--lr takes a number"]),
])
def test_bad_grids_are_one_line(tmp_path, body, words):
    grid = tmp_path / "grid.toml"
    grid.write_text(body)
    assert_one_line_error(sharp("sweep", grid, "--count"), 2, *words)


@pytest.mark.parametrize("args, words", [
    ([], ["--task-id", "SLURM_ARRAY_TASK_ID"]),
    (["--task-id", "4"], ["task id 4", "0..3"]),
    (["--count", "--list"], ["--count and --list"]),
    (["--task-id", "0", "--jobs", "2"], ["--jobs", "--all"]),
])
def test_bad_modes_are_one_line(tmp_path, monkeypatch, args, words):
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    assert_one_line_error(sharp("sweep", write_grid(tmp_path), *args), 2, *words)
    assert not (tmp_path / "reports").exists()


def test_a_missing_grid_file_is_one_line(tmp_path):
    assert_one_line_error(sharp("sweep", tmp_path / "nope.toml", "--count"), 2, "does not exist")


def test_a_task_trains_the_config_sharp_train_resolves_from_its_flags(tmp_path, monkeypatch):
    """`sharp sweep GRID --task-id I` is `sharp train` with task I's flags (as --list prints
    them, a recipe's included) and its run name, folders and --resume."""
    extra = '\nrecipe = "cohen-cifar5k-fc-tanh"\nnesterov = true\n'
    grid = write_grid(tmp_path, extra=extra)
    seen = []
    monkeypatch.setattr("sharpcli.training.loop.train",
                        lambda config, progress=None, dist=None: seen.append(config))
    sharp("sweep", grid, "--task-id", "3", "--quiet")
    _, name, flags = sharp("sweep", grid, "--list").ok().stdout.splitlines()[3].split("\t")
    sharp("train", *flags.split(), "--run-name", name, "--reports-dir", tmp_path / "reports",
          "--checkpoints-dir", tmp_path / "checkpoints", "--resume", "--quiet")
    assert len(seen) == 2 and seen[0] == dataclasses.replace(seen[1], quiet=False)
    assert (seen[0].recipe, seen[0].nesterov, seen[0].lr, seen[0].seed) == ("cohen-cifar5k-fc-tanh", True, 0.2, 1)


def test_run_names_are_short_exact_and_folder_safe(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text('[grid]\nlr = [1, 0.1234567, 1e-5]\nnesterov = [true, false]\n'
                    'activation = ["a b/c"]\n')
    lines = sharp("sweep", grid, "--list").ok().stdout.splitlines()
    assert [line.split("\t")[1] for line in lines] == [
        f"g-{lr}-{n}-activation-a_b_c" for lr in ("lr1", "lr0.1234567", "lr1e-05")
        for n in ("nesterov", "no-nesterov")]
    assert lines[0].split("\t")[2] == "--lr 1.0 --nesterov --activation 'a b/c'"


def test_a_run_stopped_by_its_stop_loss_has_ended(tmp_path):
    """A task whose run met --stop-loss has ended, as one that reached its last step: a rerun
    of the sweep leaves its files alone."""
    grid = write_grid(tmp_path, extra="stop-loss = 100.0\n", grid="[grid]\nseed = [0]\n")
    sharp("sweep", grid, "--task-id", "0").ok()
    run = tmp_path / "reports" / "demo-seed0"
    assert pd.read_csv(run / "metrics.csv")["step"].tolist() == [0]  # stopped at once
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert "nothing to do" in sharp("sweep", grid, "--task-id", "0").ok().stdout
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before
