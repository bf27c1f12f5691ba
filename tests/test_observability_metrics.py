"""Acceptance (issue 14): after a known run through a real ingress and `sluice worker`,
the counters, the latency histograms and the consumer lag read on /metrics match what
was sent. Plus the lag reader against a group of its own, with a known backlog."""

from __future__ import annotations

import time
import urllib.request
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from connectors.kafka_admin import create_changelog_topics
from connectors.kafka_lag import ConsumerLag
from devstack.ports import free_port
from streams.observe import RetryHeads
from tests.fixtures.ingress import post_stripe
from tests.fixtures.worker import Pipeline
from tests.payloads.stripe import stripe_event

pytestmark = pytest.mark.integration

METRICS_PORT = free_port()
PIPELINE_ENV = {"SLUICE_WORKER_METRICS_PORT": str(METRICS_PORT)}
N = 7

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def worker_samples() -> Samples:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10) as r:
            return parse(r.read().decode())
    except OSError:
        return {}


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        value
        for (metric, found), value in samples.items()
        if metric == name and set(labels.items()) <= set(found)
    )


def lag_of(samples: Samples, topic: str) -> dict[str, float]:
    return {
        dict(labels)["partition"]: value
        for (metric, labels), value in samples.items()
        if metric == "sluice_worker_consumer_lag" and dict(labels)["topic"] == topic
    }


async def test_a_known_run_reads_back_on_both_metrics_endpoints(pipeline: Pipeline) -> None:
    ingress = pipeline.ingress

    async def ingress_samples() -> Samples:
        async with ingress.http.get(f"{ingress.internal}/metrics") as response:
            return parse(await response.text())

    await pipeline.wait_for("the worker's /metrics", lambda: bool(worker_samples()))
    # Whatever earlier tests of the session left: the ingress is the session's.
    before, worker_before = await ingress_samples(), worker_samples()

    ids = [f"evt_{uuid.uuid4().hex[:14]}" for _ in range(N)]
    for event_id in ids:
        assert (
            await post_stripe(ingress, stripe_event("payment_intent.succeeded", event_id=event_id))
            == 200
        )
    # One unsigned request: refused, counted under its status, nothing published.
    async with ingress.http.post(
        f"{ingress.public}/v1/webhooks/stripe",
        data=b"{}",
        headers={"Content-Type": "application/json"},
    ) as refused:
        assert refused.status == 401

    after = await ingress_samples()

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("sluice_http_requests_total", route="webhook.stripe", status="200") == N
    assert delta("sluice_http_requests_total", route="webhook.stripe", status="401") == 1
    assert delta("sluice_ingress_records_published_total", topic="webhooks.stripe") == N
    published = {"topic": "webhooks.stripe", "outcome": "ok"}
    assert delta("sluice_ingress_publish_seconds_count", **published) == N
    assert delta("sluice_ingress_publish_seconds_sum", **published) > 0

    await pipeline.wait_for(
        "every webhook projected",
        lambda: (
            pipeline.scalar(
                "SELECT count(*) FROM webhook_events WHERE event_id = ANY(%s)"
                " AND status = 'PROCESSED'",
                ids,
            )
            == N
        ),
    )

    def worker_delta(samples: Samples, name: str, **labels: str) -> float:
        return total(samples, name, **labels) - total(worker_before, name, **labels)

    def settled() -> bool:
        # Counted once the effects returned; the lag once faust committed (every 1 s).
        samples = worker_samples()
        lag = lag_of(samples, "webhooks.stripe")
        return (
            worker_delta(samples, "sluice_worker_events_processed_total", agent="project_webhooks")
            == N
            and bool(lag)
            and all(value == 0 for value in lag.values())
        )

    await pipeline.wait_for("the counters and the lag settled", settled)
    samples = worker_samples()
    processed = "sluice_worker_events_processed_total"
    assert worker_delta(samples, processed, agent="normalise_webhooks") == N
    assert worker_delta(samples, processed, agent="project_webhooks") == N
    for counter in ("deduplicated", "retried", "dead_lettered"):
        assert worker_delta(samples, f"sluice_worker_events_{counter}_total") == 0, counter
    # Every webhook's Postgres write was timed (batches: at least one call, at most N).
    writes = worker_delta(
        samples, "sluice_worker_effect_seconds_count", sink="postgres", operation="record_webhooks"
    )
    assert 1 <= writes <= N
    assert worker_delta(samples, "sluice_worker_effect_seconds_count", outcome="failed") == 0
    # The partitions of the topic are all there (one series each), at 0.
    assert len(lag_of(samples, "webhooks.stripe")) >= 1

    # The provider sends one of them again: one duplicate counted, nothing else.
    assert (
        await post_stripe(ingress, stripe_event("payment_intent.succeeded", event_id=ids[0])) == 200
    )
    await pipeline.wait_for(
        "the duplicate counted",
        lambda: (
            worker_delta(
                worker_samples(),
                "sluice_worker_events_deduplicated_total",
                agent="normalise_webhooks",
            )
            == 1
        ),
    )


def test_consumer_lag_is_the_backlog_of_the_group(catalog_topics: str) -> None:
    bootstrap = catalog_topics
    topic = f"test.lag.{uuid.uuid4().hex[:8]}"
    group = f"test-lag-{uuid.uuid4().hex[:8]}"
    create_changelog_topics(bootstrap, {topic: 3})  # any topic of 3 partitions will do
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(10):
        producer.produce(topic, key=f"k{i}", value=b"v", partition=i % 3)
    assert producer.flush(30) == 0
    lag = ConsumerLag(bootstrap, group, [topic], min_interval_s=0)

    # Nothing committed: the whole retained partition is behind.
    assert lag.read() == {(topic, 0): 4, (topic, 1): 3, (topic, 2): 3}

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        consumer.commit(
            offsets=[TopicPartition(topic, 0, 4), TopicPartition(topic, 1, 1)],
            asynchronous=False,
        )
    finally:
        consumer.close()
    assert lag.read() == {(topic, 0): 0, (topic, 1): 2, (topic, 2): 3}
    assert sorted(lag.samples()) == [
        ((topic, "0"), 0.0),
        ((topic, "1"), 2.0),
        ((topic, "2"), 3.0),
    ]

    # A broker that does not answer: no samples, quickly, rather than stale ones.
    started = time.monotonic()
    gone = ConsumerLag("127.0.0.1:1", group, [topic], timeout_s=1, min_interval_s=0)
    assert gone.samples() == []
    assert time.monotonic() - started < 10


def test_retry_heads_read_overdue_and_due_in() -> None:
    heads = RetryHeads()
    heads.hold("retry.5s", 0, due=100.0)
    heads.hold("retry.5s", 1, due=90.0)
    heads.hold("retry.1m", 0, due=160.0)
    assert heads.overdue(now=100.0) == [(("retry.1m",), -60.0), (("retry.5s",), 10.0)]
    heads.release("retry.5s", 1)
    heads.release("retry.1m", 0)
    assert heads.overdue(now=100.0) == [(("retry.5s",), 0.0)]
