"""Run directories on disk: find them, read their config.json and metrics.csv, check columns.

A run directory `reports/<run>/` holds `config.json` (the TrainConfig fields as a flat dict
plus record-only keys) and `metrics.csv` (docs/reference/formats.md#metrics-csv, empty cells where a
quantity was not measured at that step). Every reader of runs (eos, plot, summarize,
spectrum) goes through here, so a malformed run is reported the same way everywhere: one
SharpError that names the file and what was expected.
"""

from __future__ import annotations

import json
import math
import re
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from sharpcli.config import Phase
from sharpcli.errors import SharpError
from sharpcli.formats.schema import (CONFIG_FILE, DENSITY_COLUMNS, DENSITY_FILE, FLOW_COLUMNS,
                                     METRICS_COLUMNS, METRICS_FILE, NUMERIC_METRICS)

PHASES = tuple(p.value for p in Phase)
# A phase logged by sharpcli.Tracker around another optimizer is that optimizer's name.
_PHASE_NAME = re.compile(r"[a-z][a-z0-9_.+-]*")


@dataclass
class Run:
    """One run directory read from disk."""

    path: Path
    config: dict
    metrics: pd.DataFrame

    @property
    def name(self) -> str:
        """The directory's name (config `run_name` may be None when the trainer chose it)."""
        return self.path.name


def is_run_dir(path: Path) -> bool:
    """A run directory is one that holds a config.json or a metrics.csv."""
    return path.is_dir() and ((path / CONFIG_FILE).is_file() or (path / METRICS_FILE).is_file())


def resolve_run_dir(arg: str | os.PathLike, reports_dir: str | os.PathLike = "reports") -> Path:
    """The run directory meant by a command-line argument: a path to the directory, or a
    bare run name looked up under `reports_dir`."""
    path = Path(arg)
    if is_run_dir(path):
        return path
    if not path.exists() and len(path.parts) == 1 and is_run_dir(Path(reports_dir) / path):
        return Path(reports_dir) / path
    if not path.exists():
        raise SharpError(f"run directory {str(arg)!r} does not exist "
                         f"(give reports/<run>, or a run name under {str(reports_dir)!r})")
    raise SharpError(f"{str(arg)!r} is not a run directory: expected {CONFIG_FILE} and "
                     f"{METRICS_FILE} inside it")


