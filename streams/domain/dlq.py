"""Dead letters as pure code: the ``dlq`` record, the ``alerts`` record, what a replay
re-produces, and the guard that halts an agent that dead-letters too much.

Nothing here produces or reads Kafka; the worker and ``sluice dlq replay`` do, with what
these functions return. The ``dlq`` record follows ``schemas/avro/sluice.dlq.DeadLetter``.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

from base.errors import SluiceError
from schemas.replays import KEY_BYTES_HEADER, REPLAY_HEADER, ReplayTarget, replay_target
from streams.domain.retry import (
    ALERT_RETRIES_EXHAUSTED,
    HeadersLike,
    clean_reason,
    normalise_headers,
)

__all__ = [
    "ALERT_RETRIES_EXHAUSTED",
    "DEAD_LETTER_VERSION",
    "DLQ_EVENT_TYPE",
    "DLQ_SOURCE",
    "KEY_BYTES_HEADER",
    "REPLAY_HEADER",
    "DeadLetterGuard",
    "ReplayTarget",
    "TooManyDeadLetters",
    "alert_record",
    "dead_letter_event_id",
    "dead_letter_record",
    "encode_alert",
    "replay_target",
]

DLQ_EVENT_TYPE: Final = "dlq.record"
DEAD_LETTER_VERSION: Final = 1
DLQ_SOURCE: Final = "sluice.streams"

# Namespace of dead-letter and alert ids: the same failed record (topic, partition,
# offset) always dead-letters under the same id, so a re-run reproduces it.
_DLQ_NAMESPACE: Final = uuid.UUID("0d8f3a52-6c1e-4e8b-a7f4-3b9e2c51d6a7")


class TooManyDeadLetters(SluiceError):
    """The dead-letter rate guard tripped: halt the agent (do not produce the dead letter,
    do not commit) instead of dead-lettering everything after a bad deploy."""


def dead_letter_event_id(origin_topic: str, origin_partition: int, origin_offset: int) -> str:
    """The deterministic ``eventId`` of the dead letter of one origin record:
    uuid5 of ``"<topic>:<partition>:<offset>"``."""
    return str(uuid.uuid5(_DLQ_NAMESPACE, f"{origin_topic}:{origin_partition}:{origin_offset}"))


def dead_letter_record(
    *,
    origin_topic: str,
    origin_partition: int,
    origin_offset: int,
    key: bytes | None,
    value: bytes,
    headers: HeadersLike,
    reason: str,
    error_class: str,
    attempts: int,
    now_ms: int,
    correlation_id: str | None,
    source: str = DLQ_SOURCE,
) -> dict[str, Any]:
    """The ``dlq`` record (a dict for ``codec.encode("dlq", ...)``) for one failed record.

    Deterministic: the same arguments give the same record, and ``eventId`` depends only
    on the origin topic, partition and offset (:func:`dead_letter_event_id`).

    :param origin_topic: / :param origin_partition: / :param origin_offset: the original
        record (from ``RetryHeaders`` after retries). Only a record found on a
        ``retry.<delay>`` topic without usable retry headers is dead-lettered under that
        delay topic (its origin is unknown); :func:`replay_target` refuses to replay it.
    :param key: the original key bytes; decoded as UTF-8, or kept exactly in the
        :data:`KEY_BYTES_HEADER` origin header (``key`` then holds a lossy rendering) when
        it is not UTF-8.
    :param value: the original value bytes, unchanged.
    :param headers: the original headers, retry headers included (they show the retry
        history); ``originHeaders`` keeps the last value of each name, as the schema does.
    :param reason: cleaned again with :func:`~streams.domain.retry.clean_reason`.
    :param attempts: deliveries made (``DeadLetter.attempts``), at least 1.
    :param now_ms: epoch ms of the last failure: both ``occurredAt`` and ``failedAt``.
    :param correlation_id: of the original record; when ``None``, the original's
        ``correlation-id`` header, else the dead letter's own ``eventId``.
    :raises ValueError: partition, offset or attempts out of range (programming errors).
    """
    if origin_partition < 0 or origin_offset < 0:
        raise ValueError(f"bad origin position {origin_partition}@{origin_offset}")
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")

    origin_headers: dict[str, bytes] = dict(normalise_headers(headers))
    origin_headers.pop(KEY_BYTES_HEADER, None)
    key_text: str | None = None
    if key is not None:
        try:
            key_text = bytes(key).decode()
        except UnicodeDecodeError:
            key_text = bytes(key).decode(errors="backslashreplace")
            origin_headers[KEY_BYTES_HEADER] = bytes(key)

    event_id = dead_letter_event_id(origin_topic, origin_partition, origin_offset)
    if correlation_id is None:
        header = origin_headers.get("correlation-id")
        correlation_id = header.decode(errors="replace") if header else event_id
    return {
        "eventId": event_id,
        "eventType": DLQ_EVENT_TYPE,
        "version": DEAD_LETTER_VERSION,
        "occurredAt": now_ms,
        "correlationId": correlation_id,
        "source": source,
        "originTopic": origin_topic,
        "originPartition": origin_partition,
        "originOffset": origin_offset,
        "key": key_text,
        "value": bytes(value),
        "reason": clean_reason(reason) or error_class,
        "errorClass": error_class,
        "attempts": attempts,
        "failedAt": now_ms,
        "originHeaders": origin_headers,
    }


def alert_record(
    dead_letter: Mapping[str, Any], alert_type: str = ALERT_RETRIES_EXHAUSTED
) -> dict[str, Any]:
    """The ``alerts`` record announcing that ``dead_letter`` (a :func:`dead_letter_record`
    whose retries were exhausted, or whose refusal asked for an alert) went to ``dlq``;
    produce it keyed by its ``eventId``.

    ``alerts`` has no schema in the catalog yet, so alerts are JSON (:func:`encode_alert`)
    until one lands. Fields: ``eventId`` (uuid5 of the dead letter's id and the alert
    type, so a re-run reproduces it), ``eventType`` (``alert_type``:
    :data:`ALERT_RETRIES_EXHAUSTED` or ``ALERT_PERMANENT_FAILURE``),
    ``occurredAt`` (epoch ms), ``correlationId``, ``source``, ``origin`` (topic),
    ``originPartition``, ``originOffset``, ``reason``, ``errorClass``, ``attempts``,
    ``dlqEventId``. Never holds the record's key, value or headers.
    """
    dlq_event_id = str(dead_letter["eventId"])
    return {
        "eventId": str(uuid.uuid5(_DLQ_NAMESPACE, f"{dlq_event_id}:{alert_type}")),
        "eventType": alert_type,
        "occurredAt": int(dead_letter["failedAt"]),
        "correlationId": str(dead_letter["correlationId"]),
        "source": str(dead_letter["source"]),
        "origin": str(dead_letter["originTopic"]),
        "originPartition": int(dead_letter["originPartition"]),
        "originOffset": int(dead_letter["originOffset"]),
        "reason": str(dead_letter["reason"]),
        "errorClass": str(dead_letter["errorClass"]),
        "attempts": int(dead_letter["attempts"]),
        "dlqEventId": dlq_event_id,
    }


def encode_alert(alert: Mapping[str, Any]) -> bytes:
    """An alert as the ``alerts`` value: compact UTF-8 JSON with sorted keys (the same
    alert always gives the same bytes)."""
    return json.dumps(alert, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class DeadLetterGuard:
    """Halts an agent that dead-letters too much (arroyo's ``DlqLimit``), so a bad deploy
    stops the agent instead of sending every record to ``dlq``.

    Call :meth:`record` once per processed record, *before* producing a dead letter: when
    it raises, the agent crashes without producing or committing, and the record is
    processed again after the fix. Keep one guard per agent (per partition if wanted);
    state lives in memory and restarts empty.

    :param max_consecutive: dead letters allowed in a row; one more trips the guard.
    :param max_ratio: the guard trips when more than this fraction of the last ``window``
        records were dead-lettered, once at least ``ceil(window / 10)`` have been seen.
    :param window: how many recent records the ratio looks at.
    :raises ValueError: a parameter is out of range.
    """

    def __init__(
        self, max_consecutive: int = 100, max_ratio: float = 0.5, window: int = 1000
    ) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be at least 1, got {max_consecutive}")
        if not 0.0 < max_ratio <= 1.0:
            raise ValueError(f"max_ratio must be in (0, 1], got {max_ratio}")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self._max_consecutive = max_consecutive
        self._max_ratio = max_ratio
        self._window: deque[bool] = deque(maxlen=window)
        self._min_seen = math.ceil(window / 10)
        self._dead = 0
        self._consecutive = 0

    @property
    def consecutive(self) -> int:
        """Dead letters in a row, up to the last recorded record."""
        return self._consecutive

    @property
    def ratio(self) -> float:
        """Fraction of the records in the window that were dead-lettered (0 when empty)."""
        return self._dead / len(self._window) if self._window else 0.0

    def record(self, dead_lettered: bool) -> None:
        """Count one processed record. O(1).

        :raises TooManyDeadLetters: more than ``max_consecutive`` dead letters in a row, or
            more than ``max_ratio`` of the window (once the window holds enough records).
            The record is counted either way.
        """
        window = self._window
        if len(window) == window.maxlen and window[0]:
            self._dead -= 1
        window.append(dead_lettered)
        if dead_lettered:
            self._dead += 1
            self._consecutive += 1
        else:
            self._consecutive = 0
        if self._consecutive > self._max_consecutive:
            raise TooManyDeadLetters(
                f"halting: {self._consecutive} records in a row went to dlq "
                f"(at most {self._max_consecutive} allowed)"
            )
        if len(window) >= self._min_seen and self.ratio > self._max_ratio:
            raise TooManyDeadLetters(
                f"halting: {self._dead} of the last {len(window)} records went to dlq "
                f"(more than {self._max_ratio:.0%})"
            )
