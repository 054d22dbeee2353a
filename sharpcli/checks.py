"""The one check on numbers a user gives: positive (or zero or more), finite, whole where
it must be. Every layer that takes such a number calls it with the flag or argument name
it answers to and the error type it raises."""

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
        raise error(f"{name} must be a {bound} {kind}, got {value!r}")
    if value != value or (value < 0 if allow_zero else value <= 0):
        raise error(f"{name} must be {bound}, got {value}")
    if not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {value}")
