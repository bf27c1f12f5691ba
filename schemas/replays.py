"""Retry and replay headers, and what replaying a dead letter re-produces.

Pure code on the record format: the headers the worker's retries put on a record, the
``sluice-replay`` mark, and :func:`replay_target`, which turns a decoded ``dlq`` record
back into its original record. Here (not in the worker's ``streams.domain``) so every
replayer shares one definition: ``sluice dlq replay``, the admin API and the dashboard
(through ``connectors.dead_letters``), none of which may import the worker.
``streams.domain.retry`` and ``streams.domain.dlq`` re-export these names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple

__all__ = [
    "ATTEMPT_HEADER",
    "DUE_AT_HEADER",
    "EFFECT_HEADER",
    "FIRST_FAILED_AT_HEADER",
    "KEY_BYTES_HEADER",
    "ORIGIN_HEADER",
    "ORIGIN_OFFSET_HEADER",
    "ORIGIN_PARTITION_HEADER",
    "REASON_HEADER",
    "REPLAY_HEADER",
    "RETRY_HEADER_NAMES",
    "ReplayTarget",
    "replay_target",
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
"""Why the last attempt failed: ``streams.domain.retry.failure_reason``, at most 500 characters."""
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
"""Every retry header: ``streams.domain.retry.merge_headers`` replaces them, replays strip
them."""

REPLAY_HEADER: Final = "sluice-replay"
"""Set to ``b"1"`` on replayed records: dedupe lets them through on purpose."""
KEY_BYTES_HEADER: Final = "sluice-key-bytes"
"""Kept in ``originHeaders`` only when the original key is not UTF-8 (the schema's ``key``
is a string): the exact key bytes, so a replay lands on the same partition."""

_RETRY_TOPIC_PREFIX: Final = "retry."


class ReplayTarget(NamedTuple):
    """What ``sluice dlq replay`` re-produces for one dead letter."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def replay_target(record: Mapping[str, Any]) -> ReplayTarget:
    """The original record of a decoded ``dlq`` record, ready to re-produce: its origin
    topic, exact key bytes, value bytes, and original headers without the retry headers
    (the replay starts a fresh retry history) plus ``sluice-replay: 1``, which dedupe
    lets through on purpose. Header order follows ``originHeaders``.

    :raises ValueError: the record names a ``retry.<delay>`` origin topic (a retried record
        that lost its headers): where it came from is unknown, so it cannot be replayed.
    """
    topic = str(record["originTopic"])
    if topic.startswith(_RETRY_TOPIC_PREFIX):
        raise ValueError(
            f"cannot replay dead letter {record.get('eventId')}: its origin is unknown "
            f"(found on {topic} without retry headers)"
        )
    origin_headers: Mapping[str, bytes] = record.get("originHeaders") or {}
    key_bytes = origin_headers.get(KEY_BYTES_HEADER)
    key_text: str | None = record.get("key")
    key: bytes | None = key_bytes
    if key is None and key_text is not None:
        key = key_text.encode()
    dropped = RETRY_HEADER_NAMES | {KEY_BYTES_HEADER, REPLAY_HEADER}
    headers = [(n, bytes(v)) for n, v in origin_headers.items() if n not in dropped]
    headers.append((REPLAY_HEADER, b"1"))
    return ReplayTarget(topic=topic, key=key, value=bytes(record["value"]), headers=headers)
