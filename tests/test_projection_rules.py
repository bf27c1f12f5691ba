"""The projection rules alone: decoded events in, typed upserts out (no database).

The same rules run against PostgreSQL in ``test_postgres_projection.py`` and
``test_orders_projection.py``; these check what the planner decides before anything
is written.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from schemas.statuses import (
    CheckoutStatus,
    InvoiceStatus,
    PaymentStatus,
    RefundStatus,
    SubscriptionStatus,
    WebhookStatus,
)
from schemas.upserts import PaymentUpsert
from streams.domain.projection import (
    BILLING_TOPICS,
    ProjectionInputError,
    plan_billing,
    plan_order_snapshots,
    webhook_upsert,
)

T0 = 1_735_689_600_000
AT = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def billing(topic: str, event_id: str, object_id: str = "obj_1", **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "eventId": event_id,
        "eventType": topic,
        "occurredAt": T0,
        "provider": "stripe",
        "providerObjectId": object_id,
        "orderId": "ord_1",
        "userId": "usr_1",
        "amountMinor": 1000,
        "currency": "usd",
        "status": "succeeded",
        "amountRefundedMinor": None,
        "refundId": None,
        "paymentId": None,
        "attributes": {},
    }
    record.update(fields)
    return record


def snapshot(order_id: str, revision: int, event_id: str, **fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "eventId": event_id,
        "eventType": "order.paid",
        "occurredAt": T0,
        "orderId": order_id,
        "status": "PAID",
        "revision": revision,
        "refundedMinor": 0,
        "createdAt": T0,
    }
    record.update(fields)
    return record


def test_every_billing_topic_plans_one_upsert_of_its_table() -> None:
    status = {
        "billing.invoice.updated": "paid",
        "billing.subscription.updated": "active",
        "billing.checkout.completed": "complete",
        "billing.checkout.failed": "complete",
        "billing.checkout.expired": "expired",
    }
    events = [
        billing(topic, f"evt_{n}", status=status.get(topic, "succeeded"), refundId="re_1")
        for n, topic in enumerate(sorted(BILLING_TOPICS))
    ]
    batch = plan_billing(events)
    assert len(batch) == len(BILLING_TOPICS) == 9
    assert sorted(u.status for u in batch.payments) == sorted(
        [PaymentStatus.SUCCEEDED, PaymentStatus.FAILED, PaymentStatus.PENDING]
    )
    assert [u.status for u in batch.refunds] == [RefundStatus.SUCCEEDED]
    assert sorted(u.status for u in batch.checkouts) == sorted(
        [CheckoutStatus.COMPLETED, CheckoutStatus.FAILED, CheckoutStatus.EXPIRED]
    )
    assert [u.status for u in batch.invoices] == [InvoiceStatus.PAID]
    assert [u.status for u in batch.subscriptions] == [SubscriptionStatus.ACTIVE]


def test_payment_upsert_takes_its_status_from_the_topic_not_the_record() -> None:
    event = billing("billing.payment.failed", "evt_1", "pi_1", status="requires_payment_method")
    assert plan_billing([event]).payments == [
        PaymentUpsert(
            event_id="evt_1",
            provider="stripe",
            payment_id="pi_1",
            order_id="ord_1",
            user_id="usr_1",
            amount_minor=1000,
            currency="usd",
            status=PaymentStatus.FAILED,
            occurred_at=AT,
        )
    ]


def test_a_charge_refunded_record_is_keyed_by_its_refund_and_hints_the_payment() -> None:
    keyed = billing(
        "billing.payment.refunded",
        "evt_1",
        "ch_1",
        status="partially_refunded",
        refundId="re_1",
        paymentId="pi_1",
        attributes={"refund_status": "pending"},
    )
    without_id = billing("billing.payment.refunded", "evt_2", "ch_1", status="refunded")
    first, second = plan_billing([keyed, without_id]).refunds
    # Sorted by refund id: the one without a refund id (it only moves the payment) first.
    assert (second.refund_id, second.payment_id) == ("re_1", "pi_1")
    assert second.status is RefundStatus.PENDING
    assert second.payment_hint is PaymentStatus.PARTIALLY_REFUNDED
    assert (first.refund_id, first.payment_hint) == (None, PaymentStatus.REFUNDED)


def test_upserts_are_sorted_so_concurrent_batches_lock_in_one_order() -> None:
    events = [billing("billing.payment.succeeded", f"evt_{n}", f"pi_{9 - n}") for n in range(5)]
    assert [u.payment_id for u in plan_billing(events).payments] == [
        f"pi_{n}" for n in range(5, 10)
    ]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"eventType": "billing.nothing"}, "eventType"),
        ({"status": "sideways"}, "status"),
        ({"provider": ""}, "provider"),
        ({"amountMinor": "1000"}, "amountMinor"),
        ({"occurredAt": dt.datetime(2025, 1, 1)}, "occurredAt"),  # naive
    ],
)
def test_a_bad_record_is_refused_naming_the_event_and_field(
    change: dict[str, Any], field: str
) -> None:
    good = billing("billing.invoice.updated", "evt_good", status="paid")
    bad = billing("billing.invoice.updated", "evt_bad", status="paid") | change
    with pytest.raises(ProjectionInputError) as caught:
        plan_billing([good, bad])
    assert (caught.value.event_id, caught.value.field) == ("evt_bad", field)


def test_order_snapshots_keep_the_newest_revision_and_every_event_id() -> None:
    batch = plan_order_snapshots(
        [
            snapshot("ord_b", 2, "evt_3"),
            snapshot("ord_a", 1, "evt_1", items=[{"productId": "p", "quantity": 2}]),
            snapshot("ord_b", 3, "evt_2"),
            snapshot("ord_b", 1, "evt_4"),
        ]
    )
    assert [(u.order_id, u.revision) for u in batch.orders] == [("ord_a", 1), ("ord_b", 3)]
    assert batch.orders[0].items == [{"productId": "p", "quantity": 2}]
    assert batch.event_ids == ["evt_1", "evt_2", "evt_3", "evt_4"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"status": "SHIPPED"}, "status"),
        ({"revision": 0}, "revision"),
        ({"items": [{"productId": "p"}]}, "items"),
        ({"providerIds": ["ok", 3]}, "providerIds"),
    ],
)
def test_a_bad_snapshot_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ProjectionInputError) as caught:
        plan_order_snapshots([snapshot("ord_1", 1, "evt_1") | change])
    assert (caught.value.event_id, caught.value.field) == ("evt_1", field)


def test_webhook_upsert_of_a_raw_webhook_record() -> None:
    record = {
        "provider": "razorpay",
        "providerEventId": "evt_1",
        "eventType": "payment.captured",
        "rawBody": b"{}",
        "contentType": "application/json",
        "receivedAt": T0,
        "signatureHeader": "sig",
        "correlationId": "corr",
    }
    row = webhook_upsert(record, status=WebhookStatus.IGNORED, reason="unmapped")
    assert (row.event_id, row.received_at, row.signature) == ("evt_1", AT, "sig")
    assert (row.status, row.reason, row.processed_at) == (WebhookStatus.IGNORED, "unmapped", None)
