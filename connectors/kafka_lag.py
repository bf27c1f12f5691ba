"""Consumer lag of a group, per topic and partition, read from Kafka when asked.

Three batched admin requests per reading, whatever the number of partitions: the topics'
metadata, the group's committed offsets, and the partitions' earliest and latest offsets.
The lag of a partition is its high watermark minus the group's committed offset (its
earliest retained offset while the group committed nothing: the group starts from there).
Readings are kept for ``min_interval_s``, so scrapes in a burst ask Kafka once; a broker
that does not answer in ``timeout_s`` gives no samples (Prometheus then shows the gap)
rather than stale ones.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin import OffsetSpec as _Spec  # type: ignore[attr-defined]

__all__ = ["ConsumerLag"]

log = logging.getLogger(__name__)

_LIBRDKAFKA_LOG = logging.getLogger("librdkafka")
_LATEST: Any = _Spec.latest()  # type: ignore[no-untyped-call]
_EARLIEST: Any = _Spec.earliest()  # type: ignore[no-untyped-call]

Sample = tuple[tuple[str, ...], float]


class ConsumerLag:
    """Reads the lag of ``group`` on ``topics``; thread-safe (one reading at a time)."""

    def __init__(
        self,
        bootstrap_servers: str,
        group: str,
        topics: Iterable[str],
        *,
        timeout_s: float = 5.0,
        min_interval_s: float = 1.0,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._group = group
        self._topics = sorted(set(topics))
        self._timeout_s = timeout_s
        self._min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._admin: AdminClient | None = None
        self._read_at = float("-inf")
        self._samples: list[Sample] = []

    def samples(self) -> list[Sample]:
        """``((topic, partition), lag)`` for every partition of the topics (none when
        Kafka did not answer)."""
        with self._lock:
            if time.monotonic() - self._read_at >= self._min_interval_s:
                try:
                    self._samples = [
                        ((topic, str(partition)), float(lag))
                        for (topic, partition), lag in sorted(self.read().items())
                    ]
                except (KafkaException, TimeoutError) as exc:
                    log.debug("consumer lag not read", extra={"error": str(exc)})
                    self._samples = []
                self._read_at = time.monotonic()
            return list(self._samples)

    def read(self) -> dict[tuple[str, int], int]:
        """The lag of every partition, read now.

        :raises KafkaException: / :raises TimeoutError: Kafka did not answer in time.
        """
        admin = self._client()
        try:
            metadata = admin.list_topics(timeout=self._timeout_s)
            partitions = [
                TopicPartition(topic, partition)
                for topic in self._topics
                if topic in metadata.topics
                for partition in sorted(metadata.topics[topic].partitions)
            ]
            if not partitions:
                return {}
            committed = self._committed(admin, partitions)
            latest = self._offsets(admin, partitions, _LATEST)
            earliest = self._offsets(admin, partitions, _EARLIEST)
        finally:
            admin.poll(0)  # librdkafka's queued log lines reach the logger on poll
        lag: dict[tuple[str, int], int] = {}
        for tp in partitions:
            key = (tp.topic, tp.partition)
            start = committed.get(key)
            if start is None or start < 0:
                start = earliest[key]
            lag[key] = max(latest[key] - start, 0)
        return lag

    def close(self) -> None:
        with self._lock:
            self._admin = None

    def _client(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient(
                {"bootstrap.servers": self._bootstrap, "client.id": "sluice-lag"},
                logger=_LIBRDKAFKA_LOG,
            )
        return self._admin

    def _committed(
        self, admin: AdminClient, partitions: list[TopicPartition]
    ) -> dict[tuple[str, int], int]:
        request = ConsumerGroupTopicPartitions(self._group, partitions)
        futures = admin.list_consumer_group_offsets([request], request_timeout=self._timeout_s)
        answer = futures[self._group].result(timeout=self._timeout_s)
        return {(tp.topic, tp.partition): tp.offset for tp in answer.topic_partitions}

    def _offsets(
        self, admin: AdminClient, partitions: list[TopicPartition], spec: Any
    ) -> dict[tuple[str, int], int]:
        futures = admin.list_offsets(
            {tp: spec for tp in partitions}, request_timeout=self._timeout_s
        )
        return {
            (tp.topic, tp.partition): future.result(timeout=self._timeout_s).offset
            for tp, future in futures.items()
        }
