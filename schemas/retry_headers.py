"""The names of the retry headers the worker puts on a record it sends to a
``retry.<delay>`` topic (``streams.domain.retry`` decides their values).

Here, below ``streams``, because replays strip them too: ``sluice dlq replay`` and the
admin API's dead-letter replay (``connectors.dead_letters``, ``schemas.replay``) start a
fresh retry history.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ATTEMPT_HEADER",
    "DUE_AT_HEADER",
    "EFFECT_HEADER",
    "FIRST_FAILED_AT_HEADER",
    "ORIGIN_HEADER",
    "ORIGIN_OFFSET_HEADER",
    "ORIGIN_PARTITION_HEADER",
    "REASON_HEADER",
    "RETRY_HEADER_NAMES",
]

ATTEMPT_HEADER: Final = "sluice-attempt"
"""Retry number the record is on: ``1`` on its first retry. ASCII decimal."""
DUE_AT_HEADER: Final = "sluice-due-at"
"""When the retry agent may re-run the effect: epoch milliseconds, ASCII decimal."""
ORIGIN_HEADER: Final = "sluice-origin"
"""The topic the record was first consumed from (UTF-8); ``dlq`` records and replays use
it, so it is never a ``retry.<delay>`` topic."""
ORIGIN_PARTITION_HEADER: Final = "sluice-origin-partition"
ORIGIN_OFFSET_HEADER: Final = "sluice-origin-offset"
EFFECT_HEADER: Final = "sluice-effect"
"""Which side effect failed, when one origin topic feeds several (UTF-8), so the retry
agent re-runs only that one."""
REASON_HEADER: Final = "sluice-reason"
"""Why the last attempt failed (``streams.domain.retry.failure_reason``, clipped)."""
FIRST_FAILED_AT_HEADER: Final = "sluice-first-failed-at"
"""When the first delivery failed: epoch milliseconds, ASCII decimal."""

RETRY_HEADER_NAMES: Final = frozenset(
    {
        ATTEMPT_HEADER,
        DUE_AT_HEADER,
        ORIGIN_HEADER,
        ORIGIN_PARTITION_HEADER,
        ORIGIN_OFFSET_HEADER,
        EFFECT_HEADER,
        REASON_HEADER,
        FIRST_FAILED_AT_HEADER,
    }
)
"""Every retry header: ``merge_headers`` replaces them, replays strip them."""
