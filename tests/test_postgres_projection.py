"""``PostgresProjection`` against the real PostgreSQL of the session.

The module works in its own migrated database (``migrated_db``); tests use fresh ids, so
they never see each other's rows. The outage test stops the shared server and always
starts it again in a ``finally``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import psycopg
import pytest
from psycopg_pool import PoolTimeout

from base.errors import PermanentError, TransientError
from connectors.postgres import PROJECTION_TABLES, PostgresProjection, translate_error
from devstack import PostgresServer
from devstack.ports import LOOPBACK, free_port
from schemas.upserts import WebhookUpsert as WebhookRow
from streams.domain.normalise import normalise
from streams.domain.projection import (
    BILLING_TOPICS,
    ProjectionInputError,
    plan_billing,
    webhook_upsert,
)
from streams.domain.status import (
    CheckoutStatus,
    InvoiceStatus,
    PaymentStatus,
    RefundStatus,
    SubscriptionStatus,
    WebhookStatus,
    checkout_status_for_event,
    invoice_status,
    payment_status_for_event,
    refund_status,
    strongest,
)
from tests.payloads.razorpay import RAZORPAY_EVENT_TYPES, razorpay_body, razorpay_event
from tests.payloads.stripe import STRIPE_EVENT_TYPES, stripe_body, stripe_event

integration = pytest.mark.integration

CONSUMER = "test-projection"
T0 = 1_735_689_600_000  # ms since the epoch
SUCCEEDED = "billing.payment.succeeded"
FAILED = "billing.payment.failed"
PENDING = "billing.payment.pending"
REFUNDED = "billing.payment.refunded"
DEFAULT_STATUS = {
    SUCCEEDED: "succeeded",
    FAILED: "failed",
    PENDING: "pending",
    REFUNDED: "succeeded",
    "billing.checkout.completed": "complete",
    "billing.checkout.failed": "failed",
    "billing.checkout.expired": "expired",
    "billing.invoice.updated": "paid",
    "billing.subscription.updated": "active",
}
# Call timeout of the projection under test, and what "fails fast" allows on top of it.
TIMEOUT_S = 5.0
SLACK_S = 3.0


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def billing(topic: str, object_id: str, *, at: int = 0, **fields: Any) -> dict[str, Any]:
    """A decoded BillingEvent record; ``at`` is seconds after T0."""
    record: dict[str, Any] = {
        "eventId": str(uuid.uuid4()),
        "eventType": topic,
        "version": 1,
        "occurredAt": T0 + at * 1000,
        "correlationId": "corr-test",
        "source": "tests",
        "provider": "stripe",
        "providerEventId": new_id("evt"),
        "providerObjectId": object_id,
        "orderId": "ord_1",
        "userId": "usr_1",
        "amountMinor": 1000,
        "currency": "usd",
        "status": DEFAULT_STATUS[topic],
        "amountRefundedMinor": None,
        "refundId": None,
        "paymentId": None,
        "attributes": {},
    }
    record.update(fields)
    return record


def refund(
    payment_id: str | None, amount: int | None, *, status: str = "succeeded", **fields: Any
) -> dict[str, Any]:
    refund_id = fields.pop("refundId", new_id("re"))
    return billing(
        REFUNDED,
        refund_id or new_id("ch"),
        status=status,
        refundId=refund_id,
        paymentId=payment_id,
        amountMinor=amount,
        **fields,
    )


@pytest.fixture
async def projection(migrated_db: str) -> AsyncIterator[PostgresProjection]:
    async with PostgresProjection(migrated_db, timeout=TIMEOUT_S) as started:
        yield started


async def apply_billing(
    projection: PostgresProjection, events: Sequence[dict[str, Any]], consumer: str
) -> int:
    """What the project_billing agent does with a batch: the domain plans, the
    connector writes."""
    return await projection.write_billing(plan_billing(events), consumer)


async def apply(projection: PostgresProjection, *events: dict[str, Any]) -> int:
    return await apply_billing(projection, events, CONSUMER)


async def paid_payment(projection: PostgresProjection, amount: int = 1000) -> str:
    payment_id = new_id("pi")
    assert await apply(projection, billing(SUCCEEDED, payment_id, amountMinor=amount)) == 1
    return payment_id


async def payment_status(projection: PostgresProjection, payment_id: str) -> str:
    payment = await projection.payment("stripe", payment_id)
    assert payment is not None
    return payment.status


# -- schema ----------------------------------------------------------------------------


@integration
@pytest.mark.parametrize(
    ("table", "vocabulary"),
    [
        ("payments", PaymentStatus),
        ("refunds", RefundStatus),
        ("invoices", InvoiceStatus),
        ("checkout_sessions", CheckoutStatus),
        ("subscriptions", SubscriptionStatus),
        ("webhook_events", WebhookStatus),
    ],
)
def test_status_checks_list_exactly_the_domain_vocabulary(
    migrated_db: str, table: str, vocabulary: type[Any]
) -> None:
    with psycopg.connect(migrated_db) as conn:
        row = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s",
            (f"{table}_status_check",),
        ).fetchone()
    assert row is not None
    assert set(re.findall(r"'([A-Z_]+)'", str(row[0]))) == {str(s) for s in vocabulary}


@integration
def test_order_id_is_indexed_where_it_exists(migrated_db: str) -> None:
    with psycopg.connect(migrated_db) as conn:
        with_column = {
            str(r[0])
            for r in conn.execute(
                "SELECT table_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND column_name = 'order_id'"
            )
        }
        indexed = {
            str(r[0])
            for r in conn.execute(
                "SELECT tablename FROM pg_indexes WHERE indexdef LIKE '%%(order_id)%%'"
            )
        }
    assert with_column
    assert with_column <= indexed


# -- every topic -----------------------------------------------------------------------


@integration
async def test_every_billing_topic_projects_into_its_table(
    projection: PostgresProjection,
) -> None:
    ids = {topic: new_id("obj") for topic in BILLING_TOPICS}
    payment_of_refund = new_id("pi")
    events = [
        billing(
            topic,
            ids[topic],
            at=1,
            **(
                {"refundId": ids[topic], "paymentId": payment_of_refund}
                if topic == REFUNDED
                else {"paymentId": "pi_linked"}
            ),
        )
        for topic in sorted(BILLING_TOPICS)
    ]
    assert await apply_billing(projection, events, CONSUMER) == len(BILLING_TOPICS)
    by_topic = {e["eventType"]: e for e in events}

    for topic in (SUCCEEDED, FAILED, PENDING):
        payment = await projection.payment("stripe", ids[topic])
        assert payment is not None
        assert (payment.status, payment.amount_minor, payment.currency) == (
            payment_status_for_event(topic),
            1000,
            "usd",
        )
        assert (payment.order_id, payment.user_id, payment.amount_refunded_minor) == (
            "ord_1",
            "usr_1",
            0,
        )
        assert payment.last_event_id == by_topic[topic]["eventId"]
        assert payment.last_event_at == dt.datetime(2025, 1, 1, 0, 0, 1, tzinfo=dt.UTC)

    refund_row = await projection.refund("stripe", ids[REFUNDED])
    assert refund_row is not None
    assert (refund_row.payment_id, refund_row.amount_minor, refund_row.status) == (
        payment_of_refund,
        1000,
        "SUCCEEDED",
    )
    refunded = await projection.payment("stripe", payment_of_refund)
    assert refunded is not None
    assert (refunded.status, refunded.amount_refunded_minor) == ("PARTIALLY_REFUNDED", 1000)

    for topic in (
        "billing.checkout.completed",
        "billing.checkout.failed",
        "billing.checkout.expired",
    ):
        session = await projection.checkout_session("stripe", ids[topic])
        assert session is not None
        assert (session.status, session.order_id, session.payment_id, session.amount_minor) == (
            checkout_status_for_event(topic),
            "ord_1",
            "pi_linked",
            1000,
        )

    invoice = await projection.invoice("stripe", ids["billing.invoice.updated"])
    assert invoice is not None
    assert (invoice.status, invoice.order_id, invoice.amount_minor) == ("PAID", "ord_1", 1000)

    subscription = await projection.subscription("stripe", ids["billing.subscription.updated"])
    assert subscription is not None
    assert (subscription.status, subscription.user_id) == ("ACTIVE", "usr_1")

    for event in events:
        assert await projection.is_processed(CONSUMER, event["eventId"])


def _raw_webhook(provider: str, event_type: str, body: bytes) -> dict[str, Any]:
    return {
        "eventId": str(uuid.uuid4()),
        "eventType": event_type,
        "version": 1,
        "occurredAt": T0,
        "correlationId": "corr-e2e",
        "source": f"sluice.ingress/{provider}",
        "provider": provider,
        "providerEventId": new_id("evt"),
        "receivedAt": T0,
        "signatureHeader": None,
        "rawBody": body,
        "contentType": "application/json",
        "sourceAddress": None,
        "replay": False,
    }


def _provider_cases() -> list[tuple[str, str]]:
    return [("stripe", t) for t in STRIPE_EVENT_TYPES] + [
        ("razorpay", t) for t in RAZORPAY_EVENT_TYPES
    ]


@integration
@pytest.mark.parametrize(("provider", "event_type"), _provider_cases())
async def test_what_the_normaliser_emits_is_projectable(
    projection: PostgresProjection, provider: str, event_type: str
) -> None:
    """Contract with streams/domain/normalise: every mapped provider event projects."""
    order_id = new_id("ord")
    if provider == "stripe":
        body = stripe_body(stripe_event(event_type, order_id=order_id))
    else:
        body = razorpay_body(razorpay_event(event_type, order_id=order_id))
    result = normalise(_raw_webhook(provider, event_type, body))
    assert result.outcome == "mapped", result.reason
    records = [event.record for event in result.events]

    assert await apply_billing(projection, records, CONSUMER) == len(records)

    for record in records:
        topic, object_id = record["eventType"], record["providerObjectId"]
        row: object
        if topic in (SUCCEEDED, FAILED, PENDING):
            row = await projection.payment(provider, object_id)
        elif topic == REFUNDED:
            if record["refundId"] is not None:
                row = await projection.refund(provider, record["refundId"])
            else:
                row = await projection.payment(provider, record["paymentId"])
        elif topic.startswith("billing.checkout."):
            row = await projection.checkout_session(provider, object_id)
        elif topic == "billing.invoice.updated":
            row = await projection.invoice(provider, object_id)
        else:
            row = await projection.subscription(provider, object_id)
        assert row is not None, record


# -- idempotence -----------------------------------------------------------------------


@integration
async def test_the_same_event_five_times_is_one_row_and_one_processed_entry(
    projection: PostgresProjection,
) -> None:
    event = billing(SUCCEEDED, new_id("pi"))
    payments = await projection.count("payments")
    processed = await projection.count("processed_events")

    results = [await apply(projection, event) for _ in range(5)]
    assert results == [1, 0, 0, 0, 0]
    assert await apply_billing(projection, [event] * 5, CONSUMER) == 0

    assert await projection.count("payments") == payments + 1
    assert await projection.count("processed_events") == processed + 1


@integration
async def test_a_repeat_inside_one_batch_is_applied_once(projection: PostgresProjection) -> None:
    event = billing(SUCCEEDED, new_id("pi"))
    processed = await projection.count("processed_events")
    assert await apply_billing(projection, [event] * 5, CONSUMER) == 1
    assert await projection.count("processed_events") == processed + 1


@integration
async def test_each_consumer_has_its_own_ledger(projection: PostgresProjection) -> None:
    event = billing(SUCCEEDED, new_id("pi"))
    assert await apply_billing(projection, [event], "consumer-a") == 1
    assert await apply_billing(projection, [event], "consumer-b") == 1
    assert await apply_billing(projection, [event], "consumer-a") == 0
    assert await projection.is_processed("consumer-b", event["eventId"])
    assert not await projection.is_processed("consumer-c", event["eventId"])


@integration
async def test_an_empty_batch_does_nothing(projection: PostgresProjection) -> None:
    assert await apply_billing(projection, [], CONSUMER) == 0
    await projection.record_webhooks([])


@integration
async def test_concurrent_batches_apply_each_event_exactly_once(
    projection: PostgresProjection,
) -> None:
    events = [billing(SUCCEEDED, new_id("pi")) for _ in range(50)]
    results = await asyncio.gather(*(apply_billing(projection, events, CONSUMER) for _ in range(3)))
    assert sum(results) == len(events)


# -- payments never regress --------------------------------------------------------------


@integration
async def test_succeeded_then_late_processing_stays_succeeded(
    projection: PostgresProjection,
) -> None:
    payment_id = new_id("pi")
    succeeded = billing(SUCCEEDED, payment_id, at=2)
    await apply(projection, succeeded)
    await apply(projection, billing(PENDING, payment_id, at=1, status="pending"))
    payment = await projection.payment("stripe", payment_id)
    assert payment is not None
    assert payment.status == "SUCCEEDED"
    assert payment.last_event_id == succeeded["eventId"]


@integration
async def test_failed_then_succeeded_ends_succeeded(projection: PostgresProjection) -> None:
    payment_id = new_id("pi")
    await apply(projection, billing(FAILED, payment_id, at=1))
    assert await payment_status(projection, payment_id) == "FAILED"
    await apply(projection, billing(SUCCEEDED, payment_id, at=2))
    assert await payment_status(projection, payment_id) == "SUCCEEDED"


@integration
async def test_succeeded_then_failed_stays_succeeded(projection: PostgresProjection) -> None:
    payment_id = new_id("pi")
    await apply(projection, billing(SUCCEEDED, payment_id, at=1))
    await apply(projection, billing(FAILED, payment_id, at=2))
    assert await payment_status(projection, payment_id) == "SUCCEEDED"


@integration
async def test_payment_status_matrix_in_both_orders(projection: PostgresProjection) -> None:
    topics = (PENDING, FAILED, SUCCEEDED)
    cases = [(first, second, new_id("pi")) for first in topics for second in topics]
    await apply_billing(projection, [billing(a, pid, at=1) for a, _, pid in cases], CONSUMER)
    await apply_billing(projection, [billing(b, pid, at=2) for _, b, pid in cases], CONSUMER)
    for first, second, payment_id in cases:
        expected = strongest(payment_status_for_event(first), payment_status_for_event(second))
        assert await payment_status(projection, payment_id) == expected, (first, second)


@integration
async def test_the_winning_event_brings_its_data_and_others_only_fill_gaps(
    projection: PostgresProjection,
) -> None:
    payment_id = new_id("pi")
    await apply(
        projection,
        billing(
            PENDING, payment_id, at=1, amountMinor=None, orderId=None, userId=None, currency=None
        ),
    )
    await apply(projection, billing(SUCCEEDED, payment_id, at=3, amountMinor=1500, userId=None))
    await apply(projection, billing(PENDING, payment_id, at=2, amountMinor=999, userId="usr_9"))
    payment = await projection.payment("stripe", payment_id)
    assert payment is not None
    assert (payment.status, payment.amount_minor, payment.currency) == ("SUCCEEDED", 1500, "usd")
    assert (payment.order_id, payment.user_id) == ("ord_1", "usr_9")  # a gap, filled late


@integration
async def test_payments_for_order_lists_the_orders_payments(
    projection: PostgresProjection,
) -> None:
    order_id = new_id("ord")
    first, second = new_id("pi"), new_id("pi")
    await apply(
        projection,
        billing(FAILED, first, orderId=order_id),
        billing(SUCCEEDED, second, orderId=order_id),
    )
    payments = await projection.payments_for_order(order_id)
    assert {(p.provider_payment_id, p.status) for p in payments} == {
        (first, "FAILED"),
        (second, "SUCCEEDED"),
    }
    assert await projection.payments_for_order(new_id("ord")) == []


# -- refunds -----------------------------------------------------------------------------


@integration
@pytest.mark.parametrize("arrival", ["partial_first", "full_first", "one_batch"])
async def test_a_partial_then_a_full_refund_ends_refunded_with_the_right_amounts(
    projection: PostgresProjection, arrival: str
) -> None:
    payment_id = await paid_payment(projection, 1000)
    partial, rest = refund(payment_id, 300, at=5), refund(payment_id, 700, at=6)

    if arrival == "one_batch":
        assert await apply(projection, rest, partial) == 2
    else:
        first, second = (partial, rest) if arrival == "partial_first" else (rest, partial)
        await apply(projection, first)
        payment = await projection.payment("stripe", payment_id)
        assert payment is not None
        assert payment.status == "PARTIALLY_REFUNDED"
        assert payment.amount_refunded_minor == first["amountMinor"]
        await apply(projection, second)

    payment = await projection.payment("stripe", payment_id)
    assert payment is not None
    assert (payment.status, payment.amount_minor, payment.amount_refunded_minor) == (
        "REFUNDED",
        1000,
        1000,
    )
    refunds = await projection.refunds_for_payment("stripe", payment_id)
    assert sorted((r.amount_minor, r.status) for r in refunds) == [
        (300, "SUCCEEDED"),
        (700, "SUCCEEDED"),
    ]


@integration
@pytest.mark.parametrize("reverse", [False, True])
async def test_charge_refunded_totals_move_the_payment_in_any_order(
    projection: PostgresProjection, reverse: bool
) -> None:
    """Stripe charge.refunded without an expanded refund: only the charge's totals."""
    payment_id = await paid_payment(projection, 1000)
    partial = refund(
        payment_id, 300, status="partially_refunded", refundId=None, amountRefundedMinor=300
    )
    full = refund(payment_id, 1000, status="refunded", refundId=None, amountRefundedMinor=1000)
    for event in (full, partial) if reverse else (partial, full):
        assert await apply(projection, event) == 1
    payment = await projection.payment("stripe", payment_id)
    assert payment is not None
    assert (payment.status, payment.amount_refunded_minor) == ("REFUNDED", 1000)
    assert await projection.refunds_for_payment("stripe", payment_id) == []


