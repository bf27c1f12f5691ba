"""What a replay puts on Kafka: the replay headers, and the original record of a dead
letter ready to be produced again (pure).

Two kinds of replay share these headers: ``sluice dlq replay`` / ``POST
/v1/admin/dlq/replay`` (a dead letter back to its origin topic) and ``sluice replay`` /
``POST /v1/admin/webhooks/replay`` (a stored raw webhook back to its
``webhooks.<provider>`` topic). Both carry ``sluice-replay: 1``, which the webhook dedupe
lets through on purpose, and, when the operator's replay has an id, ``sluice-replay-id``
naming it, so a record on the topic can be traced to the request that replayed it.

Here, below ``streams`` and ``ingress``, because the worker reads these headers and the
ingress, the CLI and the worker's dead-letter code write them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from schemas.retry_headers import RETRY_HEADER_NAMES

__all__ = [
    "KEY_BYTES_HEADER",
    "REPLAY_HEADER",
    "REPLAY_ID_HEADER",
    "ReplayTarget",
    "replay_target",
]

REPLAY_HEADER: Final = "sluice-replay"
"""Set to ``b"1"`` on replayed records: dedupe lets them through on purpose."""
REPLAY_ID_HEADER: Final = "sluice-replay-id"
"""The id of the operator's replay (``replayId`` of the admin API's answer), UTF-8."""
KEY_BYTES_HEADER: Final = "sluice-key-bytes"
"""Kept in ``originHeaders`` only when the original key is not UTF-8 (the schema's ``key``
is a string): the exact key bytes, so a replay lands on the same partition."""

_RETRY_TOPIC_PREFIX: Final = "retry."


class ReplayTarget(NamedTuple):
    """What a dead-letter replay re-produces for one dead letter."""

    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def replay_target(record: Mapping[str, Any], replay_id: str | None = None) -> ReplayTarget:
    """The original record of a decoded ``dlq`` record, ready to re-produce: its origin
    topic, exact key bytes, value bytes, and original headers without the retry headers
    (the replay starts a fresh retry history) plus ``sluice-replay: 1``, which dedupe
    lets through on purpose, and ``sluice-replay-id`` when ``replay_id`` is given. Header
    order follows ``originHeaders``.

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
    dropped = RETRY_HEADER_NAMES | {KEY_BYTES_HEADER, REPLAY_HEADER, REPLAY_ID_HEADER}
    headers = [(n, bytes(v)) for n, v in origin_headers.items() if n not in dropped]
    headers.append((REPLAY_HEADER, b"1"))
    if replay_id:
        headers.append((REPLAY_ID_HEADER, replay_id.encode()))
    return ReplayTarget(topic=topic, key=key, value=bytes(record["value"]), headers=headers)
