"""Sizes in bytes as users write them ("800MB", "1.5GB", "512MiB", "2e9"), without torch: the
CLI checks `--max-memory` before anything heavy is imported (linalg.budget builds on this).

Decimal units are powers of ten, binary units powers of two, as IEC 80000-13 and the SI have
it: kB/KB = 10³, MB = 10⁶, GB = 10⁹, TB = 10¹² bytes; KiB = 2¹⁰, MiB = 2²⁰, GiB = 2³⁰,
TiB = 2⁴⁰. Letters are case-insensitive ("1.5gb"); a bare number ("2e9", 2_000_000_000) is
bytes. A bare "G" or "M" is refused: it means GiB to some people and GB to others. Sizes are
printed back in decimal units ("1.5 GB").
"""

from __future__ import annotations

import math
import numbers
import re

from sharpcli.checks import refusal
from sharpcli.errors import SharpError

UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(value, name: str, error: type[Exception] = SharpError) -> int:
    """Bytes from an int, a float or a size string; `error` naming `name` and the value when
    it is not a positive size."""
    number = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        match = _SIZE.match(value)
        unit = match and UNITS.get(match.group(2).lower() or "b")
        number = float(match.group(1)) * unit if unit else None
    if number is None or not math.isfinite(number) or number < 1:
        raise refusal(error, name, "must be a size such as 800MB, 1.5GB, 512MiB or a number of "
                      f"bytes, got {value!r}")
    return int(number)


def human_bytes(n: float) -> str:
    """A byte count in decimal units, three significant digits: "1.5 GB", "800 MB"."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"
