"""Replaying stored webhooks end to end: the real ingress, broker, `sluice worker` process
and PostgreSQL.

Acceptance (issue 14): replaying a time range re-applies it with no change in final state
(``payments``, ``orders``, ``webhook_events`` rows identical before and after) and no
duplicate domain event: every ``billing.*`` record the replay causes carries an event id
already on the topic (one more record per id, never a new id), and ``orders.lifecycle``
gets nothing new. ``sluice replay`` does the same from the command line, and a replayed
Razorpay webhook keeps its original key (the content id of its signed body).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from confluent_kafka import Consumer, TopicPartition

from ingress.records import event_id_for
from schemas.catalog import BILLING_TOPICS
from streams.domain.ids import derived_event_id
from tests.fixtures.ingress import (
    IngressUnderTest,
    ingress_settings,
    post_razorpay,
    started_ingress,
)
from tests.fixtures.kafka import end_offsets, header_map, key_of, read_topic
from tests.fixtures.orders import create_order, pay_order
from tests.fixtures.worker import Pipeline, wait_until
from tests.payloads.razorpay import razorpay_event

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "adm_replay_test_0123456789"
SLUICE = (sys.executable, "-m", "sluice")


@pytest_asyncio.fixture(scope="module")
async def admin(pipeline: Pipeline) -> AsyncIterator[IngressUnderTest]:
    """An ingress on the pipeline's database, with an admin token."""
    settings = ingress_settings(
        pipeline.bootstrap,
        {"DATABASE_URL": pipeline.database_url, "ADMIN_API_TOKEN": ADMIN_TOKEN},
    )
    async with started_ingress(settings) as running:
        yield running


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _state(pipeline: Pipeline, prefix: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the webhooks of this test touched, all columns."""
    like = f"{prefix}%"
    return {
        "payments": pipeline.query(
            "SELECT * FROM payments WHERE order_id LIKE %s ORDER BY provider_payment_id", like
        ),
        "orders": pipeline.query("SELECT * FROM orders WHERE order_id LIKE %s ORDER BY 1", like),
        # The module's own database: every row is this module's.
        "webhook_events": pipeline.query(
            "SELECT * FROM webhook_events ORDER BY provider, event_id"
        ),
        "processed_events": pipeline.query(
            "SELECT * FROM processed_events ORDER BY consumer, event_id"
        ),
    }


def _per_id(bootstrap: str, topics: list[str], ids: set[str]) -> Counter[str]:
    """How many records on ``topics`` carry each event id of ``ids``."""
    counts: Counter[str] = Counter()
    for topic in topics:
        for message in read_topic(bootstrap, topic):
            event_id = header_map(message).get("event-id")
            if event_id in ids:
                counts[event_id] += 1
    return counts


def _lifecycle(bootstrap: str, prefix: str) -> Counter[str]:
    """Records per event id on orders.lifecycle for this test's orders."""
    return Counter(
        header_map(m)["event-id"]
        for m in read_topic(bootstrap, "orders.lifecycle")
        if key_of(m).startswith(prefix)
    )


async def _until_consumed(pipeline: Pipeline, topics: list[str]) -> None:
    """Until the worker's group has committed the end of every partition of ``topics``."""
    wanted = {
        (topic, partition): offset
        for topic in topics
        for partition, offset in end_offsets(pipeline.bootstrap, topic).items()
        if offset > 0
    }
    consumer = Consumer(
        {"bootstrap.servers": pipeline.bootstrap, "group.id": pipeline.env["SLUICE_APP_ID"]}
    )
    try:

        def done() -> bool:
            committed = consumer.committed([TopicPartition(t, p) for t, p in wanted], timeout=10)
            return all(tp.offset >= wanted[(tp.topic, tp.partition)] for tp in committed)

        await wait_until(
            "the worker to consume everything", done, 120, on_timeout=pipeline.worker.log_tail
        )
    finally:
        consumer.close()


def _worker_topics() -> list[str]:
    return ["webhooks.stripe", "webhooks.razorpay", "webhooks.outcomes", *BILLING_TOPICS]


async def test_replaying_a_time_range_changes_no_row_and_emits_no_new_event(
    pipeline: Pipeline, admin: IngressUnderTest
) -> None:
    batch = uuid.uuid4().hex[:8]
    prefix = f"ord_rp{batch}_"
    orders = [f"{prefix}{n}" for n in range(4)]
    since = _now() - dt.timedelta(seconds=1)
    for n, order_id in enumerate(orders):
        await create_order(pipeline, order_id, 1000 + n)
        await pay_order(pipeline, order_id, 1000 + n)
    await pipeline.wait_for(
        "every order PAID",
        lambda: (
            pipeline.scalar(
                "SELECT count(*) FROM orders WHERE order_id LIKE %s AND status = 'PAID'",
                f"{prefix}%",
            )
            == len(orders)
        ),
    )
    stripe_ids = [f"evt_{order_id}" for order_id in orders]
    await pipeline.wait_for(
        "every webhook PROCESSED",
        lambda: (
            pipeline.scalar(
                "SELECT count(*) FROM webhook_events"
                " WHERE status = 'PROCESSED' AND event_id = ANY(%s)",
                stripe_ids,
            )
            == len(orders)
        ),
    )
    until = _now() + dt.timedelta(seconds=1)
    await _until_consumed(pipeline, [*_worker_topics(), "orders.lifecycle"])

    billing_ids = {
        derived_event_id(event_id_for("stripe", event_id), "billing.payment.succeeded")
        for event_id in stripe_ids
    }
    state_before = _state(pipeline, prefix)
    billing_before = _per_id(pipeline.bootstrap, list(BILLING_TOPICS), billing_ids)
    lifecycle_before = _lifecycle(pipeline.bootstrap, prefix)
    assert set(billing_before) == billing_ids
    assert lifecycle_before  # the join announced the orders and their payments

    async with admin.http.post(
        f"{admin.internal}/v1/admin/webhooks/replay",
        json={"provider": "stripe", "since": _iso(since), "until": _iso(until)},
        headers={"X-Internal-Token": ADMIN_TOKEN},
    ) as response:
        body = await response.json()
        assert response.status == 202, body
    assert body["accepted"] is True
    assert body["count"] == len(orders)
    replay_id = body["replayId"]

    # The replayed raw records: the originals' keys and event ids, marked as replays.
    replayed = [
        m
        for m in read_topic(pipeline.bootstrap, "webhooks.stripe")
        if header_map(m).get("sluice-replay-id") == replay_id
    ]
    assert sorted(key_of(m) for m in replayed) == sorted(stripe_ids)
    for message in replayed:
        headers = header_map(message)
        assert headers["sluice-replay"] == "1"
        assert headers["event-id"] == event_id_for("stripe", key_of(message))

    # The worker normalised them again (one more record per billing id, same ids) ...
    await wait_until(
        "the replayed billing events",
        lambda: (
            _per_id(pipeline.bootstrap, list(BILLING_TOPICS), billing_ids)
            == Counter({i: n + 1 for i, n in billing_before.items()})
        ),
        90,
        on_timeout=pipeline.worker.log_tail,
    )
    # ... and the projections and the join consumed everything they caused.
    await _until_consumed(pipeline, [*_worker_topics(), "orders.lifecycle"])

    assert _state(pipeline, prefix) == state_before
    assert _lifecycle(pipeline.bootstrap, prefix) == lifecycle_before


async def test_sluice_replay_sends_a_razorpay_webhook_again_under_its_original_key(
    pipeline: Pipeline,
) -> None:
    event_id = f"rzpevt_{uuid.uuid4().hex[:12]}"
    order_id = f"ord_rz{uuid.uuid4().hex[:8]}"
    event = razorpay_event("payment.captured", order_id=order_id)
    since = _now() - dt.timedelta(seconds=1)
    assert await post_razorpay(pipeline.ingress, event, event_id) == 200
    await pipeline.wait_for(
        "the razorpay webhook processed",
        lambda: (
            pipeline.scalar(
                "SELECT status FROM webhook_events WHERE provider = 'razorpay' AND event_id = %s",
                event_id,
            )
            == "PROCESSED"
        ),
    )
    await _until_consumed(pipeline, _worker_topics())
    raw_id = event_id_for("razorpay", event_id)
    [original] = [
        m
        for m in read_topic(pipeline.bootstrap, "webhooks.razorpay")
        if header_map(m).get("event-id") == raw_id
    ]
    state_before = _state(pipeline, order_id)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "PARTNER_"))}
    env |= {"KAFKA_BOOTSTRAP_SERVERS": pipeline.bootstrap, "DATABASE_URL": pipeline.database_url}
    until = _now() + dt.timedelta(seconds=1)
    done = await asyncio.to_thread(
        subprocess.run,
        [
            *SLUICE,
            "replay",
            "--provider",
            "razorpay",
            *("--since", _iso(since)),
            "--until",
            _iso(until),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("replayed 1 webhooks"), done.stdout

    copies = [
        m
        for m in read_topic(pipeline.bootstrap, "webhooks.razorpay")
        if header_map(m).get("event-id") == raw_id
    ]
    assert len(copies) == 2
    replay = copies[-1]
    assert header_map(replay)["sluice-replay"] == "1"
    assert replay.key() == original.key()  # the content id, not the event id header
    assert replay.key() != event_id.encode()
    assert replay.partition() == original.partition()

    await _until_consumed(pipeline, _worker_topics())
    assert _state(pipeline, order_id) == state_before


async def test_sluice_replay_refuses_a_time_without_offset() -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [
            *SLUICE,
            "replay",
            "--provider",
            "stripe",
            "--since",
            "2026-11-30T08:00:00",
            "--until",
            "2026-11-30T09:00:00Z",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "since needs a UTC offset" in done.stderr
