"""The one duration parser: every duration setting (and the retry schedule) goes through it."""

from __future__ import annotations

import itertools
import math
import re
from typing import Final

__all__ = ["check_retry_schedule", "parse_duration"]

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


def check_retry_schedule(delays: tuple[float, ...]) -> tuple[float, ...]:
    """``delays`` if they make a retry schedule: at least one, each a positive whole
    number of milliseconds (a ``retry.<delay>`` topic holds one delay and is named by it),
    strictly increasing. The settings check it with the variable's name, and
    ``RetryPolicy`` checks it for every schedule built in code.

    :raises ValueError: naming the first rule broken.
    """
    if not delays:
        raise ValueError("the retry schedule needs at least one delay")
    for delay in delays:
        if not math.isfinite(delay) or delay <= 0:
            raise ValueError(f"retry delay {delay!r}s is not a positive number of seconds")
        millis = delay * 1000
        if abs(millis - round(millis)) > 1e-6:
            raise ValueError(
                f"retry delay {delay!r}s has no catalog retry topic: retry.<delay> topics "
                "need a whole number of milliseconds"
            )
    for shorter, longer in itertools.pairwise(delays):
        if longer <= shorter:
            raise ValueError(
                f"retry delays must be strictly increasing, got {shorter:g}s then {longer:g}s"
            )
    return delays
