"""The shared retry/dead-letter mechanism, end to end in the real worker.

- bad records on a topic (not Avro, unknown schema id, schema-valid nonsense) → dlq with
  the reason, and the agent keeps running;
- a permanent sink failure → dlq with its reason; `sluice dlq replay` re-runs it;
- a record waiting in a delay topic does not hold up fresh records.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from confluent_kafka import Producer

from schemas.codec import make_codec
from streams.domain.retry import RetryHeaders
from tests.fixtures.ingress import post_stripe
from tests.fixtures.kafka import read_topic
from tests.fixtures.worker import Pipeline
from tests.payloads.stripe import stripe_event

pytestmark = pytest.mark.integration

CODEC = make_codec(None)


def _produce(
    bootstrap: str,
    topic: str,
    key: str,
    value: bytes,
    headers: Sequence[tuple[str, bytes]] | None = None,
) -> tuple[int, int]:
    """Produce one record durably; returns its (partition, offset)."""
    where: list[tuple[int, int]] = []

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        where.append((msg.partition(), msg.offset()))

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(
        topic, key=key.encode(), value=value, headers=list(headers or []), on_delivery=delivered
    )
    assert producer.flush(30) == 0
    return where[0]


def _dead_letters(pipeline: Pipeline) -> list[dict[str, Any]]:
    return [CODEC.decode(m.value() or b"").record for m in read_topic(pipeline.bootstrap, "dlq")]


def _billing_record(order_id: str, intent: str, amount: int) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    return {
        "eventId": str(uuid.uuid4()),
        "eventType": "billing.payment.succeeded",
        "version": 1,
        "occurredAt": now_ms,
        "correlationId": "test",
        "source": "tests",
        "provider": "stripe",
        "providerEventId": f"evt_{uuid.uuid4().hex[:12]}",
        "providerObjectId": intent,
        "orderId": order_id,
        "userId": "user_1",
        "amountMinor": amount,
        "currency": "usd",
        "status": "succeeded",
        "amountRefundedMinor": None,
        "refundId": None,
        "paymentId": intent,
        "attributes": {},
    }


def _payment_status(pipeline: Pipeline, intent: str) -> Any:
    return pipeline.scalar("SELECT status FROM payments WHERE provider_payment_id = %s", intent)


async def test_bad_records_go_to_dlq_with_reason_and_the_agent_keeps_running(
    pipeline: Pipeline,
) -> None:
    not_avro = _produce(pipeline.bootstrap, "webhooks.stripe", "bad_1", b"this is not avro")
    unknown_id = _produce(
        pipeline.bootstrap, "webhooks.stripe", "bad_2", b"\x00" + (99_999).to_bytes(4, "big") + b"x"
    )
    nonsense_record = {
        "eventId": str(uuid.uuid4()),
        "eventType": "payment_intent.succeeded",
        "version": 1,
        "occurredAt": 0,
        "correlationId": "c",
        "source": "tests",
        "provider": "stripe",
        "providerEventId": f"evt_bad_{uuid.uuid4().hex[:8]}",
        "receivedAt": 0,
        "signatureHeader": None,
        "rawBody": b"{not json",
        "contentType": "application/json",
        "sourceAddress": None,
        "replay": False,
    }
    nonsense = _produce(
        pipeline.bootstrap,
        "webhooks.stripe",
        str(nonsense_record["providerEventId"]),
        CODEC.encode("webhooks.stripe", nonsense_record),
    )

    # A good webhook after them is still processed: the agent did not stop.
    good = stripe_event("payment_intent.succeeded", event_id=f"evt_{uuid.uuid4().hex[:12]}")
    assert await post_stripe(pipeline.ingress, good) == 200
    await pipeline.wait_for(
        "the good webhook after the bad ones",
        lambda: (
            pipeline.scalar("SELECT status FROM webhook_events WHERE event_id = %s", good["id"])
            == "PROCESSED"
        ),
    )

    def dead_for(position: tuple[int, int]) -> list[dict[str, Any]]:
        return [
            d
            for d in _dead_letters(pipeline)
            if d["originTopic"] == "webhooks.stripe"
            and (d["originPartition"], d["originOffset"]) == position
        ]

    await pipeline.wait_for(
        "three dead letters", lambda: all(dead_for(p) for p in (not_avro, unknown_id, nonsense))
    )
    [first], [second], [third] = dead_for(not_avro), dead_for(unknown_id), dead_for(nonsense)
    assert "magic" in first["reason"].lower() or "avro" in first["reason"].lower()
    assert "99999" in second["reason"] or "unknown" in second["reason"].lower()
    assert third["reason"]
    assert first["value"] == b"this is not avro"
    # The schema-valid one is also visible as FAILED in webhook_events.
    assert (
        pipeline.scalar(
            "SELECT status FROM webhook_events WHERE event_id = %s",
            nonsense_record["providerEventId"],
        )
        == "FAILED"
    )


async def test_permanent_failure_is_dead_lettered_then_replayed_after_the_fix(
    pipeline: Pipeline,
) -> None:
    intent = f"pi_neg_{uuid.uuid4().hex[:10]}"
    record = _billing_record(f"ord_{uuid.uuid4().hex[:8]}", intent, amount=-5)
    position = _produce(
        pipeline.bootstrap,
        "billing.payment.succeeded",
        record["orderId"],
        CODEC.encode("billing.payment.succeeded", record),
    )

    def dead() -> list[dict[str, Any]]:
        return [
            d
            for d in _dead_letters(pipeline)
            if d["originTopic"] == "billing.payment.succeeded"
            and (d["originPartition"], d["originOffset"]) == position
        ]

    await pipeline.wait_for("the dead letter", lambda: bool(dead()))
    [letter] = dead()
    assert "amount_minor" in letter["reason"]
    assert letter["errorClass"] == "PermanentError"
    assert letter["attempts"] == 1
    assert _payment_status(pipeline, intent) is None

    # The operator decides negative amounts are acceptable, fixes the schema, replays.
    pipeline.query("ALTER TABLE payments DROP CONSTRAINT payments_amount_minor_check")
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": pipeline.bootstrap}
    listed = subprocess.run(
        [sys.executable, "-m", "sluice", "dlq", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert letter["eventId"] in {json.loads(line)["eventId"] for line in listed.splitlines()}
    replayed = subprocess.run(
        [sys.executable, "-m", "sluice", "dlq", "replay", "--event-id", letter["eventId"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "replayed 1" in replayed

    await pipeline.wait_for(
        "the replayed payment", lambda: _payment_status(pipeline, intent) == "SUCCEEDED"
    )


async def test_a_delayed_record_does_not_hold_up_fresh_records(pipeline: Pipeline) -> None:
    # Warm up: the worker is consuming before the clock of this test starts.
    warm = stripe_event("payment_intent.succeeded", event_id=f"evt_{uuid.uuid4().hex[:12]}")
    assert await post_stripe(pipeline.ingress, warm) == 200
    await pipeline.wait_for(
        "the worker to be warm",
        lambda: (
            pipeline.scalar("SELECT status FROM webhook_events WHERE event_id = %s", warm["id"])
            == "PROCESSED"
        ),
    )
    delayed_intent = f"pi_delayed_{uuid.uuid4().hex[:10]}"
    record = _billing_record(f"ord_{uuid.uuid4().hex[:8]}", delayed_intent, amount=700)
    due_in_s = 5.0
    now_ms = int(time.time() * 1000)
    headers = RetryHeaders(
        attempt=1,
        due_at_ms=now_ms + int(due_in_s * 1000),
        origin="billing.payment.succeeded",
        reason="test: waiting in the delay topic",
        first_failed_at_ms=now_ms,
        origin_partition=0,
        origin_offset=0,
        effect="project_billing",
    ).to_kafka()
    _produce(
        pipeline.bootstrap,
        "retry.5s",
        record["orderId"],
        CODEC.encode("billing.payment.succeeded", record),
        headers,
    )
    started = time.monotonic()

    fresh = stripe_event(
        "payment_intent.succeeded",
        event_id=f"evt_{uuid.uuid4().hex[:12]}",
        order_id=f"ord_{uuid.uuid4().hex[:8]}",
        object_id=f"pi_fresh_{uuid.uuid4().hex[:10]}",
    )
    assert await post_stripe(pipeline.ingress, fresh) == 200
    await pipeline.wait_for(
        "the fresh payment",
        lambda: _payment_status(pipeline, str(fresh["data"]["object"]["id"])) == "SUCCEEDED",
        timeout_s=due_in_s,
    )
    assert _payment_status(pipeline, delayed_intent) is None, "the delayed record ran early"

    await pipeline.wait_for(
        "the delayed payment once due",
        lambda: _payment_status(pipeline, delayed_intent) == "SUCCEEDED",
        timeout_s=30,
    )
    assert time.monotonic() - started >= due_in_s * 0.8
