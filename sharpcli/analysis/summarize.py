"""One table over many runs: mean ± std over seeds, grouped by setting
(docs/guides/plots.md#summarize).

A run's *setting* is its config.json minus NON_SETTING_KEYS (seed, run_name, device, paths,
record-only keys such as versions), minus the flags its optimizer never reads (--rho for
gd, say: UNUSED_BY_OPTIMIZER) and minus any keys the caller chooses to ignore; runs
with equal settings are repeats over seeds and form one group. Per run:

- final_test_acc: the last non-empty test_acc (a fraction in [0, 1], as in metrics.csv);
- best_test_acc: the largest test_acc logged;
- final_sharpness: the last non-empty sharpness λ₁;
- final_preconditioned_sharpness: the last non-empty λ₁(P⁻¹H) of an adam, adamw or
  rmsprop run; a column of the tables only when some run has one.

Per group: n_seeds (the number of runs in the group), and for each metric the mean and the
sample standard deviation over the runs that have a value (ddof=1, the usual "± std over
seeds" of papers). With a single value the std is undefined: NaN in the CSV (an empty cell)
and the mean alone in the tables.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from sharpcli.config import NON_SETTING_KEYS, UNUSED_BY_OPTIMIZER
from sharpcli.errors import SharpError
from sharpcli.formats.atomic import atomic_write
from sharpcli.formats.runs import (METRICS_FILE, Run, find_run_dirs, last_value, read_config,
                           read_metrics, writable)

# (column stem, table header, factor for display); accuracies are shown in percent.
METRICS = (("final_test_acc", "final test acc (%)", 100.0),
           ("best_test_acc", "best test acc (%)", 100.0),
           ("final_sharpness", "final λ₁", 1.0))
# Metrics shown only when some run has them.
OPTIONAL_METRICS = (("final_preconditioned_sharpness", "final λ₁(P⁻¹H)", 1.0),)
SUMMARY_COLUMNS_REQUIRED = ("step", "test_acc", "sharpness")


@dataclass
class Summary:
    """`table`: one row per group, columns = the varying setting keys, n_seeds, then
    <metric>_mean and <metric>_std for each metric, then `runs` (the run folders, `;`-joined).
    `settings`: the varying setting keys, in table order. `warnings`: things worth a look.
    `metrics`: the (stem, header, factor) of the metrics in the table. `written`: the CSV
    file `summarize(..., out=...)` wrote, if any."""

    table: pd.DataFrame
    settings: list[str]
    warnings: list[str] = field(default_factory=list)
    metrics: tuple = METRICS
    written: Path | None = None


def setting_of(config: dict, ignore: Iterable[str] = ()) -> dict:
    """The keys of a config that define what was computed."""
    skip = NON_SETTING_KEYS | UNUSED_BY_OPTIMIZER.get(config.get("optimizer"), set()) | set(ignore)
    return {k: v for k, v in config.items() if k not in skip}


def run_values(run: Run) -> dict[str, float]:
    """final_test_acc, best_test_acc, final_sharpness and final_preconditioned_sharpness of
    one run (NaN when not logged)."""
    m = run.metrics.sort_values("step", kind="stable")
    acc = m["test_acc"]
    pre = m.get("preconditioned_sharpness", pd.Series(dtype=float))  # absent in older runs
    return {"final_test_acc": last_value(acc),
            "best_test_acc": float(acc.max()) if acc.notna().any() else math.nan,
            "final_sharpness": last_value(m["sharpness"]),
            "final_preconditioned_sharpness": last_value(pre)}


def _norm(value):
    """A hashable, comparable form of a config value: 1 and 1.0 are the same setting."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return json.dumps(value, sort_keys=True)


def _sort_key(values: tuple) -> tuple:
    return tuple((2, 0.0, "") if v is None else (0, float(v), "") if isinstance(v, (int, float))
                 else (1, 0.0, str(v)) for v in values)


def load_runs(paths: Sequence[str | Path]) -> tuple[list[Run], list[str]]:
    """Every run under `paths` (see runs.find_run_dirs); runs that logged nothing yet (no
    metrics.csv) are left out with a warning."""
    runs, warnings = [], []
    for path in find_run_dirs(paths):
        if not (path / METRICS_FILE).is_file():
            warnings.append(f"skipped {path}: no {METRICS_FILE} yet")
            continue
        runs.append(Run(path, read_config(path), read_metrics(path, SUMMARY_COLUMNS_REQUIRED)))
    if not runs:
        raise SharpError(f"no runs with a {METRICS_FILE} under {', '.join(map(str, paths))}")
    return runs, warnings


