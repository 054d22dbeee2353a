"""Running `sharp` in tests: in-process through `sharpcli.cli.main` (fast: no Python and torch
start-up) or as a real subprocess (signals, the real entry point)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import torch

from sharpcli.cli import main

# A run that takes well under a second in-process: a 490-parameter MLP on 64 examples.
# Tests that need another size or step size pass the flag again after it (the last wins).
TINY = ["--train-size", "64", "--test-size", "32", "--width", "8", "--quiet"]
METRICS_FIELDS = 19
SPECTRUM_FIELDS = 11


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def ok(self) -> "Outcome":
        """This outcome, once it is known to have exited 0 (else its stderr is the message)."""
        assert self.code == 0, (self.code, self.stderr)
        return self


def sharp(*argv) -> Outcome:
    """`sharp ARGV` in this process: its exit code and what it printed."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return Outcome(code, out.getvalue(), err.getvalue())


def train_args(root: Path, run: str | None, *flags) -> list[str]:
    """`sharp train` of a TINY run named `run` (None: the default name) under root/reports
    and root/checkpoints, with `flags` after TINY."""
    name = [] if run is None else ["--run-name", run]
    return ["train", *TINY, *name, "--reports-dir", str(root / "reports"),
            "--checkpoints-dir", str(root / "checkpoints"), *[str(f) for f in flags]]


def assert_one_line_error(result: Outcome, code: int, *words: str) -> str:
    """Exit `code`, exactly one line on stderr starting with `error:`, naming `words`."""
    assert result.code == code, (result.code, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.error_lines) == 1, result.stderr
    line = result.error_lines[0]
    assert line.startswith("error: "), line
    for word in words:
        assert word in line, (word, line)
    return line


def subprocess_env() -> dict:
    """The environment of a `sharp` subprocess: as many threads as this process uses, so that
    its floating-point results match runs done in-process bit for bit."""
    return dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))


def start_sharp(*argv, cwd: Path | None = None) -> subprocess.Popen:
    """`python -m sharpcli ARGV` as a real process, with its own stdout and stderr pipes:
    for what only a real process shows (signals, the entry point, the bytes on stderr)."""
    return subprocess.Popen([sys.executable, "-m", "sharpcli", *[str(a) for a in argv]],
                            cwd=cwd, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def csv_lines(path: Path) -> list[str]:
    text = path.read_text()
    assert text.endswith("\n"), f"{path} ends in the middle of a row"
    return text.splitlines()


def without_column(lines: list[str], column: str) -> list[str]:
    """CSV lines (no quoted commas) without one column: for comparing runs minus `seconds`."""
    i = lines[0].split(",").index(column)
    return [",".join(c for j, c in enumerate(line.split(",")) if j != i) for line in lines]

