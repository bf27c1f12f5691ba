"""Read a topic from the beginning up to its current end, then stop (operator tools)."""

from __future__ import annotations

import logging
import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from base.errors import TransientError

__all__ = ["end_offsets", "read_to_end"]

# librdkafka's own lines go through Python logging (one format per process), not stderr.
_LIBRDKAFKA_LOG = logging.getLogger("librdkafka")


def end_offsets(bootstrap_servers: str, topic: str, *, timeout_s: float = 10.0) -> dict[int, int]:
    """High watermark of each partition of ``topic``."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": "sluice-offsets",
            "logger": _LIBRDKAFKA_LOG,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            raise TransientError(f"topic {topic} not found")
        return {p: _high_watermark(consumer, topic, p, timeout_s) for p in found.partitions}
    finally:
        consumer.close()


# Right after a topic is created (or a broker restarts) its partitions may still be
# electing a leader; the broker then answers these, which pass within a second or two.
_LEADER_PENDING = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
}


def _high_watermark(consumer: Consumer, topic: str, partition: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return int(
                consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)[
                    1
                ]
            )
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args else None
            if code not in _LEADER_PENDING or time.monotonic() > deadline:
                raise TransientError(f"offsets of {topic}[{partition}]: {exc}") from exc
            time.sleep(0.2)


def read_to_end(
    bootstrap_servers: str, topic: str, *, key: bytes | None = None, timeout_s: float = 30.0
) -> list[Message]:
    """Every record now on ``topic`` (only those with ``key`` when given), by partition
    then offset. Never joins a consumer group, never commits.

    :raises TransientError: when the end is not reached within ``timeout_s``.
    """
    targets = end_offsets(bootstrap_servers, topic)
    pending = {partition for partition, end in targets.items() if end > 0}
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"sluice-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "logger": _LIBRDKAFKA_LOG,
        }
    )
    found: list[Message] = []
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in pending])
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TransientError(f"timed out reading {topic}: {sorted(pending)} unfinished")
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise TransientError(f"reading {topic} failed: {error.str()}")
            if key is None or message.key() == key:
                found.append(message)
            partition, offset = message.partition(), message.offset()
            if partition is not None and offset is not None and offset + 1 >= targets[partition]:
                pending.discard(partition)
    finally:
        consumer.close()
    return found
