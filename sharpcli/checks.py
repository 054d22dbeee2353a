"""The one check on numbers a user gives: positive (or zero or more), finite, whole where
it must be. Every layer that takes such a number calls it with the argument's Python name
and the error type it raises (a SharpError carries the name as its `param`, which the CLI
calls by its flag: sharpcli.cli.names)."""

from __future__ import annotations

import math
import numbers

from sharpcli.errors import SharpError


def check_positive(value, name: str, *, allow_zero: bool = False, optional: bool = False,
                   integer: bool = False, error: type[Exception] = SharpError) -> None:
    """`value` must be > 0 (≥ 0 with `allow_zero`), finite, and a whole number with
    `integer`; None passes only when `optional`. Raises `error` naming `name` and the value."""
    if value is None and optional:
        return
    bound = "zero or more" if allow_zero else "positive"
    kind = "integer" if integer else "number"
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if integer and is_number and value != int(value):
        is_number = False
    if not is_number:
        raise refusal(error, name, f"must be a {bound} {kind}, got {value!r}")
    if value != value or (value < 0 if allow_zero else value <= 0):
        raise refusal(error, name, f"must be {bound}, got {value}")
    if not math.isfinite(value):
        raise refusal(error, name, f"must be a finite number, got {value}")


def refusal(error: type[Exception], name: str, what: str) -> Exception:
    """`error` saying "<name> <what>": keyed by `name` (SharpError.param) where it is a
    Python argument's name and the error a SharpError."""
    if issubclass(error, SharpError) and name.isidentifier():
        return error(f"{{{name}}} {what}", param=name)
    return error(f"{name} {what}")
