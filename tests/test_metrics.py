"""Metrics: prometheus_client counters in a registry per process, served as Prometheus text."""

from __future__ import annotations

import urllib.request
import uuid
from collections.abc import Sequence

from prometheus_client.parser import text_string_to_metric_families

from base.clock import FrozenClock
from base.errors import PermanentError, TransientError
from base.metrics import (
    INGRESS_METRICS,
    WORKER_METRICS,
    MetricName,
    Metrics,
    MetricsServer,
)
from schemas.codec import make_codec
from streams.domain.retry import RetryPolicy
from streams.effects import EffectRunner
from streams.records import Inbound
from tests.fixtures.ingress import IngressUnderTest, post_stripe
from tests.payloads.stripe import stripe_event


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_two_registries_in_one_process_count_apart() -> None:
    # A second ingress in the same process (the tests run several) must not collide with
    # the first, as it would in prometheus_client's global registry.
    first, second = Metrics(INGRESS_METRICS), Metrics(INGRESS_METRICS)
    first.inc(MetricName.RECORDS_PUBLISHED, topic="webhooks.stripe")
    first.inc(MetricName.RECORDS_PUBLISHED, 2, topic="webhooks.stripe")
    assert first.value(MetricName.RECORDS_PUBLISHED, topic="webhooks.stripe") == 3.0
    assert second.value(MetricName.RECORDS_PUBLISHED, topic="webhooks.stripe") == 0.0


def test_rendering_is_prometheus_text_with_help_for_every_metric() -> None:
    metrics = Metrics(WORKER_METRICS)
    metrics.inc(MetricName.EVENTS_DEAD_LETTERED, agent="project_billing")
    text = metrics.render().decode()
    for name in WORKER_METRICS:
        assert f"# HELP {name.metric} " in text
        assert f"# TYPE {name.metric} {name.value.kind}" in text
    found = samples(text)
    key = ("sluice_worker_events_dead_lettered_total", (("agent", "project_billing"),))
    assert found == {key: 1.0}  # no *_created series next to it


def test_worker_metrics_server_serves_its_registry() -> None:
    metrics = Metrics(WORKER_METRICS)
    server = MetricsServer(metrics, "127.0.0.1", 0)
    try:
        metrics.inc(MetricName.EVENTS_PROCESSED, 5, agent="normalise_webhooks")
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics") as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
    finally:
        server.close()
    key = ("sluice_worker_events_processed_total", (("agent", "normalise_webhooks"),))
    assert samples(text)[key] == 5.0


async def test_ingress_metrics_count_requests_and_published_records(
    ingress: IngressUnderTest,
) -> None:
    async def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async with ingress.http.get(f"{ingress.internal}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            return samples(await response.text())

    published = ("sluice_ingress_records_published_total", (("topic", "webhooks.stripe"),))
    accepted = (
        "sluice_http_requests_total",
        (("route", "webhook.stripe"), ("status", "200")),
    )
    before = await scrape()
    event = stripe_event("payment_intent.succeeded", event_id=f"evt_{uuid.uuid4().hex}")
    assert await post_stripe(ingress, event) == 200
    after = await scrape()
    assert after[published] == before.get(published, 0.0) + 1
    assert after[accepted] == before.get(accepted, 0.0) + 1


class ListOutbox:
    def __init__(self) -> None:
        self.topics: list[str] = []

    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        self.topics.append(topic)


async def test_effect_runner_counts_outcomes_per_effect() -> None:
    outbox = ListOutbox()
    runner = EffectRunner(
        outbox=outbox, codec=make_codec(None), policy=RetryPolicy(), clock=FrozenClock(1e9)
    )

    async def effect(records: Sequence[Inbound]) -> None:
        for record in records:
            if record.value == b"flaky":
                raise TransientError("503")
            if record.value == b"bad":
                raise PermanentError("400")

    runner.register("project_things", effect)
    values = [b"ok", b"ok", b"flaky", b"bad"]
    records = [Inbound("things", 0, offset, b"k", value, ()) for offset, value in enumerate(values)]
    await runner.run("project_things", records[:2])
    await runner.run("project_things", records[2:3])
    await runner.run("project_things", records[3:])
    await runner.run("no_such_effect", records[:1])

    def count(name: MetricName, agent: str = "project_things") -> float:
        return runner.metrics.value(name, agent=agent)

    assert count(MetricName.EVENTS_PROCESSED) == 2.0
    assert count(MetricName.EVENTS_RETRIED) == 1.0
    assert count(MetricName.EVENTS_DEAD_LETTERED) == 1.0
    assert count(MetricName.EVENTS_DEAD_LETTERED, "no_such_effect") == 1.0
    assert outbox.topics == ["retry.5s", "dlq", "dlq"]