@integration
async def test_one_refund_reported_twice_is_not_counted_twice(
    projection: PostgresProjection,
) -> None:
    payment_id = await paid_payment(projection, 1000)
    refund_id = new_id("re")
    created = refund(payment_id, 300, refundId=refund_id)  # refund.created
    charge = refund(  # charge.refunded naming the same refund, with the charge's total
        payment_id,
        300,
        status="partially_refunded",
        refundId=refund_id,
        amountRefundedMinor=300,
        attributes={"refund_status": "succeeded"},
    )
    assert await apply(projection, created, charge) == 2
    payment = await projection.payment("stripe", payment_id)
    assert payment is not None
    assert (payment.status, payment.amount_refunded_minor) == ("PARTIALLY_REFUNDED", 300)


@integration
@pytest.mark.parametrize(
    ("refunded", "expected"), [(1000, "REFUNDED"), (300, "PARTIALLY_REFUNDED")]
)
async def test_a_refund_before_its_payment_creates_it_and_the_payment_fills_it_in(
    projection: PostgresProjection, refunded: int, expected: str
) -> None:
    payment_id = new_id("pi")
    order_id = new_id("ord")
    await apply(projection, refund(payment_id, refunded, at=5, orderId=order_id))

    early = await projection.payment("stripe", payment_id)
    assert early is not None
    assert (early.status, early.amount_minor, early.amount_refunded_minor) == (
        "PARTIALLY_REFUNDED",  # the amount is not known yet: never claim a full refund
        None,
        refunded,
    )
    assert (early.order_id, early.currency) == (order_id, "usd")

    await apply(projection, billing(SUCCEEDED, payment_id, at=1, amountMinor=1000))
    await apply(projection, billing(PENDING, payment_id, at=0))  # and a late processing

    payment = await projection.payment("stripe", payment_id)
    assert payment is not None
    assert (payment.status, payment.amount_minor, payment.amount_refunded_minor) == (
        expected,
        1000,
        refunded,
    )


