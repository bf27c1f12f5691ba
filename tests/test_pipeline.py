"""Webhook over HTTP → raw topic → dedupe → domain topic → rows in Postgres.

Everything real: the ingress, the broker, `sluice worker` as a process, PostgreSQL.
"""

from __future__ import annotations

import uuid

import pytest

from streams.domain.ids import derived_event_id
from tests.fixtures.ingress import post_razorpay, post_stripe
from tests.fixtures.kafka import header_map, read_topic
from tests.fixtures.worker import Pipeline
from tests.payloads.razorpay import RAZORPAY_EVENT_TYPES, razorpay_event
from tests.payloads.stripe import STRIPE_EVENT_TYPES, stripe_event

pytestmark = pytest.mark.integration

# Where each domain topic lands, and the column holding the provider object id.
PROJECTION = {
    "billing.payment.succeeded": ("payments", "provider_payment_id"),
    "billing.payment.failed": ("payments", "provider_payment_id"),
    "billing.payment.pending": ("payments", "provider_payment_id"),
    "billing.payment.refunded": ("refunds", "refund_id"),
    "billing.checkout.completed": ("checkout_sessions", "session_id"),
    "billing.checkout.failed": ("checkout_sessions", "session_id"),
    "billing.checkout.expired": ("checkout_sessions", "session_id"),
    "billing.invoice.updated": ("invoices", "invoice_id"),
    "billing.subscription.updated": ("subscriptions", "subscription_id"),
}


def _uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:14]}"


def _webhook_status(pipeline: Pipeline, provider: str, event_id: str) -> str | None:
    status: str | None = pipeline.scalar(
        "SELECT status FROM webhook_events WHERE provider = %s AND event_id = %s",
        provider,
        event_id,
    )
    return status


def _domain_events(pipeline: Pipeline, topic: str, raw_event_id: str) -> list[object]:
    """Records on ``topic`` derived from one raw webhook (by deterministic event id)."""
    from ingress.records import event_id_for

    wanted = derived_event_id(event_id_for("stripe", raw_event_id), topic)
    # .get: the topic is shared, and other tests write records without this header.
    return [
        m for m in read_topic(pipeline.bootstrap, topic) if header_map(m).get("event-id") == wanted
    ]


@pytest.mark.parametrize("event_type", STRIPE_EVENT_TYPES)
async def test_every_stripe_event_type_reaches_its_projection(
    pipeline: Pipeline, event_type: str
) -> None:
    event = stripe_event(event_type, event_id=_uid("evt"), order_id=_uid("ord"))
    assert await post_stripe(pipeline.ingress, event) == 200

    await pipeline.wait_for(
        f"webhook_events row for {event_type}",
        lambda: _webhook_status(pipeline, "stripe", str(event["id"])) == "PROCESSED",
    )
    from schemas.codec import make_codec
    from streams.domain.normalise import normalise  # the same mapping the worker used
    from tests.fixtures.kafka import value_of

    [message] = read_topic(pipeline.bootstrap, "webhooks.stripe", key=str(event["id"]))
    [domain] = normalise(make_codec(None).decode(value_of(message)).record).events
    table, column = PROJECTION[domain.topic]
    await pipeline.wait_for(
        f"{table} row for {event_type}",
        lambda: (
            pipeline.scalar(
                f"SELECT count(*) FROM {table} WHERE {column} = %s",  # noqa: S608 - constants
                domain.record["providerObjectId"],
            )
            == 1
        ),
    )


MAPPED_RAZORPAY = [
    t for t in RAZORPAY_EVENT_TYPES if t.split(".")[0] in {"payment", "refund", "subscription"}
]


@pytest.mark.parametrize("event_type", MAPPED_RAZORPAY)
async def test_razorpay_events_reach_webhook_events(pipeline: Pipeline, event_type: str) -> None:
    event_id = _uid("rzpevt")
    # Content of its own (entity ids seeded by the order id): the same signed content
    # under a fresh event id is a replay, and other tests post the default content.
    event = razorpay_event(event_type, order_id=_uid("ord"))
    assert await post_razorpay(pipeline.ingress, event, event_id) == 200

    await pipeline.wait_for(
        f"webhook_events row for {event_type}",
        lambda: _webhook_status(pipeline, "razorpay", event_id) in ("PROCESSED", "IGNORED"),
    )


