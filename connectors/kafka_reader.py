"""Kafka offsets and reads for operators, tests and the benches: the high watermarks of a
topic (riding out a leader election), and a topic read from the beginning to its end."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from base.errors import TransientError

__all__ = ["end_offsets", "high_watermarks", "read_to_end"]

_T = TypeVar("_T")
_RETRY_EVERY_S = 0.2

# Right after a topic is created (or a broker restarts) its partitions may still be
# electing a leader, or the broker may not know the topic yet; it then answers one of
# these, which pass within a second or two. librdkafka does not flag them retriable
# (``KafkaError.retriable()`` is False for all four), so they are named.
_LEADER_PENDING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
    }
)

# librdkafka's own lines go through Python logging (one format per process), not stderr.
_LIBRDKAFKA_LOG = logging.getLogger("librdkafka")


def end_offsets(bootstrap_servers: str, topic: str, *, timeout_s: float = 10.0) -> dict[int, int]:
    """High watermark of each partition of ``topic`` (see :func:`high_watermarks`)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": "sluice-offsets",
            "logger": _LIBRDKAFKA_LOG,
        }
    )
    try:
        return high_watermarks(consumer, topic, timeout_s=timeout_s)
    finally:
        consumer.close()


def high_watermarks(consumer: Consumer, topic: str, *, timeout_s: float = 10.0) -> dict[int, int]:
    """High watermark of each partition of ``topic``, asked of the broker through
    ``consumer`` (never a cached value). The one place Sluice reads watermarks.

    Waits, up to ``timeout_s`` in all, while the topic is unknown or a partition has no
    settled leader (a topic created moments ago, a broker restarting).

    :raises TransientError: still unanswered after ``timeout_s``, or any other error.
    """
    deadline = time.monotonic() + timeout_s

    def partitions() -> list[int]:
        found = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if found is None:
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
        if found.error is not None:
            raise KafkaException(found.error)
        if not found.partitions:
            raise KafkaException(KafkaError(KafkaError.LEADER_NOT_AVAILABLE))
        return sorted(found.partitions)

    def high(partition: int) -> int:
        wanted = TopicPartition(topic, partition)
        return int(consumer.get_watermark_offsets(wanted, timeout=timeout_s, cached=False)[1])

    return {
        p: _settled(functools.partial(high, p), deadline, f"{topic}[{p}]")
        for p in _settled(partitions, deadline, topic)
    }


def _settled(call: Callable[[], _T], deadline: float, what: str) -> _T:
    """``call()``, asked again while the broker answers a leader-pending or retriable
    error and ``deadline`` (monotonic) has not passed."""
    while True:
        try:
            return call()
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            pending = isinstance(error, KafkaError) and (
                error.retriable() or error.code() in _LEADER_PENDING
            )
            if not pending or time.monotonic() > deadline:
                raise TransientError(f"offsets of {what}: {exc}") from exc
            time.sleep(_RETRY_EVERY_S)


def read_to_end(
    bootstrap_servers: str,
    topic: str,
    *,
    key: bytes | None = None,
    timeout_s: float = 30.0,
    start: Mapping[int, int] | None = None,
) -> list[Message]:
    """Every record now on ``topic`` (only those with ``key`` when given), by partition
    then offset. Never joins a consumer group, never commits.

    :param start: the offset to start at per partition (a page's cursor); partitions it
        does not name start at the beginning.
    :raises TransientError: when the end is not reached within ``timeout_s``.
    """
    targets = end_offsets(bootstrap_servers, topic)
    first = {partition: (start or {}).get(partition, 0) for partition in targets}
    pending = {partition for partition, end in targets.items() if end > first[partition]}
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"sluice-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            # A start before what retention kept begins at the oldest record kept,
            # rather than at the end (where nothing would come and the read time out).
            "auto.offset.reset": "earliest",
            "logger": _LIBRDKAFKA_LOG,
        }
    )
    found: list[Message] = []
    try:
        consumer.assign([TopicPartition(topic, p, first[p]) for p in pending])
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
