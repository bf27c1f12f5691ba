"""Typed upserts as SQL parameters, grouped into the statements of one batch.

Pure (no connection): :func:`billing_statements` turns a ``BillingUpserts`` batch into
``(statement, parameter sets)`` groups in one fixed order, plus the refund follow-ups
and the advisory-lock keys of the payments they move.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from connectors.postgres.guards import (
    CHECKOUT_UPSERT,
    CLAIM_ONLY,
    INVOICE_UPSERT,
    PAYMENT_UPSERT,
    REFUND_UPSERT,
    SUBSCRIPTION_UPSERT,
)
from schemas.statuses import WebhookStatus
from schemas.upserts import (
    BillingUpserts,
    CheckoutUpsert,
    InvoiceUpsert,
    OrderUpsert,
    PaymentUpsert,
    RefundUpsert,
    SubscriptionUpsert,
    WebhookUpsert,
)

__all__ = ["BillingStatements", "billing_statements", "order_params", "webhook_params"]

Params = dict[str, Any]


@dataclass(frozen=True, slots=True)
class BillingStatements:
    """The statements of one billing batch.

    ``gated`` runs first, group by group, in the order every batch uses (payments,
    refunds, refund claims, checkouts, invoices, subscriptions), so concurrent batches
    mostly lock rows in the same order; a deadlock still possible across tables comes
    out as a ``TransientError``. ``refund_updates`` then move each refunded payment,
    under the advisory locks ``lock_keys`` (sorted) taken before anything else.
    """

    gated: list[tuple[sql.Composed, list[Params]]] = field(default_factory=list)
    refund_updates: list[Params] = field(default_factory=list)
    lock_keys: list[int] = field(default_factory=list)


def billing_statements(batch: BillingUpserts, consumer: str) -> BillingStatements:
    """Group ``batch`` by statement, every parameter set carrying ``consumer``."""
    refunds = [_refund(consumer, u) for u in batch.refunds]
    groups: list[tuple[sql.Composed, list[Params]]] = [
        (PAYMENT_UPSERT, [_payment(consumer, u) for u in batch.payments]),
        (REFUND_UPSERT, [p for p in refunds if p["object_id"] is not None]),
        # A refund without a refund id (Stripe charge.refunded with no expanded refund)
        # has no refund row to write; it only claims the event and moves the payment.
        (CLAIM_ONLY, [p for p in refunds if p["object_id"] is None]),
        (CHECKOUT_UPSERT, [_checkout(consumer, u) for u in batch.checkouts]),
        (INVOICE_UPSERT, [_invoice(consumer, u) for u in batch.invoices]),
        (SUBSCRIPTION_UPSERT, [_subscription(consumer, u) for u in batch.subscriptions]),
    ]
    updates = sorted(
        (p for p in refunds if p["payment_id"] is not None),
        key=lambda p: (p["provider"], p["payment_id"], p["event_id"]),
    )
    return BillingStatements(
        gated=[(statement, params) for statement, params in groups if params],
        refund_updates=updates,
        lock_keys=sorted({_payment_lock_key(p["provider"], p["payment_id"]) for p in updates}),
    )


# One function per upsert: the parameter names are the statements' (guards.py).


def _payment(consumer: str, u: PaymentUpsert) -> Params:
    return {
        "consumer": consumer,
        "event_id": u.event_id,
        "provider": u.provider,
        "object_id": u.payment_id,
        "order_id": u.order_id,
        "user_id": u.user_id,
        "amount_minor": u.amount_minor,
        "currency": u.currency,
        "status": str(u.status),
        "occurred_at": u.occurred_at,
    }


def _refund(consumer: str, u: RefundUpsert) -> Params:
    return {
        "consumer": consumer,
        "event_id": u.event_id,
        "provider": u.provider,
        "object_id": u.refund_id,
        "payment_id": u.payment_id,
        "order_id": u.order_id,
        "user_id": u.user_id,
        "amount_minor": u.amount_minor,
        "amount_refunded_minor": u.amount_refunded_minor,
        "currency": u.currency,
        "status": str(u.status),
        "payment_hint": None if u.payment_hint is None else str(u.payment_hint),
        "occurred_at": u.occurred_at,
    }


def _checkout(consumer: str, u: CheckoutUpsert) -> Params:
    return {
        "consumer": consumer,
        "event_id": u.event_id,
        "provider": u.provider,
        "object_id": u.session_id,
        "order_id": u.order_id,
        "user_id": u.user_id,
        "payment_id": u.payment_id,
        "amount_minor": u.amount_minor,
        "currency": u.currency,
        "status": str(u.status),
        "occurred_at": u.occurred_at,
    }


def _invoice(consumer: str, u: InvoiceUpsert) -> Params:
    return {
        "consumer": consumer,
        "event_id": u.event_id,
        "provider": u.provider,
        "object_id": u.invoice_id,
        "order_id": u.order_id,
        "user_id": u.user_id,
        "payment_id": u.payment_id,
        "amount_minor": u.amount_minor,
        "currency": u.currency,
        "status": str(u.status),
        "occurred_at": u.occurred_at,
    }


def _subscription(consumer: str, u: SubscriptionUpsert) -> Params:
    return {
        "consumer": consumer,
        "event_id": u.event_id,
        "provider": u.provider,
        "object_id": u.subscription_id,
        "user_id": u.user_id,
        "amount_minor": u.amount_minor,
        "currency": u.currency,
        "status": str(u.status),
        "occurred_at": u.occurred_at,
    }


def _payment_lock_key(provider: str, payment_id: str) -> int:
    digest = hashlib.blake2b(
        f"sluice.payment-refunds\0{provider}\0{payment_id}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def order_params(u: OrderUpsert) -> Params:
    return {
        "order_id": u.order_id,
        "user_id": u.user_id,
        "amount_minor": u.amount_minor,
        "currency": u.currency,
        "status": u.status,
        "refunded_minor": u.refunded_minor,
        "payment_provider": u.payment_provider,
        "payment_intent_id": u.payment_intent_id,
        "client_secret": u.client_secret,
        "items": Jsonb(list(u.items)),
        "provider_ids": list(u.provider_ids),
        "revision": u.revision,
        "last_event_id": u.last_event_id,
        "last_event_type": u.last_event_type,
        "last_reason": u.last_reason,
        "created_at": u.created_at,
        "updated_at": u.updated_at,
    }


def webhook_params(row: WebhookUpsert) -> Params:
    return {
        "provider": row.provider,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "signature": row.signature,
        "raw_body": bytes(row.raw_body),
        "content_type": row.content_type,
        "correlation_id": row.correlation_id,
        "received_at": row.received_at,
        "processed_at": row.processed_at,
        "status": str(WebhookStatus(row.status)),
        "reason": row.reason,
    }
