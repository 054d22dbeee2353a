"""The one table between the library's argument names and the command line's flags.

Library errors about an argument carry its Python name (SharpError.param, a `{param}` in
the message); the CLI prints them with the flag instead (`cli_message`, applied where the
CLI turns a SharpError into its one line). A name is its flag with underscores as hyphens
unless this table says otherwise.
"""

from __future__ import annotations

from sharpcli.errors import SharpError

# Python name → flag, where the flag is not `--` + the name with hyphens
FLAGS = {
    "chunk_size": "--batch-size",
    "loss_fn": "--loss",
    "check_deterministic": "--no-check-deterministic",
    "check_missed": "--no-check-missed",
    "trace": "--trace",
    "density": "--density",
}


def flag(param: str) -> str:
    """The flag of the Python argument `param`: `top_k` → `--top-k`."""
    return FLAGS.get(param, "--" + param.replace("_", "-"))


def cli_message(err: SharpError) -> str:
    """The error's line as the command line says it: its argument named by its flag."""
    return err.naming(flag)
