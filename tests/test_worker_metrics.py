"""The worker serves its counters on SLUICE_WORKER_METRICS_PORT: records processed and
duplicates skipped, per agent, as a real `sluice worker` process counts them."""

from __future__ import annotations

import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.ports import free_port
from tests.fixtures.ingress import post_stripe
from tests.fixtures.worker import Pipeline
from tests.payloads.stripe import stripe_event

pytestmark = pytest.mark.integration

METRICS_PORT = free_port()
PIPELINE_ENV = {"SLUICE_WORKER_METRICS_PORT": str(METRICS_PORT)}


def counters() -> dict[tuple[str, str], float]:
    """``(metric, agent) -> value`` from the worker's /metrics; empty until it listens."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {
        (sample.name, sample.labels.get("agent", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def count(metric: str, agent: str) -> float:
    return counters().get((f"sluice_worker_events_{metric}_total", agent), 0.0)


async def test_worker_counts_processed_and_deduplicated_records(pipeline: Pipeline) -> None:
    event = stripe_event("payment_intent.succeeded", event_id=f"evt_{uuid.uuid4().hex[:14]}")
    assert await post_stripe(pipeline.ingress, event) == 200
    await pipeline.wait_for(
        "the webhook projected",
        lambda: (
            pipeline.scalar("SELECT status FROM webhook_events WHERE event_id = %s", event["id"])
            == "PROCESSED"
        ),
    )
    await pipeline.wait_for(
        "both agents counted it",
        lambda: (
            count("processed", "normalise_webhooks") >= 1
            and count("processed", "project_webhooks") >= 1
        ),
    )

    duplicates_before = count("deduplicated", "normalise_webhooks")
    assert await post_stripe(pipeline.ingress, event) == 200  # the provider retries
    await pipeline.wait_for(
        "the duplicate counted",
        lambda: count("deduplicated", "normalise_webhooks") > duplicates_before,
    )
