"""Append-only CSV logs with a fixed header: each row goes to the file in one unbuffered
write as soon as it is logged, so a crash or Ctrl-C loses nothing already logged, and a row
that could not be written whole (disk full) is cut off again rather than left half there."""

from __future__ import annotations

import csv
import errno
import io
import math
import os
from pathlib import Path
from typing import Iterable, Mapping

from sharpcli.errors import SharpError
from sharpcli.formats.atomic import atomic_write

def format_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)  # shortest string that round-trips: no precision lost in the CSV
    return str(value)


def _step_of(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return math.inf  # unreadable: never kept


class CsvLog:
    """A CSV file with a fixed column list. `open(keep_below_step=t)` supports --resume: rows
    at or after the resumed step t are dropped before they are logged again."""

    def __init__(self, path: str | Path, columns: Iterable[str]):
        self.path = Path(path)
        self.columns = list(columns)
        self._file = None

    def open(self, *, fresh: bool, keep_below_step: int | None = None) -> "CsvLog":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fresh or not self.path.exists():
            self._file = open(self.path, "wb", buffering=0)
            self._append(",".join(self.columns) + "\n")
            return self
        if keep_below_step is not None:
            self._keep_rows_below(keep_below_step)
        self._file = open(self.path, "ab", buffering=0)
        return self

    def _keep_rows_below(self, step: int) -> None:
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        header, body = rows[0], rows[1:]
        if header != self.columns and not set(header) < set(self.columns):
            raise SharpError(f"{self.path} has columns {header}, expected {self.columns}")
        i = header.index("step")
        # A row cut short by a crash is dropped: it would read back as a row of empty cells.
        kept = [r for r in body if len(r) == len(header) and _step_of(r[i]) < step]
        # A file of an older sharpcli, which had fewer columns: its rows get empty new cells.
        kept = [[dict(zip(header, r)).get(c, "") for c in self.columns] for r in kept]

        def write(f):
            w = csv.writer(f, lineterminator="\n")
            w.writerow(self.columns)
            w.writerows(kept)

        atomic_write(self.path, write, mode="w")

    def write(self, row: Mapping) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"columns {sorted(unknown)} are not in {self.path.name}")
        line = io.StringIO()  # csv quotes a cell holding a comma (a checkpoint path may)
        csv.writer(line, lineterminator="\n").writerow(format_cell(row.get(c)) for c in self.columns)
        self._append(line.getvalue())

    def _append(self, line: str) -> None:
        data = memoryview(line.encode())
        start = self._file.seek(0, os.SEEK_END)
        try:
            while data:  # an unbuffered write may take only part of the bytes
                data = data[self._file.write(data):]
        except BaseException as err:
            try:
                os.ftruncate(self._file.fileno(), start)  # never leave half a row behind
            except OSError:
                pass
            if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
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
