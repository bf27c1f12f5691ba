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
from schemas.upserts import BillingUpserts, OrderUpsert, RefundUpsert, WebhookUpsert

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
    base = {"consumer": consumer}
    refunds = [_refund_params(upsert, base) for upsert in batch.refunds]
    groups: list[tuple[sql.Composed, list[Params]]] = [
        (
            PAYMENT_UPSERT,
            [{**base, **_fields(u), "object_id": u.payment_id} for u in batch.payments],
        ),
        (REFUND_UPSERT, [p for p in refunds if p["object_id"] is not None]),
        # A refund without a refund id (Stripe charge.refunded with no expanded refund)
        # has no refund row to write; it only claims the event and moves the payment.
        (CLAIM_ONLY, [p for p in refunds if p["object_id"] is None]),
        (
            CHECKOUT_UPSERT,
            [{**base, **_fields(u), "object_id": u.session_id} for u in batch.checkouts],
        ),
        (
            INVOICE_UPSERT,
            [{**base, **_fields(u), "object_id": u.invoice_id} for u in batch.invoices],
        ),
        (
            SUBSCRIPTION_UPSERT,
            [{**base, **_fields(u), "object_id": u.subscription_id} for u in batch.subscriptions],
        ),
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


def _fields(upsert: Any) -> Params:
    """The fields of a slotted upsert dataclass, statuses as plain strings."""
    params = {name: getattr(upsert, name) for name in upsert.__slots__}
    params["status"] = str(params["status"])
    params.setdefault("order_id", None)
    params.setdefault("payment_id", None)
    return params


def _refund_params(upsert: RefundUpsert, base: Params) -> Params:
    params = {**base, **_fields(upsert), "object_id": upsert.refund_id}
    hint = upsert.payment_hint
    params["payment_hint"] = None if hint is None else str(hint)
    return params


def _payment_lock_key(provider: str, payment_id: str) -> int:
    digest = hashlib.blake2b(
        f"sluice.payment-refunds\0{provider}\0{payment_id}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def order_params(upsert: OrderUpsert) -> Params:
    params = {name: getattr(upsert, name) for name in OrderUpsert.__slots__}
    params["items"] = Jsonb(list(upsert.items))
    params["provider_ids"] = list(upsert.provider_ids)
    return params


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