def find_run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories named by `paths`: each is a run directory itself, or a directory
    searched recursively (at any depth) for run directories. Sorted within each argument,
    argument order kept, duplicates dropped. A directory with no runs under it is an error."""
    found: list[Path] = []
    for arg in paths:
        root = Path(arg)
        if not root.exists():
            raise SharpError(f"{str(arg)!r} does not exist (expected a run directory or a "
                             "directory of run directories)")
        if not root.is_dir():
            raise SharpError(f"{str(arg)!r} is not a directory (expected a run directory or "
                             "a directory of run directories)")
        if is_run_dir(root):
            hits = [root]
        else:
            hits = []
            for dirpath, dirnames, _ in os.walk(root):
                dirnames.sort()
                here = Path(dirpath)
                if here != root and is_run_dir(here):
                    hits.append(here)
                    dirnames[:] = []  # a run's own subfolders are not runs
        if not hits:
            raise SharpError(f"no run directories (with {CONFIG_FILE} / {METRICS_FILE}) "
                             f"under {str(arg)!r}")
        for hit in sorted(hits):
            if hit.resolve() not in {f.resolve() for f in found}:
                found.append(hit)
    return found


def read_config(run_dir: str | os.PathLike) -> dict:
    """config.json of a run as a dict."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise SharpError(f"{path} is missing: every run directory needs its config.json")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SharpError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise SharpError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def read_metrics(run_dir: str | os.PathLike,
                 required: Iterable[str] = METRICS_COLUMNS) -> pd.DataFrame:
    """metrics.csv of a run: numeric columns as floats (NaN where not measured), `phase` as
    strings, `step` as int. Columns not in METRICS_COLUMNS are kept; a missing required column, a
    non-numeric cell or an unknown phase is a SharpError naming the file."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise SharpError(f"{path} is missing: nothing was logged for this run")
    df = _read_csv(path, required, METRICS_COLUMNS, dtype={"phase": "string"})
    for col in NUMERIC_METRICS:
        if col not in df.columns:
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() & df[col].notna()
        if bad.any():
            row = int(bad.idxmax())
            raise SharpError(f"{path}: column {col} holds {df[col][row]!r} on data row "
                             f"{row + 1}, expected a number or an empty cell")
        df[col] = values.astype(float)
    if "step" in df.columns:
        if df["step"].isna().any():
            raise SharpError(f"{path}: every row needs a step")
        df["step"] = df["step"].astype(int)
    if "phase" in df.columns:
        df["phase"] = df["phase"].astype(object).where(df["phase"].notna(), None)
        unknown = sorted({p for p in df["phase"] if p is not None and p not in PHASES
                          and not _PHASE_NAME.fullmatch(str(p))})
        if unknown:
            raise SharpError(f"{path}: unknown phase {unknown[0]!r}; expected one of "
                             f"{', '.join(PHASES)}, or an optimizer's name in lower case")
    return df


def read_density(run_dir: str | os.PathLike) -> pd.DataFrame | None:
    """density.csv of a run (from `sharp spectrum --density`), or None when there is none.
    A file written before the `block` column holds the whole network's density: its rows
    read as block "all"."""
    path = Path(run_dir) / DENSITY_FILE
    if not path.is_file():
        return None
    required = [c for c in DENSITY_COLUMNS if c != "block"]
    df = _read_csv(path, required, DENSITY_COLUMNS, dtype={"block": "string"})
    for col in ("step", "eigenvalue", "density"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["block"] = (df["block"].astype(object).where(df["block"].notna(), "all")
                   if "block" in df.columns else "all")
    return df


def read_flow(path: str | os.PathLike) -> pd.DataFrame | None:
    """flow.csv (from `sharp flow`): `process` as strings, the other columns as floats (NaN
    where empty); None when there is no such file."""
    path = Path(path)
    if not path.is_file():
        return None
    df = _read_csv(path, FLOW_COLUMNS, FLOW_COLUMNS, dtype={"process": "string"})
    for col in FLOW_COLUMNS:
        if col != "process":
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def load_run(arg: str | os.PathLike, required: Iterable[str] = METRICS_COLUMNS) -> Run:
    """Resolve, then read config.json and metrics.csv of one run."""
    path = resolve_run_dir(arg)
    return Run(path=path, config=read_config(path), metrics=read_metrics(path, required))


def write_run(run_dir: str | os.PathLike, config: dict, metrics: pd.DataFrame | list[dict]) -> Path:
    """Write a run directory (config.json, metrics.csv with METRICS_COLUMNS in order, absent
    columns left empty): for tests, notebooks and runs imported from other tools."""
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    df = pd.DataFrame(metrics)
    for col in METRICS_COLUMNS:
        if col not in df.columns:
            df[col] = float("nan")
    extra = [c for c in df.columns if c not in METRICS_COLUMNS]
    df[list(METRICS_COLUMNS) + extra].to_csv(path / METRICS_FILE, index=False)
    return path


def writable(path: str | os.PathLike) -> Path:
    """`path` with its parent folder created; an impossible path is a SharpError."""
    path = Path(path)
    if path.is_dir():
        raise SharpError(f"{path} is a directory; expected a file path to write to")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SharpError(f"cannot create the folder {path.parent}: {err.strerror}") from None
    return path


def last_value(series: pd.Series) -> float:
    """The last non-empty value of a column, NaN when it is empty throughout."""
    values = series.dropna()
    return float(values.iloc[-1]) if len(values) else math.nan


def checkpoint_files(run_dir: str | os.PathLike, config: dict | None = None) -> list[Path]:
    """The run's checkpoints, by step: in config.json's `checkpoint_dir` (a Tracker's run:
    relative to the run folder, `checkpoints` by default), else in
    `<checkpoints_dir>/<run>/step-XXXXXXXX.pt` (`sharp train`'s layout), a relative
    checkpoints_dir tried against the current directory, then against the folder that
    holds the reports directory (so runs can be read from elsewhere)."""
    run_dir = Path(run_dir)
    config = read_config(run_dir) if config is None else config
    if config.get("checkpoint_dir"):
        candidates = [run_dir / config["checkpoint_dir"]]  # an absolute one replaces run_dir
    else:
        ck_dir = Path(config.get("checkpoints_dir") or "checkpoints")
        names = dict.fromkeys(n for n in (config.get("run_name"), run_dir.name) if n)
        bases = [ck_dir] if ck_dir.is_absolute() else [ck_dir, run_dir.resolve().parent.parent / ck_dir]
        candidates = [base / name for base in bases for name in names]
    for folder in candidates:
        files = sorted(folder.glob("step-*.pt")) if folder.is_dir() else []
        if files:
            return files
    tried = " or ".join(str(c) for c in candidates)
    raise SharpError(f"no checkpoints (step-XXXXXXXX.pt) for run {run_dir.name!r} in {tried}")


def _read_csv(path: Path, required: Iterable[str], expected: Sequence[str], **kw) -> pd.DataFrame:
    """A CSV as a DataFrame, or a one-line SharpError naming the file and what was expected."""
    try:
        df = pd.read_csv(path, **kw)
    except pd.errors.EmptyDataError:
        raise SharpError(f"{path} is empty: expected a header with columns "
                         f"{','.join(expected)}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        raise SharpError(f"{path} is not a readable CSV: {str(err).strip().splitlines()[0]}") \
            from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise SharpError(f"{path} lacks columns {','.join(missing)}; expected the columns "
                         f"{','.join(expected)}")
    return df
