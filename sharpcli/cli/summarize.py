"""`sharp summarize`: mean ± std over seeds of many runs, grouped by setting."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

HELP = (
    "One table over many runs: final and best test accuracy and final sharpness λ₁, as "
    "mean ± std over seeds, one row per setting.\n\n"
    "Final = the run's last logged value (test_acc, sharpness); best = the largest test_acc "
    "it logged. Runs are grouped by their config.json minus the keys that do not define a setting "
    "(seed, run_name, device, paths, versions...; add more with --ignore). Only the setting "
    "keys that differ between groups are shown. std is the sample standard deviation "
    "(ddof=1); a group with one seed shows the mean alone (empty std cell in the CSV). "
    "Accuracies are shown in percent, and kept as fractions in the CSV.\n\n"
    "Writes a CSV (--out, default ./summary.csv): the varying setting keys, n_seeds, "
    "<metric>_mean and <metric>_std for final_test_acc, best_test_acc and final_sharpness, "
    "and runs (the run folders of the group)."
)


class Format(str, Enum):
    table = "table"
    markdown = "markdown"


def summarize(
    paths: Annotated[list[Path], typer.Argument(
        help="Run directories, or directories searched recursively for run directories "
             "(e.g. reports/).", metavar="RUN_OR_DIR", show_default=False)],
    out: Annotated[Path, typer.Option(
        help="CSV file to write the summary to.")] = Path("summary.csv"),
    fmt: Annotated[Format, typer.Option(
        "--format", help="table: a terminal table; markdown: a markdown table on stdout "
                         "(messages go to stderr), ready to paste.")] = Format.table,
    ignore: Annotated[list[str], typer.Option(
        help="A config key to leave out of the setting, so runs differing in it are grouped "
             "together (repeatable, e.g. --ignore steps).", show_default=False)] = [],  # noqa: B006
) -> None:
    from rich.markup import escape
    from rich.table import Table

    from sharpcli.cli.progress import output_console
    from sharpcli.analysis.summarize import display_rows, summarize as summarize_runs, to_markdown

    summary = summarize_runs(paths, ignore=ignore, out=out)
    for warning in summary.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    written = summary.written
    if fmt is Format.markdown:
        sys.stdout.write(to_markdown(summary))
        print(f"wrote {written}", file=sys.stderr)
        return
    headers, cells = display_rows(summary)
    n_runs = int(summary.table["n_seeds"].sum())
    table = Table(title=f"{n_runs} runs in {len(cells)} settings (mean ± std over seeds)")
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i < len(summary.settings) else "right")
    for row in cells:
        table.add_row(*map(escape, row))
    output_console().print(table)
    print(f"wrote {written}")


def register(app: typer.Typer) -> None:
    app.command("summarize", help=HELP)(summarize)
