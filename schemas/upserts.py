"""The typed upserts of the Postgres projections: what one event writes to one table.

The contract between the rules that plan them (``streams.domain.projection``: a decoded
event in, typed upserts out) and the connector that writes them
(``connectors.postgres``: one idempotent, status-guarded SQL statement per kind). Values
only: every field is already validated and mapped to its projection status; nothing
here reads a record or talks to a database.

Every billing upsert is claim-gated: it is applied only if its ``event_id`` is newly
recorded in ``processed_events`` for the batch's consumer, by the same statement.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.statuses import (
    CheckoutStatus,
    InvoiceStatus,
    PaymentStatus,
    RefundStatus,
    SubscriptionStatus,
    WebhookStatus,
)

__all__ = [
    "BillingUpserts",
    "CheckoutUpsert",
    "InvoiceUpsert",
    "OrderSnapshots",
    "OrderUpsert",
    "PaymentUpsert",
    "RefundUpsert",
    "SubscriptionUpsert",
    "WebhookUpsert",
]


@dataclass(frozen=True, slots=True)
class WebhookUpsert:
    """One raw webhook to record, or a later status for it.

    ``processed_at`` defaults to the database's ``now()`` when ``status`` is past
    ``RECEIVED``. ``event_id`` is the provider's event id (the dedupe key).
    """

    provider: str
    event_id: str
    event_type: str
    raw_body: bytes
    content_type: str
    received_at: dt.datetime
    signature: str | None = None
    correlation_id: str | None = None
    status: WebhookStatus = WebhookStatus.RECEIVED
    reason: str | None = None
    processed_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class PaymentUpsert:
    """``billing.payment.{succeeded,failed,pending}`` → ``payments`` (provider,
    ``payment_id``); the status comes from the topic and never regresses."""

    event_id: str
    provider: str
    payment_id: str
    order_id: str | None
    user_id: str | None
    amount_minor: int | None
    currency: str | None
    status: PaymentStatus
    occurred_at: dt.datetime


@dataclass(frozen=True, slots=True)
class RefundUpsert:
    """``billing.payment.refunded`` → ``refunds`` (provider, ``refund_id``), then the
    payment (provider, ``payment_id``) moves by its refunded total.

    ``refund_id`` is ``None`` when the event names no refund (a Stripe
    ``charge.refunded`` without an expanded refund): only the payment moves.
    ``payment_hint`` is what the record's status says about the payment
    (``REFUNDED``/``PARTIALLY_REFUNDED``), if anything.
    """

    event_id: str
    provider: str
    refund_id: str | None
    payment_id: str | None
    order_id: str | None
    user_id: str | None
    amount_minor: int | None
    amount_refunded_minor: int | None
    currency: str | None
    status: RefundStatus
    payment_hint: PaymentStatus | None
    occurred_at: dt.datetime


@dataclass(frozen=True, slots=True)
class CheckoutUpsert:
    """``billing.checkout.*`` → ``checkout_sessions`` (provider, ``session_id``)."""

    event_id: str
    provider: str
    session_id: str
    order_id: str | None
    user_id: str | None
    payment_id: str | None
    amount_minor: int | None
    currency: str | None
    status: CheckoutStatus
    occurred_at: dt.datetime


@dataclass(frozen=True, slots=True)
class InvoiceUpsert:
    """``billing.invoice.updated`` → ``invoices`` (provider, ``invoice_id``)."""

    event_id: str
    provider: str
    invoice_id: str
    order_id: str | None
    user_id: str | None
    payment_id: str | None
    amount_minor: int | None
    currency: str | None
    status: InvoiceStatus
    occurred_at: dt.datetime


@dataclass(frozen=True, slots=True)
class SubscriptionUpsert:
    """``billing.subscription.updated`` → ``subscriptions`` (provider,
    ``subscription_id``); the newest event wins, not the highest rank."""

    event_id: str
    provider: str
    subscription_id: str
    user_id: str | None
    amount_minor: int | None
    currency: str | None
    status: SubscriptionStatus
    occurred_at: dt.datetime


@dataclass(frozen=True, slots=True)
class BillingUpserts:
    """The upserts of one batch of billing events, applied in one transaction.

    Each list is sorted (by provider, object id, event id) so concurrent batches take
    row locks in one order.
    """

    payments: Sequence[PaymentUpsert] = ()
    refunds: Sequence[RefundUpsert] = ()
    checkouts: Sequence[CheckoutUpsert] = ()
    invoices: Sequence[InvoiceUpsert] = ()
    subscriptions: Sequence[SubscriptionUpsert] = ()

    def __len__(self) -> int:
        return (
            len(self.payments)
            + len(self.refunds)
            + len(self.checkouts)
            + len(self.invoices)
            + len(self.subscriptions)
        )


@dataclass(frozen=True, slots=True)
class OrderUpsert:
    """An order snapshot for ``orders``: written only over a lower ``revision``.

    ``items`` are ``{"productId", "quantity"}`` objects. ``client_secret`` is kept out
    of ``repr`` so a logged upsert cannot leak it.
    """

    order_id: str
    user_id: str | None
    amount_minor: int | None
    currency: str | None
    status: str
    refunded_minor: int
    payment_provider: str | None
    payment_intent_id: str | None
    client_secret: str | None = field(repr=False)
    items: Sequence[dict[str, Any]]
    provider_ids: Sequence[str]
    revision: int
    last_event_id: str
    last_event_type: str
    last_reason: str | None
    created_at: dt.datetime | None
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class OrderSnapshots:
    """One batch of order snapshots: the newest per order (sorted by order id), and
    every event id of the batch (sorted), superseded ones included: all were handled."""

    orders: Sequence[OrderUpsert] = ()
    event_ids: Sequence[str] = ()
