"""The Postgres projections' rules: a decoded event in, typed upserts out (DESIGN §6).

Pure: the worker's agents decode records, call :func:`plan_billing`,
:func:`plan_order_snapshots` or :func:`webhook_upsert`, and hand the result to
``connectors.postgres``, which writes it in one transaction with the status guards of
``schemas/statuses.py`` evaluated in SQL against the row as it is now.

- ``billing.payment.{succeeded,failed,pending}`` → a :class:`PaymentUpsert`, status
  from the topic;
- ``billing.payment.refunded`` → a :class:`RefundUpsert` (keyed by the refund id, never
  by the charge the event was about, so totals cannot double count; with no refund id
  it only moves the payment);
- ``billing.checkout.*`` → :class:`CheckoutUpsert` (status from the topic);
  ``billing.invoice.updated`` → :class:`InvoiceUpsert`; ``billing.subscription.updated``
  → :class:`SubscriptionUpsert`;
- ``orders.lifecycle`` snapshots → the newest :class:`OrderUpsert` per order.

A record that cannot be projected (a missing or mistyped field, an unknown topic or
status) raises :class:`ProjectionInputError` naming it, before anything is written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Final

from schemas.statuses import WebhookStatus
from schemas.upserts import (
    BillingUpserts,
    CheckoutUpsert,
    InvoiceUpsert,
    OrderSnapshots,
    OrderUpsert,
    PaymentUpsert,
    RefundUpsert,
    SubscriptionUpsert,
    WebhookUpsert,
)
from streams.domain.orders import OrderStatus
from streams.domain.projection_input import (
    ProjectionInputError,
    RecordReader,
    str_or_none,
    timestamp,
)
from streams.domain.status import (
    UnknownStatus,
    checkout_status_for_event,
    invoice_status,
    payment_status_for_event,
    payment_status_hint_from_refund,
    refund_status,
    subscription_status,
)

__all__ = [
    "BILLING_TOPICS",
    "ORDER_STATUSES",
    "ProjectionInputError",
    "plan_billing",
    "plan_order_snapshots",
    "webhook_upsert",
]

_PAYMENT_TOPICS: Final = frozenset(
    {"billing.payment.succeeded", "billing.payment.failed", "billing.payment.pending"}
)
_REFUND_TOPIC: Final = "billing.payment.refunded"
_CHECKOUT_TOPICS: Final = frozenset(
    {"billing.checkout.completed", "billing.checkout.failed", "billing.checkout.expired"}
)
_INVOICE_TOPIC: Final = "billing.invoice.updated"
_SUBSCRIPTION_TOPIC: Final = "billing.subscription.updated"
BILLING_TOPICS: Final[frozenset[str]] = frozenset(
    {*_PAYMENT_TOPICS, _REFUND_TOPIC, *_CHECKOUT_TOPICS, _INVOICE_TOPIC, _SUBSCRIPTION_TOPIC}
)
"""The nine ``billing.*`` topics :func:`plan_billing` projects."""

ORDER_STATUSES: Final[frozenset[str]] = frozenset(
    value for name, value in vars(OrderStatus).items() if name.isupper()
)
"""The ``orders.status`` vocabulary (``streams.domain.orders.OrderStatus``)."""


def webhook_upsert(
    record: Mapping[str, Any],
    *,
    status: WebhookStatus = WebhookStatus.RECEIVED,
    reason: str | None = None,
    processed_at: dt.datetime | None = None,
) -> WebhookUpsert:
    """The ``webhook_events`` upsert of a decoded ``RawWebhook`` record (``receivedAt``
    in ms or a timezone-aware datetime). Raises ``KeyError``/``TypeError`` on a
    malformed one."""
    return WebhookUpsert(
        provider=record["provider"],
        event_id=record["providerEventId"],
        event_type=record["eventType"],
        raw_body=bytes(record["rawBody"]),
        content_type=record["contentType"],
        received_at=timestamp(record["receivedAt"]),
        signature=record.get("signatureHeader"),
        correlation_id=record.get("correlationId"),
        status=status,
        reason=reason,
        processed_at=processed_at,
    )


def plan_billing(events: Sequence[Mapping[str, Any]]) -> BillingUpserts:
    """The upserts of decoded ``BillingEvent`` records, each list sorted so concurrent
    batches lock rows in one order.

    :raises ProjectionInputError: a record's shape cannot be projected (``event_id``
        names it).
    """
    payments: list[PaymentUpsert] = []
    refunds: list[RefundUpsert] = []
    checkouts: list[CheckoutUpsert] = []
    invoices: list[InvoiceUpsert] = []
    subscriptions: list[SubscriptionUpsert] = []
    for record in events:
        event_id = record.get("eventId") if isinstance(record, Mapping) else None
        try:
            upsert = _billing_upsert(record)
        except UnknownStatus as exc:
            raise ProjectionInputError(
                f"event {event_id!r}: {exc}", event_id=str_or_none(event_id), field="status"
            ) from exc
        match upsert:
            case PaymentUpsert():
                payments.append(upsert)
            case RefundUpsert():
                refunds.append(upsert)
            case CheckoutUpsert():
                checkouts.append(upsert)
            case InvoiceUpsert():
                invoices.append(upsert)
            case SubscriptionUpsert():
                subscriptions.append(upsert)
    return BillingUpserts(
        payments=sorted(payments, key=lambda u: (u.provider, u.payment_id, u.event_id)),
        refunds=sorted(refunds, key=lambda u: (u.provider, u.refund_id or "", u.event_id)),
        checkouts=sorted(checkouts, key=lambda u: (u.provider, u.session_id, u.event_id)),
        invoices=sorted(invoices, key=lambda u: (u.provider, u.invoice_id, u.event_id)),
        subscriptions=sorted(
            subscriptions, key=lambda u: (u.provider, u.subscription_id, u.event_id)
        ),
    )


_BillingUpsert = PaymentUpsert | RefundUpsert | CheckoutUpsert | InvoiceUpsert | SubscriptionUpsert


def _billing_upsert(record: Mapping[str, Any]) -> _BillingUpsert:
    if not isinstance(record, Mapping):
        raise ProjectionInputError("a billing record must be a mapping", event_id=None, field=None)
    read = RecordReader(record)
    topic = read.text("eventType")
    if topic not in BILLING_TOPICS:
        raise ProjectionInputError(
            f"event {read.event_id!r}: {topic!r} is not a billing topic",
            event_id=read.event_id,
            field="eventType",
        )
    # Every field is read (and checked) whatever the topic, in this order, so a
    # malformed record is refused for the same field on every topic.
    raw_status = read.text("status")
    event_id = read.text("eventId")
    provider = read.text("provider")
    object_id = read.text("providerObjectId")
    order_id = read.optional_text("orderId")
    user_id = read.optional_text("userId")
    payment_id = read.optional_text("paymentId")
    amount = read.amount("amountMinor")
    refunded = read.amount("amountRefundedMinor")
    currency = read.optional_text("currency")
    occurred_at = read.occurred_at()
    if topic in _PAYMENT_TOPICS:
        return PaymentUpsert(
            event_id=event_id,
            provider=provider,
            payment_id=object_id,
            order_id=order_id,
            user_id=user_id,
            amount_minor=amount,
            currency=currency,
            status=payment_status_for_event(topic),
            occurred_at=occurred_at,
        )
    if topic == _REFUND_TOPIC:
        attributes = record.get("attributes")
        attribute = attributes.get("refund_status") if isinstance(attributes, Mapping) else None
        return RefundUpsert(
            event_id=event_id,
            provider=provider,
            refund_id=read.optional_text("refundId"),
            payment_id=payment_id,
            order_id=order_id,
            user_id=user_id,
            amount_minor=amount,
            amount_refunded_minor=refunded,
            currency=currency,
            status=refund_status(raw_status, str_or_none(attribute)),
            payment_hint=payment_status_hint_from_refund(raw_status),
            occurred_at=occurred_at,
        )
    if topic in _CHECKOUT_TOPICS:
        return CheckoutUpsert(
            event_id=event_id,
            provider=provider,
            session_id=object_id,
            order_id=order_id,
            user_id=user_id,
            payment_id=payment_id,
            amount_minor=amount,
            currency=currency,
            status=checkout_status_for_event(topic),
            occurred_at=occurred_at,
        )
    if topic == _INVOICE_TOPIC:
        return InvoiceUpsert(
            event_id=event_id,
            provider=provider,
            invoice_id=object_id,
            order_id=order_id,
            user_id=user_id,
            payment_id=payment_id,
            amount_minor=amount,
            currency=currency,
            status=invoice_status(raw_status),
            occurred_at=occurred_at,
        )
    return SubscriptionUpsert(
        event_id=event_id,
        provider=provider,
        subscription_id=object_id,
        user_id=user_id,
        amount_minor=amount,
        currency=currency,
        status=subscription_status(raw_status),
        occurred_at=occurred_at,
    )


def plan_order_snapshots(events: Sequence[Mapping[str, Any]]) -> OrderSnapshots:
    """The newest snapshot per order among decoded ``OrderLifecycleEvent`` records
    (highest ``revision``, then event id), sorted by order id, and every event id.

    ``order.payment_orphaned`` records (revision 0, no status) are not snapshots of an
    order: the caller leaves them out, and they are refused here.

    :raises ProjectionInputError: a missing or mistyped field, an unknown status, a
        revision below 1 (``event_id`` names the record).
    """
    newest: dict[str, OrderUpsert] = {}
    event_ids: set[str] = set()
    for record in events:
        if not isinstance(record, Mapping):
            raise ProjectionInputError(
                "an order lifecycle record must be a mapping", event_id=None, field=None
            )
        upsert = _order_upsert(RecordReader(record))
        event_ids.add(upsert.last_event_id)
        kept = newest.get(upsert.order_id)
        if kept is None or (upsert.revision, upsert.last_event_id) > (
            kept.revision,
            kept.last_event_id,
        ):
            newest[upsert.order_id] = upsert
    return OrderSnapshots(
        orders=[newest[order_id] for order_id in sorted(newest)], event_ids=sorted(event_ids)
    )


def _order_upsert(read: RecordReader) -> OrderUpsert:
    record = read.record
    status = read.text("status")
    if status not in ORDER_STATUSES:
        raise read.fail("status", f"{status!r} is not an order status")
    revision = record.get("revision")
    if type(revision) is not int or revision < 1:
        raise read.fail("revision", "must be an integer >= 1 (a snapshot's revision)")
    refunded = read.amount("refundedMinor")
    if refunded is None:
        raise read.fail("refundedMinor", "must be an integer (minor units)")
    created_at = record.get("createdAt")
    try:
        created = None if created_at is None else timestamp(created_at)
    except (TypeError, ValueError, OverflowError):
        raise read.fail(
            "createdAt", "must be milliseconds since the epoch, an aware datetime or null"
        ) from None
    return OrderUpsert(
        order_id=read.text("orderId"),
        user_id=read.optional_text("userId"),
        amount_minor=read.amount("amountMinor"),
        currency=read.optional_text("currency"),
        status=status,
        refunded_minor=refunded,
        payment_provider=read.optional_text("paymentProvider"),
        payment_intent_id=read.optional_text("paymentIntentId"),
        client_secret=read.optional_text("clientSecret"),
        items=_order_items(read),
        provider_ids=read.text_list("providerIds"),
        revision=revision,
        last_event_id=read.text("eventId"),
        last_event_type=read.text("eventType"),
        last_reason=read.optional_text("reason"),
        created_at=created,
        updated_at=read.occurred_at(),
    )


def _order_items(read: RecordReader) -> list[dict[str, Any]]:
    items = read.record.get("items")
    if items is None:
        return []
    if not isinstance(items, list | tuple):
        raise read.fail("items", "must be a list")
    shaped: list[dict[str, Any]] = []
    for item in items:
        product = item.get("productId") if isinstance(item, Mapping) else None
        quantity = item.get("quantity") if isinstance(item, Mapping) else None
        if not isinstance(product, str) or type(quantity) is not int:
            raise read.fail("items", "must hold {productId: string, quantity: int} objects")
        shaped.append({"productId": product, "quantity": quantity})
    return shaped