@integration
async def test_a_full_refund_flag_before_the_payment_says_refunded(
    projection: PostgresProjection,
) -> None:
    payment_id = new_id("pi")
    await apply(
        projection,
        refund(payment_id, 1000, status="refunded", refundId=None, amountRefundedMinor=1000),
    )
    assert await payment_status(projection, payment_id) == "REFUNDED"


@integration
async def test_pending_and_failed_refunds_do_not_refund_the_payment(
    projection: PostgresProjection,
) -> None:
    payment_id = await paid_payment(projection, 1000)
    refund_id = new_id("re")
    await apply(projection, refund(payment_id, 500, status="pending", refundId=refund_id))
    await apply(projection, refund(payment_id, 500, status="failed", refundId=refund_id))
    await apply(projection, refund(payment_id, 500, status="succeeded", refundId=refund_id, at=1))

    refund_row = await projection.refund("stripe", refund_id)
    assert refund_row is not None
    assert refund_row.status == "FAILED"  # terminal; a late "succeeded" does not undo it
    payment = await projection.payment("stripe", payment_id)
    assert payment is not None
    assert (payment.status, payment.amount_refunded_minor) == ("SUCCEEDED", 0)

    unknown_payment = new_id("pi")
    await apply(projection, refund(unknown_payment, 500, status="pending"))
    assert await projection.payment("stripe", unknown_payment) is None


