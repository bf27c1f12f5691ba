"""The worker's librdkafka outbox against the real test broker: flush is a delivery
barrier, and a lost record is never forgotten."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.partitioner import DefaultPartitioner  # type: ignore[import-untyped]

from connectors.kafka_admin import create_topics
from connectors.kafka_outbox import DeliveryFailed, KafkaOutbox
from devstack import KafkaBroker
from schemas.catalog import TopicSpec
from tests.fixtures.kafka import end_offsets, header_map, read_topic

pytestmark = pytest.mark.integration


def _topic(bootstrap: str, partitions: int = 3) -> str:
    name = f"test.outbox.{uuid.uuid4().hex[:8]}"
    spec = TopicSpec(
        name=name,
        subject=None,
        key="key",
        partitions=partitions,
        retention_ms=None,
        compacted=False,
        doc="outbox test topic",
    )
    create_topics(bootstrap, [spec])
    return name


async def test_flush_returns_once_every_record_is_on_the_topic(kafka_broker: KafkaBroker) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = _topic(bootstrap)
    outbox = KafkaOutbox(bootstrap)
    for i in range(200):
        await outbox.send(topic, f"k{i}".encode(), f"v{i}".encode(), [("event-id", b"e%d" % i)])
    await outbox.flush(timeout_s=30)
    assert outbox.in_flight() == 0
    # Durable at flush: the high watermarks already count every record.
    assert sum(end_offsets(bootstrap, topic).values()) == 200
    messages = read_topic(bootstrap, topic)
    assert sorted(m.value() or b"" for m in messages) == sorted(
        f"v{i}".encode() for i in range(200)
    )
    assert header_map(messages[0])["event-id"].startswith("e")
    await outbox.close()


async def test_keys_land_in_the_partition_java_clients_choose(kafka_broker: KafkaBroker) -> None:
    # murmur2, like faust/aiokafka and the ingress: co-partitioned joins depend on it.
    bootstrap = kafka_broker.bootstrap_servers
    topic = _topic(bootstrap, partitions=6)
    outbox = KafkaOutbox(bootstrap)
    keys = [f"order-{i}".encode() for i in range(30)]
    for key in keys:
        await outbox.send(topic, key, b"x", [])
    await outbox.flush(timeout_s=30)
    partitions = list(range(6))
    for message in read_topic(bootstrap, topic):
        expected = DefaultPartitioner()(message.key(), partitions, partitions)  # murmur2
        assert message.partition() == expected
    await outbox.close()


async def test_a_record_that_cannot_be_delivered_fails_every_later_flush(
    kafka_broker: KafkaBroker,
) -> None:
    # A topic that does not exist (the broker does not create topics on demand): the
    # record fails once its delivery timeout passes.
    outbox = KafkaOutbox(
        kafka_broker.bootstrap_servers,
        delivery_timeout_s=1.0,
        extra_config={"topic.metadata.refresh.interval.ms": 200},
    )
    await outbox.send(f"test.outbox.missing.{uuid.uuid4().hex[:8]}", b"k", b"v", [])
    with pytest.raises(DeliveryFailed, match="not delivered"):
        await outbox.flush(timeout_s=30)
    # Sticky: no later barrier lets a commit through past the lost record.
    with pytest.raises(DeliveryFailed):
        await outbox.flush(timeout_s=5)
    await outbox.close(timeout_s=1)  # logs the undelivered record, raises nothing


async def test_send_after_close_is_refused(kafka_broker: KafkaBroker) -> None:
    outbox = KafkaOutbox(kafka_broker.bootstrap_servers)
    await outbox.close()
    with pytest.raises(DeliveryFailed, match="closed"):
        await outbox.send("anything", None, b"v", [])
