"""Interruption by a real signal: SIGINT or SIGTERM during training or a spectrum run leaves
every finished CSV row complete and (training) a checkpoint of the current state, exits 130,
and `--resume` then reaches the metrics of an uninterrupted run exactly.

SIGTERM to a training run and SIGINT to a spectrum run come from outside, to real `sharp`
processes, at whatever point they have reached. The two signals share one handler
(sharpcli.interrupt.stop_on_signals), so SIGINT in training is sent by this process to itself
from inside the loop, at a chosen step: the same handler and the same stop, without a third
start-up of Python and torch (about 4 s of CPU). The subprocesses start together and the
in-process runs happen meanwhile, so that their start-up is paid once in wall time.

Then the moments no loop polls for a signal: start-up imports (a real `python -m sharpcli`
that signals itself as a chosen module starts to import), data loading, the last step, the
teardown, `sharp eos` writing its CSV; and a cluster's preemption, SIGTERMs at random
moments each followed by `--resume`."""

import csv
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import sharpcli.training.loop
from sharpcli.formats.checkpoints import checkpoint_path, list_checkpoints, read_checkpoint
from tests.runners import (METRICS_FIELDS, SPECTRUM_FIELDS, Outcome, assert_one_line_error,
                           csv_lines, sharp, start_sharp, subprocess_env, train_args,
                           without_column)

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


def sigterm_at_the_last_step(monkeypatch):
    """SIGTERM while the last step (4) computes its gradient: after the loop's last poll."""
    real, calls = sharpcli.training.loop.gradient_norm, []

    def signal_at_the_last_step(params):
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(params)

    monkeypatch.setattr(sharpcli.training.loop, "gradient_norm", signal_at_the_last_step)


def sigterm_after_the_loop(monkeypatch):
    """SIGTERM once training has returned, every file written (the teardown)."""
    import sharpcli.cli.train

    real = sharpcli.cli.train._train

    def then_signal(*args, **kwargs):
        result = real(*args, **kwargs)
        sigterm()
        return result

    monkeypatch.setattr(sharpcli.cli.train, "_train", then_signal)


def while_loading(interrupt):
    def patch(monkeypatch):
        import sharpcli.training.setup

        monkeypatch.setattr(sharpcli.training.setup, "load_dataset", interrupt)
    return patch


# when the signal comes, what the one line says, and whether the run is complete
MOMENTS = {
    "SIGINT-loading": (while_loading(ctrl_c), "stopped by SIGINT", False),
    "SIGTERM-loading": (while_loading(sigterm), "stopped by SIGTERM", False),
    "SIGTERM-last-step": (sigterm_at_the_last_step, "stopped by SIGTERM as the work ended", True),
    "SIGTERM-after-the-loop": (sigterm_after_the_loop, "stopped by SIGTERM", True),
}


@pytest.mark.parametrize("moment", MOMENTS)
def test_signal_outside_the_loops_polls(tmp_path, monkeypatch, moment):
    """A signal where no loop polls for it (the data loading, the last step after the last
    poll, the teardown): exit 130 and one line, no traceback, nothing half written; a run
    that had finished is complete, and the handlers are restored afterwards."""
    patch, words, complete = MOMENTS[moment]
    patch(monkeypatch)
    previous = signal.getsignal(signal.SIGTERM)
    result = sharp(*train_args(tmp_path, "r", "--steps", "4"))
    assert_one_line_error(result, 130, words)
    assert signal.getsignal(signal.SIGTERM) is previous
    if complete:
        assert [line.split(",")[0] for line in csv_lines(tmp_path / "reports" / "r" / "metrics.csv")
                ] == ["step", "0", "4"]
        assert checkpoint_path(tmp_path / "checkpoints" / "r", 4).exists()
    else:
        assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("module", ["typer", "numpy"])