async def test_same_event_five_times_and_after_a_restart_gives_one_row_and_one_event(
    pipeline: Pipeline,
) -> None:
    order_id = _uid("ord")
    event = stripe_event(
        "payment_intent.succeeded", event_id=_uid("evt"), order_id=order_id, object_id=_uid("pi")
    )
    for _ in range(5):
        assert await post_stripe(pipeline.ingress, event) == 200
    await pipeline.wait_for(
        "the payment row",
        lambda: (
            pipeline.scalar("SELECT status FROM payments WHERE order_id = %s", order_id)
            == "SUCCEEDED"
        ),
    )

    pipeline.worker.stop()
    pipeline.worker.start()
    assert await post_stripe(pipeline.ingress, event) == 200
    # A marker sent after the late duplicate: once it is projected, the duplicate has
    # been seen too (same partition order is not guaranteed, so also wait on the raw
    # topic count and the worker's view of it).
    marker = stripe_event("payment_intent.succeeded", event_id=_uid("evt"), order_id=_uid("ord"))
    assert await post_stripe(pipeline.ingress, marker) == 200
    await pipeline.wait_for(
        "the marker after restart",
        lambda: _webhook_status(pipeline, "stripe", str(marker["id"])) == "PROCESSED",
    )

    assert len(read_topic(pipeline.bootstrap, "webhooks.stripe", key=str(event["id"]))) == 6
    assert pipeline.scalar("SELECT count(*) FROM payments WHERE order_id = %s", order_id) == 1
    assert (
        pipeline.scalar("SELECT count(*) FROM webhook_events WHERE event_id = %s", event["id"]) == 1
    )
    assert len(_domain_events(pipeline, "billing.payment.succeeded", str(event["id"]))) == 1


async def test_late_processing_does_not_undo_succeeded(pipeline: Pipeline) -> None:
    order_id, intent = _uid("ord"), _uid("pi")
    succeeded = stripe_event(
        "payment_intent.succeeded", event_id=_uid("evt"), order_id=order_id, object_id=intent
    )
    processing = stripe_event(
        "payment_intent.processing", event_id=_uid("evt"), order_id=order_id, object_id=intent
    )
    assert await post_stripe(pipeline.ingress, succeeded) == 200
    assert await post_stripe(pipeline.ingress, processing) == 200

    await pipeline.wait_for(
        "both webhooks processed",
        lambda: (
            _webhook_status(pipeline, "stripe", str(processing["id"])) == "PROCESSED"
            and _webhook_status(pipeline, "stripe", str(succeeded["id"])) == "PROCESSED"
        ),
    )
    await pipeline.wait_for(
        "the payment",
        lambda: (
            pipeline.scalar("SELECT status FROM payments WHERE provider_payment_id = %s", intent)
            is not None
        ),
    )
    # Give the late event every chance to be applied, then check it did not regress.
    await pipeline.wait_for(
        "processed_events for the late event",
        lambda: (
            pipeline.scalar(
                "SELECT count(*) FROM processed_events WHERE event_id = %s",
                derived_event_id(_raw_id(processing), "billing.payment.pending"),
            )
            == 1
        ),
    )
    assert (
        pipeline.scalar("SELECT status FROM payments WHERE provider_payment_id = %s", intent)
        == "SUCCEEDED"
    )


def _raw_id(event: dict[str, object]) -> str:
    from ingress.records import event_id_for

    return event_id_for("stripe", str(event["id"]))


