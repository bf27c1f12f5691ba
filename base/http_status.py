"""How to treat an HTTP error status from a downstream service, and its ``Retry-After``.

Shared by the HTTP connectors (Stripe, Elasticsearch), which translate a response into
``TransientError``/``PermanentError``, and by the retry policy in ``streams.domain.retry``,
which re-exports both functions. Pure: no I/O, ``now`` is passed in.
"""

from __future__ import annotations

import email.utils
import math
import re
from datetime import UTC
from typing import Final, Literal

__all__ = ["HttpFailure", "classify_http_status", "parse_retry_after"]

HttpFailure = Literal["transient", "permanent"]

_DELTA_SECONDS: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def classify_http_status(status: int) -> HttpFailure:
    """How a connector should treat an HTTP error status from a downstream.

    408, 425, 429 and every status from 500 up are ``"transient"``; other 3xx and 4xx are
    ``"permanent"`` (a redirect Sluice does not follow is a configuration error).

    :raises ValueError: for a status below 300: it is not a failure.
    """
    if status < 300:
        raise ValueError(f"HTTP {status} is not an error status")
    if status >= 500 or status in (408, 425, 429):
        return "transient"
    return "permanent"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds (``"120"``) or an
    HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``, relative to ``now``, epoch seconds).

    :returns: ``None`` when the header is absent or unparseable (callers then use their
        own backoff); ``0.0`` for a date in the past; never negative.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with no zone information
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)
