"""Progress off a terminal, as a batch job's log shows it: plain lines at least every
SHARPCLI_PROGRESS_SECONDS and one at the end, with the step or fraction, the elapsed time
and the time left, from every long command; none with --quiet; results never wrapped."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time

import pytest

from sharpcli.cli.progress import PlainLines, output_console
from tests.runners import sharp, subprocess_env, train_args

LINE = re.compile(r"^(?P<name>[\w .-]+): (?P<done>\d+)/(?P<total>\d+) \(\d+%\) · elapsed \d+:\d\d"
                  r" · left (\d+:\d\d|\?)")


def progress_lines(text: str, name: str) -> list[re.Match]:
    matches = [LINE.match(line) for line in text.splitlines()]
    return [m for m in matches if m and m["name"] == name]


def test_a_line_says_what_is_done_how_long_it_took_and_what_is_left():
    """484 of 1001 steps in 300 s: 517 to go at 300/484 s each is 320 s, 5:20."""
    lines = PlainLines("flow", 1001, seconds=3600, stream=io.StringIO())
    lines.update(484, info="λ₁ central 3.3")
    assert lines.line(300.0) == "flow: 484/1001 (48%) · elapsed 5:00 · left 5:20 · λ₁ central 3.3"
    assert lines.line(3725.0, final=True).endswith("elapsed 1:02:05 · left 0:00 · λ₁ central 3.3 · done")
    lines.finish()
    assert lines.stream.getvalue().count("\n") == 1  # the last line alone: no tick in an hour


def test_lines_come_from_a_clock_not_from_the_work():
    """A step that takes longer than the interval cannot silence the log: the timer prints."""
    stream = io.StringIO()
    lines = PlainLines("spectrum", 3, seconds=0.05, stream=stream)
    lines.update(1)
    time.sleep(0.5)  # one long "step"
    lines.finish()
    printed = stream.getvalue().splitlines()
    assert len(printed) >= 4 and printed[-1].endswith("· done")
    assert all(line.startswith("spectrum: 1/3 (33%)") for line in printed)


def test_work_that_fails_ends_with_its_error_not_a_progress_line(tmp_path, monkeypatch):
    """A bad argument stays one line on stderr, even with progress on."""
    monkeypatch.setenv("SHARPCLI_PROGRESS_SECONDS", "0.01")
    lines = PlainLines("spectrum", 3, seconds=3600, stream=io.StringIO())
    lines.finish(done=False)
    assert lines.stream.getvalue() == ""
    result = sharp("spectrum", tmp_path / "no-such-run")
    assert result.code == 2 and result.stderr.count("\n") == 1 and result.stderr.startswith("error:")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny run with three checkpoints, trained with its progress on."""
    root = tmp_path_factory.mktemp("progress")
    mp = pytest.MonkeyPatch()
    mp.setenv("SHARPCLI_PROGRESS_SECONDS", "0.01")
    result = sharp(*[a for a in train_args(root, "gd", "--steps", 40, "--checkpoint-every", 20)
                     if a != "--quiet"]).ok()
    mp.undo()
    return root, result


def test_train_logs_progress_and_an_unwrapped_verdict(root):
    root, train = root
    lines = progress_lines(train.stderr, "train")
    assert len(lines) >= 2 and lines[-1]["done"] == lines[-1]["total"] == "40"
    assert train.stderr.rstrip().endswith("· done")
    verdict = [line for line in train.stdout.splitlines() if line.startswith("edge of stability")]
    assert len(verdict) == 1 and verdict[0].endswith("sharp eos gives the same")  # one line


@pytest.mark.parametrize("argv, name", [
    (["spectrum", "{run}", "--top-k", "2"], "spectrum"),
    (["eos", "{run}", "--from-checkpoints"], "eos gd"),
])
def test_long_commands_log_progress_and_quiet_silences_it(root, monkeypatch, argv, name):
    root = root[0]
    monkeypatch.setenv("SHARPCLI_PROGRESS_SECONDS", "0.01")
    argv = [str(root / "reports" / "gd") if a == "{run}" else a for a in argv]
    loud = sharp(*argv).ok()
    lines = progress_lines(loud.stderr, name)
    assert lines and lines[-1]["done"] == lines[-1]["total"] == "3"  # steps 0, 20, 40
    assert loud.stderr.rstrip().endswith("· done")
    quiet = sharp(*argv, "--quiet").ok()
    assert progress_lines(quiet.stderr, name) == [] and "elapsed" not in quiet.stderr


def test_flow_in_a_log_file_shows_progress(root, tmp_path):
    """`sharp flow RUN > log 2>&1` as a batch job runs it: a real process, its output in a
    file; the lines come every interval while it works, and one at the end."""
    root = root[0]
    log = tmp_path / "flow.log"
    # an interval far below the integration's length (the faster integrator does 6 steps in
    # well under 0.2 s: the start-up is most of the second), so lines come while it works
    env = dict(subprocess_env(), SHARPCLI_PROGRESS_SECONDS="0.01")
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-m", "sharpcli", "flow", str(root / "reports" / "gd"),
                        "--steps", "40", "--substeps", "2", "--out", str(tmp_path / "flow")],
                       stdout=f, stderr=subprocess.STDOUT, env=env, timeout=300, check=True)
    text = log.read_text()
    lines = progress_lines(text, "flow")
    assert len(lines) >= 2, text
    assert lines[-1]["done"] == lines[-1]["total"] == "41" and "· done" in text
    assert "\x1b[" not in text  # no terminal escapes in a log


def test_off_a_terminal_nothing_wraps():
    console = output_console()  # pytest's stdout is no terminal
    with console.capture() as captured:
        console.print("word " * 100)
    assert captured.get().count("\n") == 1
