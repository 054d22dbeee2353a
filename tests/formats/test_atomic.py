"""Writes that a crash cannot leave half done: checkpoints and JSON through a temporary file
and a rename, CSV rows appended whole; a full disk is a clear error, never a corrupt file;
--keep-last bounds the checkpoints kept."""

import errno
import json
import os

import pytest
import torch

import sharpcli.formats.atomic
import sharpcli.training.tracker
from sharpcli.formats.atomic import atomic_write, atomic_write_json
from sharpcli.formats.checkpoints import list_checkpoints, read_checkpoint, save_checkpoint
from sharpcli.formats.csvlog import CsvLog
from sharpcli.errors import SharpError
from tests.runners import (METRICS_FIELDS, assert_one_line_error, csv_lines, sharp, train_args,
                           without_column)


class FailingFile:
    """A file that takes `budget` bytes, then raises `error` on the next write."""

    def __init__(self, f, budget: int, error: BaseException):
        self._f, self.budget, self.error = f, budget, error

    def write(self, data):
        if len(data) > self.budget:
            self._f.write(bytes(data[:self.budget]) if isinstance(data, (bytes, bytearray, memoryview))
                          else data[:self.budget])
            self.budget = 0
            raise self.error
        self.budget -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


def fail_writes(monkeypatch, budget: int, error: BaseException, only=lambda fd: True):
    """Every file atomic_write opens (for which `only(fd)`) fails after `budget` bytes."""
    real = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real(fd, mode, *args, **kwargs)
        return FailingFile(f, budget, error) if only(fd) else f

    monkeypatch.setattr(sharpcli.formats.atomic.os, "fdopen", fdopen)


def temp_files(folder):
    return sorted(p.name for p in folder.rglob("*.tmp"))


def disk_full():
    return OSError(errno.ENOSPC, "No space left on device")


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Linear(400, 50)  # ~80 kB: torch.save writes it in several pieces


def save(path, step, model):
    save_checkpoint(path, step=step, epoch=0.0, config={"dataset": "mnist1d"}, model=model,
                    optimizer=None)


# ---------------------------------------------------------------- crash in the middle

@pytest.mark.parametrize("error", [RuntimeError("simulated crash"), KeyboardInterrupt()],
                         ids=["exception", "ctrl-c"])
def test_crash_mid_write_keeps_the_old_file(tmp_path, error):
    target = tmp_path / "config.json"
    atomic_write_json(target, {"old": True})

    def write(f):
        f.write('{"new": ')
        raise error

    with pytest.raises(type(error)):
        atomic_write(target, write, mode="w")
    assert json.loads(target.read_text()) == {"old": True}
    assert temp_files(tmp_path) == []


def test_crash_mid_write_of_a_new_file_leaves_nothing(tmp_path):
    def write(f):
        f.write(b"half")
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "new.pt", write)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("budget", [0, 100, 20_000])
def test_crash_mid_checkpoint_keeps_the_old_checkpoint(tmp_path, monkeypatch, budget):
    path = tmp_path / "step-00000010.pt"
    save(path, 10, tiny_model())
    fail_writes(monkeypatch, budget, RuntimeError("simulated crash"))
    with pytest.raises(RuntimeError):
        save(path, 20, torch.nn.Linear(400, 50))
    assert read_checkpoint(path)["step"] == 10
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.6, 0.99])
def test_a_cut_checkpoint_never_loads(tmp_path, fraction):
    """What a crash without atomic writes would leave: never readable as a checkpoint."""
    path = tmp_path / "step-00000010.pt"
    save(path, 10, tiny_model())
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(SharpError, match="not a readable checkpoint"):
        read_checkpoint(path)


def test_unexpected_error_mid_run_leaves_complete_files(tmp_path, monkeypatch):
    """A bug (here: the third λ₁ measurement raises) keeps its traceback, and what was written
    before it is whole: complete rows, loadable checkpoints, no temporary files."""
    real, calls = sharpcli.training.tracker.measure_sharpness, []

    def third_call_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(sharpcli.training.tracker, "measure_sharpness", third_call_fails)
    with pytest.raises(RuntimeError, match="simulated bug"):
        sharp(*train_args(tmp_path, "r", "--steps", "10", "--sharpness-every", "2",
                          "--eval-every", "2", "--checkpoint-every", "1"))
    lines = csv_lines(tmp_path / "reports" / "r" / "metrics.csv")
    assert len(lines) == 3 and all(len(line.split(",")) == METRICS_FIELDS for line in lines)
    saved = list_checkpoints(tmp_path / "checkpoints" / "r")
    assert [read_checkpoint(p)["step"] for p in saved] == [0, 1, 2, 3, 4]
    assert temp_files(tmp_path) == []


# ---------------------------------------------------------------- full disk