def summarize(paths: Sequence[str | Path], ignore: Iterable[str] = (),
              out: str | Path | None = None) -> Summary:
    """Group the runs under `paths` by setting and aggregate over seeds; with `out`, also
    write the table there as CSV (`sharp summarize --out`)."""
    runs, warnings = load_runs(paths)
    ignore = set(ignore)
    settings = [setting_of(r.config, ignore) for r in runs]
    keys = sorted(set().union(*settings))
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(settings):
        groups.setdefault(tuple(_norm(s.get(k)) for k in keys), []).append(i)
    varying = [k for j, k in enumerate(keys) if len({g[j] for g in groups}) > 1]
    values = [run_values(r) for r in runs]
    metrics = METRICS + tuple(m for m in OPTIONAL_METRICS
                              if any(not math.isnan(v[m[0]]) for v in values))

    rows = []
    for group_key, members in groups.items():
        first = settings[members[0]]
        row = {k: _display(first.get(k)) for k in varying}
        row["n_seeds"] = len(members)
        group = pd.DataFrame([values[i] for i in members])
        for stem, _, _ in metrics:
            col = group[stem].dropna()
            row[f"{stem}_mean"] = float(col.mean()) if len(col) else math.nan
            row[f"{stem}_std"] = float(col.std(ddof=1)) if len(col) > 1 else math.nan
        row["runs"] = ";".join(str(runs[i].path) for i in members)
        rows.append((tuple(_norm(first.get(k)) for k in varying), row))
        seeds = [runs[i].config.get("seed") for i in members]
        if len(set(map(str, seeds))) < len(seeds):
            warnings.append(f"runs with the same setting and seed (repeats counted as seeds): "
                            f"{row['runs']}")
    rows.sort(key=lambda kr: _sort_key(kr[0]))
    summary = Summary(pd.DataFrame([r for _, r in rows]), varying, warnings, metrics)
    if out is not None:
        summary.written = write_summary_csv(summary, out)
    return summary


def _display(value):
    """Config values as CSV cells: lists and dicts as JSON, the rest as they are."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def format_mean_std(mean: float, std: float, factor: float = 1.0,
                    decimals: int | None = None) -> str:
    """"93.2 ± 0.1": mean and std scaled by `factor`, with `decimals` places (default: three
    significant digits of the mean). NaN std (a single seed) prints the mean alone."""
    if mean is None or math.isnan(mean):
        return "–"
    mean, std = mean * factor, std * factor
    if decimals is None:
        magnitude = math.floor(math.log10(abs(mean))) if mean else 0
        decimals = min(max(2 - magnitude, 0), 4)
    text = f"{mean:.{decimals}f}"
    return text if std is None or math.isnan(std) else f"{text} ± {std:.{decimals}f}"


def display_rows(summary: Summary) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the human-readable table (terminal and markdown)."""
    headers = list(summary.settings) + ["n"] + [h for _, h, _ in summary.metrics]
    cells = []
    for row in summary.table.to_dict("records"):
        line = [_cell_text(row[k]) for k in summary.settings] + [str(row["n_seeds"])]
        for stem, _, factor in summary.metrics:
            decimals = 1 if factor == 100.0 else None
            line.append(format_mean_std(row[f"{stem}_mean"], row[f"{stem}_std"], factor, decimals))
        cells.append(line)
    return headers, cells


def _cell_text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:g}" if isinstance(value, float) else str(value)


def to_markdown(summary: Summary) -> str:
    """A GitHub markdown table: rows = settings, columns = metrics, "mean ± std" cells."""
    headers, cells = display_rows(summary)
    n_settings = len(summary.settings)
    align = ["---"] * n_settings + ["---:"] * (len(headers) - n_settings)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def write_summary_csv(summary: Summary, path: str | Path) -> Path:
    path = writable(path)
    try:
        # whole or not at all: Ctrl-C or SIGTERM may come in the middle
        atomic_write(path, lambda f: summary.table.to_csv(f, index=False), mode="w")
    except OSError as err:
        raise SharpError(f"cannot write {path}: {err.strerror}") from None
    return path

