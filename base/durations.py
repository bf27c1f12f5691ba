"""The one duration parser: every duration setting (and the retry schedule) goes through it."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["parse_duration"]

_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# A plain decimal (no sign, exponent, inf or nan) and an optional unit.
_DURATION: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*(ms|s|m|h|d)?")


def parse_duration(text: str) -> float:
    """Seconds from ``"250ms"``, ``"30s"``, ``"5m"``, ``"2h"``, ``"30d"`` or a bare number
    (seconds). Case and surrounding spaces are ignored.

    :raises ValueError: naming the accepted forms, for anything else (negative numbers
        included).
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"{text.strip()!r} is not a duration like 500ms, 5s, 5m, 1h or 30d")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
