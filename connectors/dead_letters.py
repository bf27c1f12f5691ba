"""Dead letters on Kafka: read them, summarise them, replay them to their origin topic.

The one replay core shared by ``sluice dlq list|replay``, the admin API and the dashboard
(the ingress may not import ``sluice``, so it lives here): each reads the ``dlq`` topic to
its end and re-produces the selected records with :func:`schemas.replays.replay_target`.
Blocking (confluent-kafka); the ingress calls it in a thread.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Collection, Iterator
from typing import Any

from confluent_kafka import Producer

from base.errors import InvalidEvent, TransientError
from connectors.kafka_reader import read_to_end
from schemas.codec import Codec
from schemas.replays import replay_target

__all__ = ["DLQ_TOPIC", "dead_letters", "list_lines", "replay", "summary"]

DLQ_TOPIC = "dlq"


def dead_letters(
    bootstrap_servers: str, codec: Codec, topic: str = DLQ_TOPIC
) -> Iterator[dict[str, Any]]:
    """Every decodable record now on ``topic``, oldest first within each partition."""
    for message in read_to_end(bootstrap_servers, topic):
        value = message.value()
        if not isinstance(value, bytes):
            continue
        try:
            yield codec.decode(value, topic=DLQ_TOPIC).record
        except InvalidEvent:
            continue  # not ours to interpret; `sluice tail dlq` shows it raw


def list_lines(
    bootstrap_servers: str, codec: Codec, topic: str = DLQ_TOPIC
) -> Iterator[dict[str, Any]]:
    """One JSON-ready summary per dead letter (the value as base64)."""
    for record in dead_letters(bootstrap_servers, codec, topic):
        yield summary(record)


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """A decoded dead letter as JSON-ready fields (the value as base64)."""
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
        "valueBase64": base64.b64encode(record["value"]).decode(),
    }


def replay(
    bootstrap_servers: str,
    codec: Codec,
    *,
    event_ids: Collection[str] = (),
    origin_topic: str | None = None,
    timeout_s: float = 30.0,
) -> list[str]:
    """Re-produce the selected dead letters to their origin topics, marked as replays
    (dedupe lets them through). Selects by dead-letter ``eventId`` and/or origin topic;
    with neither, replays everything. Returns the replayed dead-letter ids.

    :raises TransientError: when the records could not be made durable in time.
    """
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
        if event_ids and record["eventId"] not in event_ids:
            continue
        if origin_topic and record["originTopic"] != origin_topic:
            continue
        target = replay_target(record)
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
