"""The worker's failure rule, enforced by the runtime (issue 10 §3): a record whose
processing raised an unexpected exception is neither committed nor lost. The worker stops
(mode's ``CrashingSupervisor``; agents ack only after their loop body returned), and
once restarted it processes the record exactly once.

The fault is a poisoned dependency (``tests/fixtures/poisoned_worker.py``): the
``project_billing`` effect raises ``RuntimeError`` in the middle of the first batch that
holds the poisoned record, after applying the records before it; and the per-event
``normalise_webhooks`` step raises on one webhook. With faust's default supervisor the
agent was restarted and the failed record's offset committed: the record was never
applied.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from ingress.records import event_id_for
from schemas.codec import make_codec
from schemas.headers import record_headers
from streams.domain.ids import derived_event_id
from tests.fixtures.ingress import post_stripe
from tests.fixtures.kafka import header_map, read_topic
from tests.fixtures.worker import Pipeline, wait_until
from tests.payloads.stripe import stripe_event

pytestmark = pytest.mark.integration

CODEC = make_codec(None)
RUN = uuid.uuid4().hex[:8]
RECORDS = 30
POISONED = f"ord_poison_{RUN}_{RECORDS // 2}"
_FILES = Path(tempfile.mkdtemp(prefix=f"sluice-poison-{RUN}-"))
MARKER, APPLIED = _FILES / "poisoned", _FILES / "applied"
POISONED_WEBHOOK = f"evt_poison_{RUN}_2"
HANDLER_MARKER = _FILES / "poisoned-handler"

PIPELINE_WORKER_MODULE = "tests.fixtures.poisoned_worker"
PIPELINE_ENV = {
    "POISON_EFFECT": "project_billing",
    "POISON_KEY": POISONED,
    "POISON_MARKER": str(MARKER),
    "POISON_APPLIED": str(APPLIED),
    "POISON_HANDLER": "streams.agents.normalise_webhooks",
    "POISON_HANDLER_KEY": POISONED_WEBHOOK,
    "POISON_HANDLER_MARKER": str(HANDLER_MARKER),
}


def _billing_record(order_id: str) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    return {
        "eventId": str(uuid.uuid4()),
        "eventType": "billing.payment.succeeded",
        "version": 1,
        "occurredAt": now_ms,
        "correlationId": "test",
        "source": "tests",
        "provider": "stripe",
        "providerEventId": f"evt_{order_id}",
        "providerObjectId": f"pi_{order_id}",
        "orderId": order_id,
        "userId": "user_1",
        "amountMinor": 1000,
        "currency": "usd",
        "status": "succeeded",
        "amountRefundedMinor": None,
        "refundId": None,
        "paymentId": f"pi_{order_id}",
        "attributes": {},
    }


def _produce_all(bootstrap: str, records: list[dict[str, Any]]) -> None:
    """One flush for all of them, so the worker finds them together (one batch, or few)."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for record in records:
        producer.produce(
            "billing.payment.succeeded",
            key=record["orderId"].encode(),
            value=CODEC.encode("billing.payment.succeeded", record),
            headers=list(record_headers("billing.payment.succeeded", record)),
        )
    assert producer.flush(30) == 0


async def test_an_unexpected_exception_mid_batch_stops_the_worker_and_loses_nothing(
    pipeline: Pipeline,
) -> None:
    records = [_billing_record(f"ord_poison_{RUN}_{n}") for n in range(RECORDS)]
    [poisoned] = [r for r in records if r["orderId"] == POISONED]
    _produce_all(pipeline.bootstrap, records)

    worker = pipeline.worker
    await wait_until("the worker to stop on the injected fault", lambda: not worker.alive(), 120)
    assert MARKER.exists(), worker.log_tail()
    assert worker.returncode() != 0, worker.log_tail()
    assert "injected fault" in worker.log_tail(400)

    worker.start()
    like = f"pi\\_ord\\_poison\\_{RUN}\\_%"
    await pipeline.wait_for(
        "every payment after the restart",
        lambda: (
            pipeline.scalar("SELECT count(*) FROM payments WHERE provider_payment_id LIKE %s", like)
            == RECORDS
        ),
    )

    applied = Counter(APPLIED.read_text().split())
    assert applied[POISONED] == 1, applied
    assert all(applied[r["orderId"]] >= 1 for r in records), applied
    assert (
        pipeline.scalar(
            "SELECT count(*) FROM processed_events WHERE consumer = 'project_billing' "
            "AND event_id = %s",
            poisoned["eventId"],
        )
        == 1
    )
    assert worker.alive(), worker.log_tail()
    # Neither retried nor dead-lettered: the worker stopped instead.
    assert not read_topic(pipeline.bootstrap, "dlq", key=POISONED)
    for topic in ("retry.1s", "retry.2s", "retry.5s"):
        assert not read_topic(pipeline.bootstrap, topic, key=POISONED)


async def test_an_unexpected_exception_in_a_per_event_agent_loses_and_doubles_nothing(
    pipeline: Pipeline,
) -> None:
    events = [
        stripe_event(
            "payment_intent.succeeded",
            event_id=f"evt_poison_{RUN}_{n}",
            order_id=f"ord_hpoison_{RUN}_{n}",
            object_id=f"pi_hpoison_{RUN}_{n}",
        )
        for n in range(5)
    ]
    assert events[2]["id"] == POISONED_WEBHOOK
    worker = pipeline.worker
    for event in events:
        assert await post_stripe(pipeline.ingress, event) == 200

    await wait_until("the worker to stop on the injected fault", lambda: not worker.alive(), 120)
    assert HANDLER_MARKER.exists(), worker.log_tail()
    assert worker.returncode() != 0, worker.log_tail()

    worker.start()
    ids = [str(event["id"]) for event in events]
    await pipeline.wait_for(
        "every webhook processed after the restart",
        lambda: (
            pipeline.scalar(
                "SELECT count(*) FROM webhook_events WHERE event_id = ANY(%s) "
                "AND status = 'PROCESSED'",
                ids,
            )
            == len(ids)
        ),
    )
    wanted = derived_event_id(event_id_for("stripe", POISONED_WEBHOOK), "billing.payment.succeeded")
    derived = [
        m
        for m in read_topic(pipeline.bootstrap, "billing.payment.succeeded")
        if header_map(m).get("event-id") == wanted
    ]
    assert len(derived) == 1  # normalised once: the crash came before any output
    assert not read_topic(pipeline.bootstrap, "dlq", key=POISONED_WEBHOOK)
    assert worker.alive(), worker.log_tail()
