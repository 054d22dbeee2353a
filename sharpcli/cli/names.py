"""The one table between the library's argument names and the command line's flags.

Library errors about an argument carry its Python name (SharpError.param, a `{param}` in
the message); the CLI prints them with the flag instead (`cli_message`, applied where the
CLI turns a SharpError into its one line). A name is its flag with underscores as hyphens
unless this table says otherwise.
"""

from __future__ import annotations

import re

from sharpcli.errors import SharpError

# Python name (or a setting, name=value) → flag, where the flag is not `--` + the name
# with hyphens
FLAGS = {
    "chunk_size": "--batch-size",
    "loss_fn": "--loss",
    "y": "--data",  # the command's --data holds the inputs and the targets
    "check_deterministic=False": "--no-check-deterministic",
    "check_missed=False": "--no-check-missed",
}

# The arguments a solver's note can name (sharpcli.eigs's and sharpcli.density's notes on
# what a memory budget cost, or on max_iter running out): spectrum.csv says their flags.
NOTE_ARGUMENTS = ("max_memory", "max_iter")


def flag(param: str) -> str:
    """The flag of the Python argument `param`: `top_k` → `--top-k`; of a setting
    `name=value` the table's entry, else the name's flag and the value."""
    if param in FLAGS:
        return FLAGS[param]
    name, eq, value = param.partition("=")
    return "--" + name.replace("_", "-") + (f" {value}" if eq else "")


def cli_message(err: SharpError) -> str:
    """The error's line as the command line says it: its argument named by its flag."""
    return err.naming(flag)


def note_in_flags(note: str) -> str:
    """A solver's note (spectrum.csv, the printed notes) as the command line says it: the
    arguments it names called by their flags."""
    names = "|".join(NOTE_ARGUMENTS)
    return re.sub(rf"\b({names})\b", lambda m: flag(m.group(1)), note)