async def test_partial_then_full_refund_ends_refunded(pipeline: Pipeline) -> None:
    order_id, intent = _uid("ord"), _uid("pi")
    paid = stripe_event(
        "payment_intent.succeeded",
        event_id=_uid("evt"),
        order_id=order_id,
        object_id=intent,
        amount=5000,
    )
    assert await post_stripe(pipeline.ingress, paid) == 200
    for refund_amount in (2000, 3000):
        refund = stripe_event(
            "refund.created",
            event_id=_uid("evt"),
            order_id=order_id,
            object_id=_uid("re"),
            amount=refund_amount,
            payment_intent=intent,
        )
        assert await post_stripe(pipeline.ingress, refund) == 200
        if refund_amount == 2000:
            await pipeline.wait_for(
                "partially refunded",
                lambda: (
                    pipeline.scalar(
                        "SELECT status FROM payments WHERE provider_payment_id = %s", intent
                    )
                    == "PARTIALLY_REFUNDED"
                ),
            )
    await pipeline.wait_for(
        "refunded",
        lambda: (
            pipeline.scalar("SELECT status FROM payments WHERE provider_payment_id = %s", intent)
            == "REFUNDED"
        ),
    )
    assert pipeline.query(
        "SELECT amount_minor, amount_refunded_minor FROM payments WHERE provider_payment_id = %s",
        intent,
    ) == [(5000, 5000)]


async def test_dedupe_survives_a_restart_with_local_state_wiped(pipeline: Pipeline) -> None:
    import shutil

    event = stripe_event(
        "payment_intent.succeeded", event_id=_uid("evt"), order_id=_uid("ord"), object_id=_uid("pi")
    )
    assert await post_stripe(pipeline.ingress, event) == 200
    await pipeline.wait_for(
        "the first delivery",
        lambda: _webhook_status(pipeline, "stripe", str(event["id"])) == "PROCESSED",
    )

    pipeline.worker.stop()
    shutil.rmtree(pipeline.worker.env["SLUICE_STATE_DIR"])  # RocksDB gone: only the changelog
    pipeline.worker.start()

    assert await post_stripe(pipeline.ingress, event) == 200
    marker = stripe_event("payment_intent.succeeded", event_id=_uid("evt"), order_id=_uid("ord"))
    assert await post_stripe(pipeline.ingress, marker) == 200
    await pipeline.wait_for(
        "the marker after the wiped restart",
        lambda: _webhook_status(pipeline, "stripe", str(marker["id"])) == "PROCESSED",
    )
    await pipeline.wait_for(
        "the redelivery to be read",
        lambda: len(read_topic(pipeline.bootstrap, "webhooks.stripe", key=str(event["id"]))) == 2,
    )
    assert len(_domain_events(pipeline, "billing.payment.succeeded", str(event["id"]))) == 1


async def test_a_signed_razorpay_body_replayed_under_a_fresh_event_id_is_a_duplicate(
    pipeline: Pipeline,
) -> None:
    """The event id header is not signed: a captured body re-sent with a new id must not
    produce a second billing event (issue 10, outside probe)."""
    from ingress.records import event_id_for

    captured = razorpay_event("payment.captured", order_id=_uid("ord"))
    original, replay = _uid("rzpevt"), _uid("rzpevt")
    assert await post_razorpay(pipeline.ingress, captured, original) == 200
    assert await post_razorpay(pipeline.ingress, captured, replay) == 200
    [partition] = [
        m.partition()
        for m in read_topic(pipeline.bootstrap, "webhooks.razorpay")
        if header_map(m).get("event-id") == event_id_for("razorpay", replay)
    ]
    # A marker on the replay's partition, posted after it: once the marker is normalised,
    # so is the replay (one partition is read in order).
    while True:
        marker = razorpay_event("payment.captured", order_id=_uid("ord"))
        marker_id = _uid("rzpevt")
        assert await post_razorpay(pipeline.ingress, marker, marker_id) == 200
        [message] = [
            m
            for m in read_topic(pipeline.bootstrap, "webhooks.razorpay")
            if header_map(m).get("event-id") == event_id_for("razorpay", marker_id)
        ]
        if message.partition() == partition:
            break

    def succeeded(raw_id: str) -> list[object]:
        wanted = derived_event_id(event_id_for("razorpay", raw_id), "billing.payment.succeeded")
        return [
            m
            for m in read_topic(pipeline.bootstrap, "billing.payment.succeeded")
            if header_map(m).get("event-id") == wanted
        ]

    await pipeline.wait_for("the marker's billing event", lambda: len(succeeded(marker_id)) == 1)
    await pipeline.wait_for("the original's billing event", lambda: len(succeeded(original)) == 1)
    assert succeeded(replay) == []
