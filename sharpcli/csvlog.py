"""Append-only CSV logs with a fixed header: each row is flushed as soon as it is written,
so a crash or Ctrl-C loses nothing already logged."""

from __future__ import annotations

import csv
import errno
import math
from pathlib import Path
from typing import Iterable, Mapping

from sharpcli.errors import SharpError

METRICS_COLUMNS = ["step", "epoch", "phase", "lr", "rho", "train_loss", "train_acc", "test_loss",
                   "test_acc", "grad_norm", "sharpness", "alignment", "gd_edge", "sam_edge",
                   "seconds"]


def format_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)  # shortest string that round-trips: no precision lost in the CSV
    return str(value)


class CsvLog:
    """A CSV file with a fixed column list. `truncate_after_step` supports --resume: rows at
    or after the resumed step are dropped before they are logged again."""

    def __init__(self, path: str | Path, columns: list[str]):
        self.path = Path(path)
        self.columns = columns
        self._file = None

    def open(self, *, fresh: bool, keep_below_step: int | None = None) -> "CsvLog":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh or not self.path.exists():
            self._file = open(self.path, "w", newline="")
            self._file.write(",".join(self.columns) + "\n")
            self._file.flush()
            return self
        if keep_below_step is not None:
            self._keep_rows_below(keep_below_step)
        self._file = open(self.path, "a", newline="")
        return self

    def _keep_rows_below(self, step: int) -> None:
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        header, body = rows[0], rows[1:]
        if header != self.columns:
            raise SharpError(f"{self.path} has columns {header}, expected {self.columns}")
        i = header.index("step")
        kept = [r for r in body if r and int(float(r[i])) < step]
        from sharpcli.atomic import atomic_write

        def write(f):
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            w.writerows(kept)

        atomic_write(self.path, write, mode="w")

    def write(self, row: Mapping) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"columns {sorted(unknown)} are not in {self.path.name}")
        line = ",".join(format_cell(row.get(c)) for c in self.columns) + "\n"
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SharpError(f"no space left on the device while writing {self.path}") from None
            raise

    def write_many(self, rows: Iterable[Mapping]) -> None:
        for r in rows:
            self.write(r)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