@pytest.mark.parametrize("budget", [0, 100, 20_000])
def test_full_disk_during_checkpoint(tmp_path, monkeypatch, budget):
    """torch.save turns a failed write into a RuntimeError; it must still read "disk full"."""
    path = tmp_path / "step-00000010.pt"
    save(path, 10, tiny_model())
    fail_writes(monkeypatch, budget, disk_full())
    with pytest.raises(SharpError, match="no space left on the device while writing .*step-00000010.pt"):
        save(path, 20, torch.nn.Linear(400, 50))
    assert read_checkpoint(path)["step"] == 10
    assert temp_files(tmp_path) == []


def test_full_disk_during_json(tmp_path, monkeypatch):
    fail_writes(monkeypatch, 5, disk_full())
    with pytest.raises(SharpError, match="no space left"):
        atomic_write_json(tmp_path / "config.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_full_disk_during_a_csv_row(tmp_path):
    """Half a row reached the disk before it filled: it is cut off again, and rows written
    once there is room are whole."""
    log = CsvLog(tmp_path / "m.csv", ["step", "value"]).open(fresh=True)
    log.write({"step": 0, "value": 1.5})
    real = log._file
    log._file = FailingFile(real, 3, disk_full())
    with pytest.raises(SharpError, match="no space left"):
        log.write({"step": 1, "value": 2.5})
    assert (tmp_path / "m.csv").read_text() == "step,value\n0,1.5\n"
    log._file = real
    log.write({"step": 2, "value": 3.5})
    log.close()
    assert (tmp_path / "m.csv").read_text() == "step,value\n0,1.5\n2,3.5\n"


def test_full_disk_through_the_cli(tmp_path, monkeypatch):
    """sharp train on a full disk: the one-line error, exit 2, no partial checkpoint."""
    fail_writes(monkeypatch, 1000, disk_full(),
                only=lambda fd: os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp")
                and ".pt." in os.readlink(f"/proc/self/fd/{fd}"))
    result = sharp(*train_args(tmp_path, "r", "--steps", "4"))
    assert_one_line_error(result, 2, "no space left on the device", "step-00000000.pt",
                          "--resume")
    assert list_checkpoints(tmp_path / "checkpoints" / "r") == []
    assert temp_files(tmp_path) == []
    assert csv_lines(tmp_path / "reports" / "r" / "metrics.csv") == [
        ",".join(["step", "epoch", "phase", "lr", "rho", "train_loss", "train_acc", "test_loss",
                  "test_acc", "grad_norm", "sharpness", "alignment", "gd_edge", "sam_edge",
                  "preconditioned_sharpness", "adaptive_edge", "batch_sharpness",
                  "sharpness_converged", "seconds"])]


# ---------------------------------------------------------------- resume after a crash

def test_resume_drops_a_half_written_row(tmp_path):
    """A row cut short at the end of metrics.csv (power loss mid-write) is not kept."""
    flags = ["--sharpness-every", "2", "--eval-every", "2", "--checkpoint-every", "2"]
    assert sharp(*train_args(tmp_path, "r", "--steps", "4", *flags)).code == 0
    metrics = tmp_path / "reports" / "r" / "metrics.csv"
    with open(metrics, "a") as f:
        f.write("3,3.0,gd,0.3,,0.5")
    assert sharp(*train_args(tmp_path, "r", "--steps", "8", *flags, "--resume")).code == 0
    assert sharp(*train_args(tmp_path, "ref", "--steps", "8", *flags)).code == 0
    resumed = csv_lines(metrics)
    reference = csv_lines(tmp_path / "reports" / "ref" / "metrics.csv")
    assert without_column(resumed, "seconds") == without_column(reference, "seconds")


def test_resume_of_a_run_logged_by_an_older_sharpcli(tmp_path):
    """metrics.csv from before the adaptive columns existed: --resume keeps its rows, gives
    them the new columns (empty) and goes on as an uninterrupted run."""
    flags = ["--sharpness-every", "2", "--eval-every", "2", "--checkpoint-every", "2"]
    assert sharp(*train_args(tmp_path, "r", "--steps", "4", *flags)).code == 0
    metrics = tmp_path / "reports" / "r" / "metrics.csv"
    old = ["preconditioned_sharpness", "adaptive_edge", "batch_sharpness"]
    lines = csv_lines(metrics)
    for column in old:
        lines = without_column(lines, column)
    metrics.write_text("\n".join(lines) + "\n")
    assert sharp(*train_args(tmp_path, "r", "--steps", "8", *flags, "--resume")).code == 0
    assert sharp(*train_args(tmp_path, "ref", "--steps", "8", *flags)).code == 0
    reference = csv_lines(tmp_path / "reports" / "ref" / "metrics.csv")
    assert without_column(csv_lines(metrics), "seconds") == without_column(reference, "seconds")


# ---------------------------------------------------------------- --keep-last

def test_keep_last_bounds_the_checkpoints(tmp_path):
    assert sharp(*train_args(tmp_path, "r", "--steps", "7", "--checkpoint-every", "1",
                             "--keep-last", "2", "--sharpness-every", "0")).code == 0
    kept = list_checkpoints(tmp_path / "checkpoints" / "r")
    assert [p.name for p in kept] == ["step-00000006.pt", "step-00000007.pt"]
