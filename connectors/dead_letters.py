"""Dead letters on the ``dlq`` topic: list them (filtered, a page at a time), show one
with its original decoded, and send them back to their origin topics.

One module for both doors: ``sluice dlq list|replay`` (``sluice/dlq.py`` prints what
this returns) and the admin API (``GET /v1/admin/dlq``, ``GET /v1/admin/dlq/{id}``,
``POST /v1/admin/dlq/replay``, ``ingress/admin_dlq.py``, which calls these in a
thread: they block on the broker).

Reads never join a consumer group and never commit (``connectors.kafka_reader``). A
dead letter is found by its ``eventId`` (deterministic from its origin position,
``streams.domain.dlq.dead_letter_event_id``); a page's cursor is the ``dlq`` position
after which the next page starts, so paging costs a read of what follows it, not of the
whole topic.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from confluent_kafka import Producer

from base.errors import InvalidEvent, TransientError
from connectors.kafka_reader import read_to_end
from schemas.codec import Codec
from schemas.replay import replay_target

__all__ = [
    "DLQ_TOPIC",
    "DeadLetterFilter",
    "DeadLetterPage",
    "StoredDeadLetter",
    "dead_letter_detail",
    "dead_letters",
    "find_dead_letter",
    "jsonable",
    "list_lines",
    "page_dead_letters",
    "parse_cursor",
    "replay",
    "stored_dead_letters",
    "summary",
]

log = logging.getLogger(__name__)

DLQ_TOPIC: Final = "dlq"
_BEYOND: Final = 2**62  # a start offset past any end: the partition is not read


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """A decoded ``dlq`` record and where it sits on the topic."""

    partition: int
    offset: int
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    """Which dead letters to select; every condition given must hold.

    :param event_ids: dead-letter ``eventId`` s (empty: any).
    :param origin_topic: the topic the failed record came from.
    :param reason: a case-insensitive substring of the reason or the error class.
    :param since_ms: / :param until_ms: ``failedAt`` in ``[since, until)``, epoch ms.
    """

    event_ids: frozenset[str] = field(default_factory=frozenset)
    origin_topic: str | None = None
    reason: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, record: Mapping[str, Any]) -> bool:
        if self.event_ids and record["eventId"] not in self.event_ids:
            return False
        if self.origin_topic is not None and record["originTopic"] != self.origin_topic:
            return False
        if self.reason is not None:
            wanted = self.reason.lower()
            text = f"{record['reason']} {record['errorClass']}".lower()
            if wanted not in text:
                return False
        failed_at = int(record["failedAt"])
        if self.since_ms is not None and failed_at < self.since_ms:
            return False
        return not (self.until_ms is not None and failed_at >= self.until_ms)


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    """One page of dead letters, oldest first, and the cursor of the next (None: last)."""

    items: tuple[StoredDeadLetter, ...]
    next_cursor: str | None


def stored_dead_letters(
    bootstrap_servers: str,
    codec: Codec,
    topic: str = DLQ_TOPIC,
    *,
    after: tuple[int, int] | None = None,
) -> Iterator[StoredDeadLetter]:
    """Every decodable record now on ``topic``, by partition then offset; with ``after``
    (partition, offset) only those past it in that order.

    :raises TransientError: the topic could not be read to its end in time.
    """
    start: dict[int, int] | None = None
    if after is not None:
        partition, offset = after
        # Earlier partitions were read by earlier pages; later ones start at the beginning.
        start = {p: _BEYOND for p in range(partition)} | {partition: offset + 1}
    for message in read_to_end(bootstrap_servers, topic, start=start):
        value = message.value()
        at, position = message.partition(), message.offset()
        if not isinstance(value, bytes) or at is None or position is None:
            continue
        try:
            record = codec.decode(value, topic=DLQ_TOPIC).record
        except InvalidEvent:
            continue  # not ours to interpret; `sluice tail dlq` shows it raw
        yield StoredDeadLetter(at, position, record)


def dead_letters(
    bootstrap_servers: str, codec: Codec, topic: str = DLQ_TOPIC
) -> Iterator[dict[str, Any]]:
    """Every decodable record now on ``topic``, oldest first within each partition."""
    for stored in stored_dead_letters(bootstrap_servers, codec, topic):
        yield stored.record


def summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """A dead letter as the CLI and the API list it (JSON-ready, without its value)."""
    return {
        "eventId": record["eventId"],
        "originTopic": record["originTopic"],
        "originPartition": record["originPartition"],
        "originOffset": record["originOffset"],
        "key": record["key"],
        "reason": record["reason"],
        "errorClass": record["errorClass"],
        "attempts": record["attempts"],
        "failedAt": record["failedAt"],
        "correlationId": record["correlationId"],
    }


def list_lines(
    bootstrap_servers: str, codec: Codec, topic: str = DLQ_TOPIC
) -> Iterator[dict[str, Any]]:
    """One JSON-ready summary per dead letter (the value as base64)."""
    for record in dead_letters(bootstrap_servers, codec, topic):
        yield {**summary(record), "valueBase64": base64.b64encode(record["value"]).decode()}


def parse_cursor(text: str) -> tuple[int, int]:
    """The ``dlq`` position a page cursor names (``"<partition>:<offset>"``).

    :raises InvalidEvent: (field ``cursor``) it is not one.
    """
    partition, sep, offset = text.partition(":")
    if not (sep and partition.isdigit() and offset.isdigit() and len(text) <= 40):
        raise InvalidEvent("cursor must be a cursor from a previous page", field="cursor")
    return int(partition), int(offset)


def page_dead_letters(
    bootstrap_servers: str,
    codec: Codec,
    selection: DeadLetterFilter,
    *,
    limit: int,
    after: tuple[int, int] | None = None,
    topic: str = DLQ_TOPIC,
) -> DeadLetterPage:
    """Up to ``limit`` dead letters matching ``selection``, past ``after``, oldest first.

    :raises TransientError: the topic could not be read in time.
    """
    items: list[StoredDeadLetter] = []
    more = False
    for stored in stored_dead_letters(bootstrap_servers, codec, topic, after=after):
        if not selection.matches(stored.record):
            continue
        if len(items) == limit:
            more = True
            break
        items.append(stored)
    next_cursor = f"{items[-1].partition}:{items[-1].offset}" if more and items else None
    return DeadLetterPage(tuple(items), next_cursor)


def find_dead_letter(
    bootstrap_servers: str, codec: Codec, event_id: str, topic: str = DLQ_TOPIC
) -> StoredDeadLetter | None:
    """The dead letter with ``eventId`` ``event_id`` (the latest, should it be there twice:
    a re-run dead-letters the same origin record under the same id), or None."""
    found = None
    for stored in stored_dead_letters(bootstrap_servers, codec, topic):
        if stored.record["eventId"] == event_id:
            found = stored
    return found


def dead_letter_detail(stored: StoredDeadLetter, codec: Codec) -> dict[str, Any]:
    """Everything about one dead letter, JSON-ready: its summary, where it sits on the
    ``dlq`` topic, the original value (base64) and headers, and the original decoded
    (``original``: its subject, version and record, bytes fields as base64) when it
    decodes as a record of its origin topic, else ``original`` null and the reason in
    ``originalError``."""
    record = stored.record
    detail: dict[str, Any] = {
        **summary(record),
        "source": record["source"],
        "dlqPartition": stored.partition,
        "dlqOffset": stored.offset,
        "valueBase64": base64.b64encode(record["value"]).decode(),
        "originHeaders": {
            name: _header_text(value) for name, value in (record.get("originHeaders") or {}).items()
        },
        "original": None,
        "originalError": None,
    }
    try:
        decoded = codec.decode(bytes(record["value"]), topic=str(record["originTopic"]))
    except (InvalidEvent, TransientError) as exc:
        detail["originalError"] = str(exc)[:500]
    except Exception as exc:  # an unknown origin topic, say: shown, not raised
        detail["originalError"] = f"{type(exc).__name__}: {str(exc)[:480]}"
    else:
        detail["original"] = {
            "subject": decoded.subject,
            "version": decoded.version,
            "record": jsonable(decoded.record),
        }
    return detail


def jsonable(value: Any) -> Any:
    """``value`` with every ``bytes`` as base64 text, so it serialises as JSON."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def replay(
    bootstrap_servers: str,
    codec: Codec,
    *,
    event_ids: Collection[str] = (),
    origin_topic: str | None = None,
    selection: DeadLetterFilter | None = None,
    replay_id: str | None = None,
    max_count: int | None = None,
    timeout_s: float = 30.0,
) -> list[str]:
    """Re-produce the selected dead letters to their origin topics, marked as replays
    (``schemas.replay.replay_target``: dedupe lets them through). Selects by dead-letter
    ``eventId`` and/or origin topic, or by ``selection``; with none of them, replays
    everything. At most ``max_count`` when given (oldest first). Returns the replayed
    dead-letter ids.

    A dead letter whose origin is unknown (found on a ``retry.<delay>`` topic without
    its headers) is skipped with a warning.

    :raises TransientError: when the records could not be made durable in time.
    """
    if selection is None:
        selection = DeadLetterFilter(event_ids=frozenset(event_ids), origin_topic=origin_topic)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap_servers,
            "enable.idempotence": True,
            "acks": "all",
            # Java's partitioner, as the ingress and faust use: a replayed record goes back
            # to the partition its key belongs to (the join is co-partitioned by key).
            "partitioner": "murmur2_random",
            # librdkafka's own lines go through Python logging, not raw onto stderr.
            "logger": logging.getLogger("librdkafka"),
        }
    )
    failures: list[str] = []
    replayed: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    for record in dead_letters(bootstrap_servers, codec):
        if not selection.matches(record):
            continue
        if max_count is not None and len(replayed) >= max_count:
            break
        try:
            target = replay_target(record, replay_id)
        except ValueError as exc:
            logging.getLogger(__name__).warning(
                "dead letter not replayable",
                extra={"event_id": record["eventId"], "error": str(exc)},
            )
            continue
        producer.produce(
            target.topic,
            key=target.key,
            value=target.value,
            headers=list(target.headers),
            on_delivery=on_delivery,
        )
        replayed.append(record["eventId"])
    remaining = producer.flush(timeout_s)
    if remaining or failures:
        raise TransientError(f"replay not durable: {remaining} pending, errors {failures[:3]}")
    return replayed


def _header_text(value: bytes) -> str:
    try:
        return bytes(value).decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(bytes(value)).decode()
