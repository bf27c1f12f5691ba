"""The rows the projection reads back: one frozen dataclass per table.

Field names are the tables' column names (the SELECTs are generated from them).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CheckoutSession",
    "Invoice",
    "OrderRow",
    "Payment",
    "Refund",
    "Subscription",
    "WebhookEvent",
]


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A ``webhook_events`` row."""

    provider: str
    event_id: str
    event_type: str
    signature: str | None
    raw_body: bytes
    content_type: str
    correlation_id: str | None
    received_at: dt.datetime
    processed_at: dt.datetime | None
    status: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class Payment:
    """A ``payments`` row; ``last_event_*`` name the event that last moved its status."""

    provider: str
    provider_payment_id: str
    order_id: str | None
    user_id: str | None
    amount_minor: int | None
    currency: str | None
    status: str
    amount_refunded_minor: int
    last_event_id: str
    last_event_at: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Refund:
    """A ``refunds`` row."""

    provider: str
    refund_id: str
    payment_id: str | None
    order_id: str | None
    amount_minor: int | None
    currency: str | None
    status: str
    last_event_id: str
    last_event_at: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Invoice:
    """An ``invoices`` row."""

    provider: str
    invoice_id: str
    order_id: str | None
    user_id: str | None
    payment_id: str | None
    amount_minor: int | None
    currency: str | None
    status: str
    last_event_id: str
    last_event_at: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Subscription:
    """A ``subscriptions`` row; ``last_event_at`` orders its events (newest wins)."""

    provider: str
    subscription_id: str
    user_id: str | None
    amount_minor: int | None
    currency: str | None
    status: str
    last_event_id: str
    last_event_at: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    """A ``checkout_sessions`` row."""

    provider: str
    session_id: str
    order_id: str | None
    user_id: str | None
    payment_id: str | None
    amount_minor: int | None
    currency: str | None
    status: str
    last_event_id: str
    last_event_at: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class OrderRow:
    """An ``orders`` row: the newest snapshot of an order the join published.

    ``items`` are ``{"productId", "quantity"}`` objects; ``last_event_*`` and
    ``last_reason`` name the lifecycle event whose snapshot this is. ``client_secret``
    is kept out of ``repr`` so a logged row cannot leak it.
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
    items: list[dict[str, Any]]
    provider_ids: list[str]
    revision: int
    last_event_id: str
    last_event_type: str
    last_reason: str | None
    created_at: dt.datetime | None
    updated_at: dt.datetime
