"""The `sharp` command line: parsing and printing only; the work lives in the library.

Each command is a module here with a `register(app)` function. Errors the user caused
arrive as SharpError and leave as one line on stderr with the exit code SPEC §1 gives.
"""

from __future__ import annotations

import sys

import typer

from sharpcli.errors import SharpError

app = typer.Typer(
    name="sharp",
    help="Study the sharpness of training: train with GD/SGD/SAM/Eigen-SAM, measure Hessian "
    "spectra of checkpoints, check the edge of stability. Writes CSV.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# One line per command module; each adds its command(s) to `app`.
_COMMAND_MODULES: list[str] = [
    "sharpcli.cli.eos",
    "sharpcli.cli.plot",
    "sharpcli.cli.spectrum",
    "sharpcli.cli.summarize",
    "sharpcli.cli.train",
]


def _register_all() -> None:
    import importlib

    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `sharp` console script and `python -m sharpcli`."""
    try:
        app(args=argv, prog_name="sharp")
    except SharpError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
