"""The broker goes away under a running ingress: 503 and not-ready, then recovery.

Nothing is acknowledged that is not in Kafka: every request that got a 200, before,
during or after the outage, is on the topic.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from multidict import CIMultiDict

from devstack import KafkaBroker
from tests.fixtures.ingress import STRIPE_SECRET, IngressUnderTest
from tests.fixtures.kafka import key_of, read_topic
from tests.payloads.stripe import signed_stripe_request, stripe_event

pytestmark = pytest.mark.integration


async def _send(ingress: IngressUnderTest, event_id: str) -> tuple[int, CIMultiDict[str]]:
    event = stripe_event("payment_intent.succeeded", event_id=event_id)
    body, headers = signed_stripe_request(event, STRIPE_SECRET, int(time.time()))
    async with ingress.http.post(
        f"{ingress.public}/v1/webhooks/stripe", data=body, headers=headers
    ) as response:
        return response.status, CIMultiDict(response.headers)


async def _ready(ingress: IngressUnderTest) -> bool:
    async with ingress.http.get(f"{ingress.internal}/readyz") as response:
        ready: bool = (await response.json())["ready"]
        assert response.status == (200 if ready else 503)
        return ready


async def _wait_ready(ingress: IngressUnderTest, want: bool, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while await _ready(ingress) != want:
        assert time.monotonic() < deadline, f"/readyz never became {want}"
        await asyncio.sleep(0.5)


async def test_broker_outage_answers_503_and_recovers_without_loss(
    ingress: IngressUnderTest, kafka_broker: KafkaBroker
) -> None:
    acknowledged: list[str] = []
    for _ in range(5):
        event_id = f"evt_{uuid.uuid4().hex[:16]}"
        status, _ = await _send(ingress, event_id)
        assert status == 200
        acknowledged.append(event_id)

    await asyncio.to_thread(kafka_broker.stop)
    try:
        refused = [f"evt_{uuid.uuid4().hex[:16]}" for _ in range(3)]
        for event_id in refused:
            status, headers = await _send(ingress, event_id)
            assert status == 503
            assert headers["Retry-After"]
        await _wait_ready(ingress, want=False, timeout_s=15)
    finally:
        await asyncio.to_thread(kafka_broker.start)

    await _wait_ready(ingress, want=True, timeout_s=60)
    # The sender retries what was refused, and new events keep coming.
    for event_id in [*refused, *(f"evt_{uuid.uuid4().hex[:16]}" for _ in range(5))]:
        status, _ = await _send(ingress, event_id)
        assert status == 200
        acknowledged.append(event_id)

    landed = {key_of(m) for m in read_topic(ingress.bootstrap, "webhooks.stripe")}
    assert set(acknowledged) <= landed