@integration
async def test_refund_status_matrix_in_both_orders(projection: PostgresProjection) -> None:
    statuses = ("unknown", "pending", "succeeded", "canceled", "failed")
    cases = [(a, b, new_id("re")) for a in statuses for b in statuses]
    first = [refund(None, 100, status=a, refundId=rid) for a, _, rid in cases]
    second = [refund(None, 100, status=b, refundId=rid) for _, b, rid in cases]
    await apply_billing(projection, first, CONSUMER)
    await apply_billing(projection, second, CONSUMER)
    for a, b, refund_id in cases:
        row = await projection.refund("stripe", refund_id)
        assert row is not None
        assert row.status == strongest(refund_status(a), refund_status(b)), (a, b)


@integration
async def test_concurrent_batches_refunding_one_payment_add_up(
    projection: PostgresProjection,
) -> None:
    """Each batch sums the refunds it can see; the payment lock makes them see each other."""
    for _ in range(5):
        payments = [await paid_payment(projection, 1000) for _ in range(10)]
        first = [refund(p, 400) for p in payments]
        second = [refund(p, 600) for p in payments]
        await asyncio.gather(
            apply_billing(projection, first, CONSUMER), apply_billing(projection, second, CONSUMER)
        )
        for payment_id in payments:
            payment = await projection.payment("stripe", payment_id)
            assert payment is not None
            assert (payment.status, payment.amount_refunded_minor) == ("REFUNDED", 1000)


