"""One way to declare a flag: its help text and the panel of `--help` it is listed under."""

from __future__ import annotations

import typer


def option(help: str, panel: str, *names: str, **kw):
    return typer.Option(*names, help=help, rich_help_panel=panel, **kw)
