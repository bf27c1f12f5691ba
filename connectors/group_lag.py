"""How far a consumer group is behind: its committed offsets against the high watermarks.

The dashboard reads the worker's group (``SLUICE_APP_ID``) this way: no access to the
worker process is needed, only the broker. Blocking (confluent-kafka); the ingress calls
it in a thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException
from confluent_kafka.admin import AdminClient

from base.errors import TransientError
from connectors.kafka_reader import high_watermarks

__all__ = ["PartitionLag", "group_lag"]

_LIBRDKAFKA_LOG = logging.getLogger("librdkafka")


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition the group has committed on: ``committed`` (the next offset it will
    read), ``end`` (the high watermark) and ``lag`` (``end - committed``, never negative)."""

    topic: str
    partition: int
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


def group_lag(bootstrap_servers: str, group: str, *, timeout_s: float = 5.0) -> list[PartitionLag]:
    """Every partition ``group`` has a committed offset on, by topic then partition.

    A group that never committed has no partitions here (an empty list).

    :raises TransientError: the broker did not answer within ``timeout_s``.
    """
    admin = AdminClient({"bootstrap.servers": bootstrap_servers}, logger=_LIBRDKAFKA_LOG)
    try:
        futures = admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=timeout_s
        )
        answer = futures[group].result(timeout=timeout_s)
    except (KafkaException, TimeoutError) as exc:  # the future's own TimeoutError too
        raise TransientError(f"offsets of group {group}: {exc}") from exc
    committed = {
        (tp.topic, tp.partition): tp.offset
        for tp in answer.topic_partitions or ()
        if tp.offset >= 0  # -1001: no offset committed on that partition
    }
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"{group}-lag-reader",
            "logger": _LIBRDKAFKA_LOG,
        }
    )
    try:
        ends = {
            topic: high_watermarks(consumer, topic, timeout_s=timeout_s)
            for topic in sorted({topic for topic, _ in committed})
        }
    finally:
        consumer.close()
    return [
        PartitionLag(topic, partition, offset, ends[topic].get(partition, offset))
        for (topic, partition), offset in sorted(committed.items())
    ]