# -- checkout sessions, invoices, subscriptions --------------------------------------------


@integration
async def test_checkout_status_matrix_in_both_orders(projection: PostgresProjection) -> None:
    topics = ("billing.checkout.completed", "billing.checkout.failed", "billing.checkout.expired")
    cases = [(a, b, new_id("cs")) for a in topics for b in topics]
    await apply_billing(projection, [billing(a, sid) for a, _, sid in cases], CONSUMER)
    await apply_billing(projection, [billing(b, sid) for _, b, sid in cases], CONSUMER)
    for a, b, session_id in cases:
        row = await projection.checkout_session("stripe", session_id)
        assert row is not None
        assert row.status == strongest(checkout_status_for_event(a), checkout_status_for_event(b))


@integration
async def test_invoice_status_matrix_in_both_orders(projection: PostgresProjection) -> None:
    statuses = ("unknown", "draft", "open", "uncollectible", "void", "paid")
    cases = [(a, b, new_id("in")) for a in statuses for b in statuses]
    topic = "billing.invoice.updated"
    await apply_billing(projection, [billing(topic, i, status=a) for a, _, i in cases], CONSUMER)
    await apply_billing(projection, [billing(topic, i, status=b) for _, b, i in cases], CONSUMER)
    for a, b, invoice_id in cases:
        row = await projection.invoice("stripe", invoice_id)
        assert row is not None
        assert row.status == strongest(invoice_status(a), invoice_status(b)), (a, b)