def test_sigterm_during_start_up_imports(tmp_path, module):
    """SIGTERM while `python -m sharpcli train` imports the CLI (typer), or torch (numpy,
    inside torch's import): exit 130 and one line, never an exception thrown into a half-
    imported module (it used to end in a numpy traceback) nor death by the signal itself."""
    helper = Path(__file__).with_name("signal_during_import.py")
    argv = train_args(tmp_path, "r", "--steps", "4")
    proc = subprocess.run([sys.executable, helper, module, *argv], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert_one_line_error(Outcome(proc.returncode, proc.stdout, proc.stderr), 130,
                          "stopped by SIGTERM")
    # the stop came before training or at a step: whatever exists is whole
    metrics_csv = tmp_path / "reports" / "r" / "metrics.csv"
    assert not metrics_csv.exists() or metrics_csv.read_text().endswith("\n")
    assert not list(tmp_path.rglob("*.tmp"))


def test_sigterm_while_eos_writes_keeps_the_old_file(tmp_path, monkeypatch):
    """`sharp eos` stopped in the middle of writing eos.csv: exit 130 and one line, and the
    eos.csv of before, whole (the new one is written beside it and renamed when complete)."""
    import pandas as pd

    assert sharp(*train_args(tmp_path, "r", "--steps", "4", "--sharpness-every", "2")).code == 0
    run = tmp_path / "reports" / "r"
    assert sharp("eos", run).code == 0
    before = (run / "eos.csv").read_text()

    def header_then_signal(self, f, **kwargs):
        f.write(before.splitlines()[0] + "\n")
        sigterm()

    monkeypatch.setattr(pd.DataFrame, "to_csv", header_then_signal)
    assert_one_line_error(sharp("eos", run), 130, "stopped by SIGTERM")
    assert (run / "eos.csv").read_text() == before
    assert not list(run.glob(".*.tmp"))


PREEMPTIONS = 5
SAM_RUN = ["--optimizer", "sam", "--rho", "0.05", "--steps", "200", "--eval-every", "10",
           "--sharpness-every", "50", "--checkpoint-every", "50"]


def test_random_preemptions_then_resume_equal_the_uninterrupted_run(tmp_path):
    """A cluster's preemption: SIGTERM at random moments (start-up, a step, a measurement, the
    teardown), each run followed by `--resume`; the final metrics.csv equals an uninterrupted
    run's but for the seconds column. Each SIGTERM is a real signal to this process, where
    `sharp train` runs in-process (torch is imported once)."""
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # one landing after a run's exit
    try:
        durations = []
        for run in ("reference", "timed"):  # the second, warm, says how long a run takes
            start = time.monotonic()
            assert sharp(*train_args(tmp_path / run, "r", *SAM_RUN)).code == 0
            durations.append(time.monotonic() - start)
        duration = min(durations)
        seed = random.randrange(10**6)
        rng = random.Random(seed)
        stops = []
        for _ in range(PREEMPTIONS):
            timer = threading.Timer(rng.uniform(0.0, 0.5 * duration), os.kill,
                                    (os.getpid(), signal.SIGTERM))
            timer.start()
            result = sharp(*train_args(tmp_path / "preempted", "r", *SAM_RUN, "--resume"))
            timer.join()
            if result.code == 0:  # the run had ended when the signal came
                continue
            stops.append(assert_one_line_error(result, 130, "stopped by SIGTERM"))
        assert sharp(*train_args(tmp_path / "preempted", "r", *SAM_RUN, "--resume")).code == 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    # some before or after the loop, most at a step (the loop's own stop, saved for --resume)
    assert len(stops) >= 2 and any("at step" in line for line in stops), (seed, duration, stops)
    resumed = csv_lines(tmp_path / "preempted" / "reports" / "r" / "metrics.csv")
    expected = csv_lines(tmp_path / "reference" / "reports" / "r" / "metrics.csv")
    assert without_column(resumed, "seconds") == without_column(expected, "seconds"), (seed, stops)
