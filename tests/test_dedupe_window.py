"""The dedupe window in the real worker: ids older than the window are purged from the
RocksDB table (a tombstone on its changelog), and an event redelivered after the window
is processed again, as DESIGN §5 specifies."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable

import pytest

from tests.fixtures.ingress import post_stripe
from tests.fixtures.kafka import read_topic
from tests.fixtures.worker import Pipeline
from tests.payloads.stripe import stripe_event

pytestmark = pytest.mark.integration

# Purge slices of 2 entries, so a pass over the partition takes several steps.
PIPELINE_ENV = {
    "SLUICE_DEDUPE_WINDOW": "3s",
    "SLUICE_DEDUPE_PURGE_EVERY": "1s",
    "SLUICE_DEDUPE_PURGE_SLICE": "2",
}


async def _send_until(pipeline: Pipeline, done: Callable[[], bool], what: str) -> None:
    """Send fresh webhooks, a few at a time, until ``done()`` (bounded: 90 s)."""
    deadline = time.monotonic() + 90
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{pipeline.worker.log_tail()}")
        for _ in range(3):
            event = stripe_event(
                "payment_intent.succeeded", event_id=f"evt_{uuid.uuid4().hex[:14]}"
            )
            assert await post_stripe(pipeline.ingress, event) == 200
        await asyncio.sleep(0.25)


async def test_expired_ids_are_purged_from_the_table_and_its_changelog(
    pipeline: Pipeline,
) -> None:
    first = stripe_event("payment_intent.succeeded", event_id=f"evt_{uuid.uuid4().hex[:14]}")
    assert await post_stripe(pipeline.ingress, first) == 200
    await pipeline.wait_for(
        "the first event",
        lambda: (
            pipeline.scalar("SELECT status FROM webhook_events WHERE event_id = %s", first["id"])
            == "PROCESSED"
        ),
    )
    await asyncio.sleep(4)  # past the 3 s window
    changelog = f"{pipeline.worker.env['SLUICE_APP_ID']}-dedupe_seen-changelog"
    key = json.dumps(f"stripe:{first['id']}").encode()

    def tombstoned() -> bool:
        values = [m.value() for m in read_topic(pipeline.bootstrap, changelog) if m.key() == key]
        return len(values) >= 2 and values[-1] is None

    # The purge runs while an event of the same partition is in hand, a slice at a time:
    # send until the expired id's tombstone is on the changelog.
    await _send_until(pipeline, tombstoned, "a tombstone for the expired id")


async def test_a_purge_pass_goes_on_slice_by_slice_until_every_expired_id_is_gone(
    pipeline: Pipeline,
) -> None:
    old = [
        stripe_event("payment_intent.succeeded", event_id=f"evt_{uuid.uuid4().hex[:14]}")
        for _ in range(8)
    ]
    for event in old:
        assert await post_stripe(pipeline.ingress, event) == 200
    ids = [str(event["id"]) for event in old]
    await pipeline.wait_for(
        "the old events",
        lambda: (
            pipeline.scalar("SELECT count(*) FROM webhook_events WHERE event_id = ANY(%s)", ids)
            == len(ids)
        ),
    )
    await asyncio.sleep(4)  # past the 3 s window
    changelog = f"{pipeline.worker.env['SLUICE_APP_ID']}-dedupe_seen-changelog"
    keys = {json.dumps(f"stripe:{event_id}").encode() for event_id in ids}

    def still_remembered() -> set[bytes]:
        latest: dict[bytes, bytes | None] = {}
        for message in read_topic(pipeline.bootstrap, changelog):
            key = message.key()
            if key in keys:
                latest[key] = message.value()
        return {key for key in keys if latest.get(key) is not None}

    # Each event in hand moves its partition's pass on by one slice of two entries.
    await _send_until(pipeline, lambda: not still_remembered(), "every expired id tombstoned")


async def test_redelivery_after_the_window_is_processed_again(pipeline: Pipeline) -> None:
    event = stripe_event(
        "payment_intent.succeeded",
        event_id=f"evt_{uuid.uuid4().hex[:14]}",
        order_id=f"ord_{uuid.uuid4().hex[:10]}",
    )
    assert await post_stripe(pipeline.ingress, event) == 200
    await pipeline.wait_for(
        "the first delivery",
        lambda: (
            pipeline.scalar("SELECT status FROM webhook_events WHERE event_id = %s", event["id"])
            == "PROCESSED"
        ),
    )
    await asyncio.sleep(4)
    assert await post_stripe(pipeline.ingress, event) == 200

    from ingress.records import event_id_for
    from streams.domain.ids import derived_event_id
    from tests.fixtures.kafka import header_map

    wanted = derived_event_id(event_id_for("stripe", str(event["id"])), "billing.payment.succeeded")

    def derived() -> int:
        return sum(
            1
            for m in read_topic(pipeline.bootstrap, "billing.payment.succeeded")
            if header_map(m).get("event-id") == wanted
        )

    # Same deterministic id both times, so downstream projections still apply it once.
    await pipeline.wait_for("the second derivation", lambda: derived() == 2)
    assert (
        pipeline.scalar(
            "SELECT count(*) FROM payments WHERE order_id = %s",
            event["data"]["object"]["metadata"]["orderId"],
        )
        == 1
    )