async def _subscription_status(projection: PostgresProjection, subscription_id: str) -> str:
    row = await projection.subscription("stripe", subscription_id)
    assert row is not None
    return row.status


@integration
async def test_subscriptions_follow_event_time_back_and_forth(
    projection: PostgresProjection,
) -> None:
    sub = new_id("sub")
    topic = "billing.subscription.updated"
    await apply(projection, billing(topic, sub, at=1, status="active"))
    await apply(projection, billing(topic, sub, at=2, status="past_due"))
    assert await _subscription_status(projection, sub) == "PAST_DUE"
    newest = billing(topic, sub, at=3, status="active")
    await apply(projection, newest)
    assert await _subscription_status(projection, sub) == "ACTIVE"
    await apply(projection, billing(topic, sub, at=2, status="past_due"))  # late, older
    await apply(projection, billing(topic, sub, at=9, status="unknown"))  # newer, unreadable
    row = await projection.subscription("stripe", sub)
    assert row is not None
    assert (row.status, row.last_event_id) == ("ACTIVE", newest["eventId"])


@integration
async def test_subscription_events_converge_in_any_order(projection: PostgresProjection) -> None:
    topic = "billing.subscription.updated"
    template = [
        (1, "trialing"),
        (2, "active"),
        (2, "canceled"),  # same second as "active": the terminal status wins the tie
        (1, "cancelled"),
    ]
    orders = [template, list(reversed(template)), [template[2], template[0], *template[3:1:-1]]]
    for order in orders:
        sub = new_id("sub")
        for at, status in order:
            await apply(projection, billing(topic, sub, at=at, status=status))
        assert await _subscription_status(projection, sub) == "CANCELED"


# -- webhook events ------------------------------------------------------------------------


def webhook_row(**fields: Any) -> WebhookRow:
    row = WebhookRow(
        provider="stripe",
        event_id=new_id("evt"),
        event_type="payment_intent.succeeded",
        raw_body=b'{"id":"evt_1","object":"event"}',
        content_type="application/json",
        received_at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
        signature="t=1735689600,v1=abc",
        correlation_id="corr-webhook",
    )
    return dataclasses.replace(row, **fields)


@integration
async def test_a_webhook_is_recorded_once_and_its_body_never_rewritten(
    projection: PostgresProjection,
) -> None:
    row = webhook_row()
    before = await projection.count("webhook_events")
    await projection.record_webhooks([row])
    await projection.record_webhooks([dataclasses.replace(row, raw_body=b"tampered")])
    await projection.record_webhooks(
        [dataclasses.replace(row, raw_body=b"tampered", status=WebhookStatus.PROCESSED)]
    )
    assert await projection.count("webhook_events") == before + 1

    stored = await projection.webhook_event("stripe", row.event_id)
    assert stored is not None
    assert stored.raw_body == row.raw_body
    assert (stored.event_type, stored.signature, stored.content_type) == (
        row.event_type,
        row.signature,
        row.content_type,
    )
    assert (stored.correlation_id, stored.received_at) == (row.correlation_id, row.received_at)
    assert stored.status == "PROCESSED"
    assert stored.processed_at is not None


