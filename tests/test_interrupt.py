"""Interruption by a real signal: SIGINT or SIGTERM during training or a spectrum run leaves
every finished CSV row complete and (training) a checkpoint of the current state, exits 130,
and `--resume` then reaches the metrics of an uninterrupted run exactly.

SIGTERM to a training run and SIGINT to a spectrum run come from outside, to real `sharp`
processes, at whatever point they have reached. The two signals share one handler
(sharpcli.interrupt.stop_on_signals), so SIGINT in training is sent by this process to itself
from inside the loop, at a chosen step: the same handler and the same stop, without a third
start-up of Python and torch (about 4 s of CPU). The subprocesses start together and the
in-process runs happen meanwhile, so that their start-up is paid once in wall time."""

import csv
import os
import re
import signal
import threading
import time

import pytest

import sharpcli.training.loop
from sharpcli.formats.checkpoints import checkpoint_path, list_checkpoints, read_checkpoint
from tests.runners import (METRICS_FIELDS, SPECTRUM_FIELDS, Outcome, assert_one_line_error,
                           csv_lines, sharp, start_sharp, train_args, without_column)

# Rows every 10 steps, so the signal comes at step ~10-30 of 300: the run is far from done.
# λ₁ at 0, 100, 200, 300: the resumed run's Lanczos starts from the vector saved at the stop.
FLAGS = ["--steps", "300", "--eval-every", "10", "--sharpness-every", "100",
         "--checkpoint-every", "100", "--device", "cpu"]
SIGNALS = [signal.SIGINT, signal.SIGTERM]
HOW = ["SIGINT-from-inside", "SIGTERM-from-outside"]


class SignalAfterRows(threading.Thread):
    """Sends `sig` to `proc` as soon as `csv_path` holds `rows` data rows."""

    def __init__(self, proc, csv_path, rows: int, sig):
        super().__init__(daemon=True)
        self.proc, self.csv_path, self.rows, self.sig = proc, csv_path, rows, sig
        self.sent = False
        self.start()

    def run(self):
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.csv_path.exists() and self.csv_path.read_text().count("\n") > self.rows:
                self.proc.send_signal(self.sig)
                self.sent = True
                return
            time.sleep(0.005)

    def finish(self):
        """(exit code, stderr) once the process has ended."""
        _, err = self.proc.communicate(timeout=300)
        self.join()
        assert self.sent, f"the process ended before it was signalled: {err}"
        return self.proc.returncode, err


def train_signalled_from_inside(root, sig, at_step: int):
    """`sharp train` in this process, raising `sig` while step `at_step` computes its
    gradient (the loop computes ‖g‖ once a step): the loop stops at the next step."""
    real, calls = sharpcli.training.loop.gradient_norm, []

    def signal_at_step(params):
        calls.append(1)
        if len(calls) == at_step + 1:
            signal.raise_signal(sig)
        return real(params)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sharpcli.training.loop, "gradient_norm", signal_at_step)
        result = sharp(*train_args(root, "r", *FLAGS))
    return result.code, result.stderr


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    roots = {sig: tmp_path_factory.mktemp(sig.name) for sig in SIGNALS}
    term = SignalAfterRows(start_sharp(*train_args(roots[signal.SIGTERM], "r", *FLAGS),
                                       cwd=roots[signal.SIGTERM]),
                           roots[signal.SIGTERM] / "reports" / "r" / "metrics.csv", 2,
                           signal.SIGTERM)

    # a run with many checkpoints, then its spectrum
    sroot = tmp_path_factory.mktemp("spectrum")
    assert sharp(*train_args(sroot, "s", "--steps", "60", "--sharpness-every", "0",
                             "--checkpoint-every", "3")).code == 0
    out = sroot / "spectrum.csv"
    proc = start_sharp("spectrum", sroot / "reports" / "s", "--top-k", "3", "--trace",
                       "--quiet", "--out", out, cwd=sroot)
    spectrum = SignalAfterRows(proc, out, 2, signal.SIGINT)

    reference = tmp_path_factory.mktemp("reference")
    assert sharp(*train_args(reference, "r", *FLAGS)).code == 0
    done = {signal.SIGINT: (roots[signal.SIGINT],
                            *train_signalled_from_inside(roots[signal.SIGINT], signal.SIGINT, 25)),
            signal.SIGTERM: (roots[signal.SIGTERM], *term.finish())}
    return reference, done, (out, *spectrum.finish())


def stop_step(stderr: str, sig) -> int:
    match = re.search(rf"stopped by {sig.name} at step (\d+)", stderr)
    assert match, stderr
    return int(match.group(1))


@pytest.mark.parametrize("sig", SIGNALS, ids=HOW)
def test_signal_saves_rows_and_checkpoint(jobs, sig):
    _, done, _ = jobs
    root, code, err = done[sig]
    assert_one_line_error(Outcome(code, "", err), 130, f"stopped by {sig.name}")
    step = stop_step(err, sig)
    lines = csv_lines(root / "reports" / "r" / "metrics.csv")
    assert len(lines) >= 3 and all(len(line.split(",")) == METRICS_FIELDS for line in lines)
    assert all(int(line.split(",")[0]) < step for line in lines[1:])
    saved = checkpoint_path(root / "checkpoints" / "r", step)
    assert saved in list_checkpoints(saved.parent) and f"saved {saved}" in err
    assert read_checkpoint(saved)["step"] == step


@pytest.mark.parametrize("sig", SIGNALS, ids=HOW)
def test_resume_reaches_the_uninterrupted_metrics(jobs, sig):
    reference, done, _ = jobs
    root = done[sig][0]
    assert sharp(*train_args(root, "r", *FLAGS, "--resume")).code == 0
    resumed = csv_lines(root / "reports" / "r" / "metrics.csv")
    expected = csv_lines(reference / "reports" / "r" / "metrics.csv")
    assert without_column(resumed, "seconds") == without_column(expected, "seconds")
    final = [read_checkpoint(r / "checkpoints" / "r" / "step-00000300.pt") for r in (root, reference)]
    for name, tensor in final[1]["model"].items():
        assert final[0]["model"][name].equal(tensor), name


def test_spectrum_interrupted(jobs):
    _, _, (out, code, err) = jobs
    assert_one_line_error(Outcome(code, "", err), 130, "interrupted")
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert out.read_text().endswith("\n")
    assert len(rows) >= 3 and all(len(row) == SPECTRUM_FIELDS for row in rows)


def ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


def sigterm(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # the handler interrupts this at once


@pytest.mark.parametrize("interrupt", [ctrl_c, sigterm], ids=["SIGINT", "SIGTERM"])
def test_signal_outside_the_training_loop_exits_130_quietly(tmp_path, monkeypatch, interrupt):
    """A signal while the data loads (before the loop's own handler is installed): exit 130,
    no traceback, nothing half written."""
    import sharpcli.training.setup

    monkeypatch.setattr(sharpcli.training.setup, "load_dataset", interrupt)
    previous = signal.getsignal(signal.SIGTERM)
    result = sharp(*train_args(tmp_path, "r", "--steps", "4"))
    assert result.code == 130 and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "checkpoints").exists()
    assert signal.getsignal(signal.SIGTERM) is previous