@integration
async def test_webhook_status_only_moves_forward(projection: PostgresProjection) -> None:
    row = webhook_row()
    await projection.record_webhooks([row])
    stored = await projection.webhook_event("stripe", row.event_id)
    assert stored is not None
    assert (stored.status, stored.processed_at, stored.reason) == ("RECEIVED", None, None)

    failed = dataclasses.replace(row, status=WebhookStatus.FAILED, reason="mapping failed")
    await projection.record_webhooks([failed])
    stored = await projection.webhook_event("stripe", row.event_id)
    assert stored is not None
    assert (stored.status, stored.reason) == ("FAILED", "mapping failed")

    processed_at = dt.datetime(2025, 1, 2, tzinfo=dt.UTC)
    replayed = dataclasses.replace(row, status=WebhookStatus.PROCESSED, processed_at=processed_at)
    await projection.record_webhooks([replayed])
    for late in (WebhookStatus.FAILED, WebhookStatus.IGNORED, WebhookStatus.RECEIVED):
        await projection.record_webhooks([dataclasses.replace(row, status=late, reason="late")])
    stored = await projection.webhook_event("stripe", row.event_id)
    assert stored is not None
    assert (stored.status, stored.reason, stored.processed_at) == ("PROCESSED", None, processed_at)


@integration
async def test_a_status_may_arrive_before_the_webhook_and_repeats_in_one_batch(
    projection: PostgresProjection,
) -> None:
    row = webhook_row()
    ignored = dataclasses.replace(row, status=WebhookStatus.IGNORED, reason="unmapped type")
    await projection.record_webhooks([ignored, row, row])
    stored = await projection.webhook_event("stripe", row.event_id)
    assert stored is not None
    assert (stored.status, stored.reason) == ("IGNORED", "unmapped type")
    assert stored.processed_at is not None


@integration
async def test_webhook_row_from_a_raw_webhook_record(projection: PostgresProjection) -> None:
    record = _raw_webhook("razorpay", "payment.captured", b'{"event":"payment.captured"}')
    record["signatureHeader"] = "deadbeef"
    row = webhook_upsert(record)
    assert row.event_id == record["providerEventId"]
    assert row.received_at == dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    await projection.record_webhooks([row])
    stored = await projection.webhook_event("razorpay", record["providerEventId"])
    assert stored is not None
    assert (stored.raw_body, stored.signature, stored.correlation_id) == (
        record["rawBody"],
        "deadbeef",
        "corr-e2e",
    )


# -- bad input -------------------------------------------------------------------------------


@integration
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"eventType": "billing.payment.exploded"}, "eventType"),
        ({"eventType": "billing.invoice.updated", "status": "exploded"}, "status"),
        ({"amountMinor": 10.5}, "amountMinor"),
        ({"amountMinor": True}, "amountMinor"),
        ({"currency": 840}, "currency"),
        ({"occurredAt": None}, "occurredAt"),
        ({"occurredAt": dt.datetime(2025, 1, 1)}, "occurredAt"),  # naive
        ({"provider": ""}, "provider"),
        ({"orderId": 7}, "orderId"),
    ],
)
async def test_an_unprojectable_record_refuses_the_whole_batch_naming_it(
    projection: PostgresProjection, change: dict[str, Any], field: str
) -> None:
    good = billing(SUCCEEDED, new_id("pi"))
    bad = billing(SUCCEEDED, new_id("pi"), **change)
    with pytest.raises(ProjectionInputError) as caught:
        await apply(projection, good, bad)
    assert isinstance(caught.value, PermanentError)
    assert (caught.value.event_id, caught.value.field) == (bad["eventId"], field)
    assert await projection.payment("stripe", good["providerObjectId"]) is None
    assert not await projection.is_processed(CONSUMER, good["eventId"])


@integration
async def test_a_record_without_an_event_id_is_refused(projection: PostgresProjection) -> None:
    with pytest.raises(ProjectionInputError) as caught:
        await apply(projection, billing(SUCCEEDED, new_id("pi"), eventId=None))
    assert (caught.value.event_id, caught.value.field) == (None, "eventId")


@integration
@pytest.mark.parametrize(
    ("change", "refused_by"),
    [
        ({"amountMinor": -5}, "payments_amount_minor_check"),
        ({"currency": "USD"}, "payments_currency_check"),
        ({"amountMinor": 2**70}, "NumericValueOutOfRange"),  # beyond bigint
    ],
)
async def test_values_the_schema_refuses_are_permanent_and_write_nothing(
    projection: PostgresProjection, change: dict[str, Any], refused_by: str
) -> None:
    """Value rules live in the schema only: relaxing a constraint by migration is enough
    for a replay to pass."""
    good = billing(SUCCEEDED, new_id("pi"))
    bad = billing(SUCCEEDED, new_id("pi"), **change)
    with pytest.raises(PermanentError, match=refused_by) as caught:
        await apply(projection, good, bad)
    assert not isinstance(caught.value, ProjectionInputError)
    assert await projection.payment("stripe", good["providerObjectId"]) is None
    assert not await projection.is_processed(CONSUMER, good["eventId"])


@integration
async def test_text_the_database_cannot_store_is_permanent(
    projection: PostgresProjection,
) -> None:

    with pytest.raises(PermanentError):
        await projection.record_webhooks([webhook_row(correlation_id="nul\x00byte")])


@integration
async def test_count_accepts_only_projection_tables(projection: PostgresProjection) -> None:
    assert "payments" in PROJECTION_TABLES
    with pytest.raises(ValueError, match="not a projection table"):
        await projection.count("pg_class")  # type: ignore[arg-type]


# -- availability --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (psycopg.errors.SerializationFailure("x"), TransientError),
        (psycopg.errors.DeadlockDetected("x"), TransientError),
        (psycopg.errors.AdminShutdown("x"), TransientError),
        (psycopg.errors.QueryCanceled("x"), TransientError),
        (psycopg.errors.LockNotAvailable("x"), TransientError),
        (psycopg.errors.TooManyConnections("x"), TransientError),
        (psycopg.OperationalError("connection refused"), TransientError),
        (PoolTimeout("couldn't get a connection"), TransientError),
        (psycopg.errors.UniqueViolation("x"), PermanentError),
        (psycopg.errors.CheckViolation("x"), PermanentError),
        (psycopg.errors.NumericValueOutOfRange("x"), PermanentError),
        (psycopg.DataError("NUL byte"), PermanentError),
        (psycopg.errors.UndefinedTable("x"), None),
        (psycopg.errors.SyntaxError("x"), None),
        (ValueError("not ours"), None),
    ],
)
def test_translate_error(error: BaseException, expected: type[Exception] | None) -> None:
    translated = translate_error(error)
    if expected is None:
        assert translated is None
    else:
        assert type(translated) is expected


@integration
async def test_starting_against_an_unreachable_server_fails_fast_and_transiently() -> None:
    url = f"postgresql://postgres@{LOOPBACK}:{free_port(None)}/nowhere"
    began = time.monotonic()
    with pytest.raises(TransientError):
        await PostgresProjection(url, timeout=1.0).start()
    assert time.monotonic() - began < 1.0 + SLACK_S


@integration
async def test_using_a_projection_before_start_is_a_bug(migrated_db: str) -> None:
    with pytest.raises(RuntimeError, match="before start"):
        await PostgresProjection(migrated_db).ping()


async def _timed_transient(call: Any) -> float:
    began = time.monotonic()
    with pytest.raises(TransientError):
        await call
    return time.monotonic() - began


async def _first_success_after(
    projection: PostgresProjection, events: Sequence[dict[str, Any]], limit: float
) -> tuple[int, float]:
    began = time.monotonic()
    while True:
        try:
            return await apply_billing(projection, events, CONSUMER), time.monotonic() - began
        except TransientError:
            if time.monotonic() - began > limit:
                raise


@integration
async def test_a_server_outage_is_transient_and_the_same_pool_recovers(
    postgres_server: PostgresServer, migrated_db: str
) -> None:
    timeout = 2.0  # a short bound keeps the test quick; production uses the 5 s default
    bound = timeout + SLACK_S
    async with PostgresProjection(migrated_db, timeout=timeout, max_size=2) as projection:
        await projection.ping()
        payment_id = new_id("pi")
        await asyncio.to_thread(postgres_server.stop)
        try:
            assert await _timed_transient(projection.ping()) < bound
            event = billing(SUCCEEDED, payment_id)
            assert await _timed_transient(apply_billing(projection, [event], CONSUMER)) < bound
            assert await _timed_transient(projection.payment("stripe", payment_id)) < bound
            assert await _timed_transient(projection.record_webhooks([webhook_row()])) < bound
        finally:
            await asyncio.to_thread(postgres_server.start)

        # No restart of the projection: the pool notices and reconnects by itself; the
        # first call after the outage waits for it within its own timeout.
        applied, took = await _first_success_after(
            projection, [billing(SUCCEEDED, payment_id)], limit=2 * bound
        )
        assert applied == 1
        assert took < bound
        assert await payment_status(projection, payment_id) == "SUCCEEDED"
        await projection.ping()
