"""The orders upsert, the ``processed_events`` record and the reads' SELECTs."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Final

from psycopg import sql

from connectors.postgres.rows import (
    CheckoutSession,
    Invoice,
    OrderRow,
    Payment,
    Refund,
    Subscription,
    WebhookEvent,
)

__all__ = [
    "ORDER_UPSERT",
    "RECORD_PROCESSED",
    "SELECT_CHECKOUT",
    "SELECT_INVOICE",
    "SELECT_ORDER",
    "SELECT_PAYMENT",
    "SELECT_PAYMENTS_FOR_ORDER",
    "SELECT_PROCESSED",
    "SELECT_REFUND",
    "SELECT_REFUNDS_FOR_PAYMENT",
    "SELECT_SUBSCRIPTION",
    "SELECT_WEBHOOK",
]


# Orders: a snapshot replaces the row only when its revision is higher, so any order
# and any repetition of snapshots ends with the newest one. Returns 1 when written.
_ORDER_COLUMNS: Final = (
    ("order_id", "text"),
    ("user_id", "text"),
    ("amount_minor", "bigint"),
    ("currency", "text"),
    ("status", "text"),
    ("refunded_minor", "bigint"),
    ("payment_provider", "text"),
    ("payment_intent_id", "text"),
    ("client_secret", "text"),
    ("items", "jsonb"),
    ("provider_ids", "text[]"),
    ("revision", "bigint"),
    ("last_event_id", "text"),
    ("last_event_type", "text"),
    ("last_reason", "text"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
)
ORDER_UPSERT: Final = sql.SQL(
    "WITH upsert AS ("
    "INSERT INTO orders AS t ({columns}) VALUES ({values}) "
    "ON CONFLICT (order_id) DO UPDATE SET {sets} "
    "WHERE t.revision < EXCLUDED.revision RETURNING 1) "
    "SELECT count(*) FROM upsert"
).format(
    columns=sql.SQL(", ").join(sql.Identifier(name) for name, _ in _ORDER_COLUMNS),
    values=sql.SQL(", ").join(
        sql.SQL("%({})s::{}").format(sql.SQL(name), sql.SQL(kind)) for name, kind in _ORDER_COLUMNS
    ),
    sets=sql.SQL(", ").join(
        sql.SQL("{c} = {v}").format(
            c=sql.Identifier(name),
            # A snapshot always has createdAt; never forget a known one all the same.
            v=sql.SQL("COALESCE(EXCLUDED.created_at, t.created_at)")
            if name == "created_at"
            else sql.SQL("EXCLUDED.{}").format(sql.Identifier(name)),
        )
        for name, _ in _ORDER_COLUMNS
        if name != "order_id"
    ),
)
RECORD_PROCESSED: Final = sql.SQL(
    "INSERT INTO processed_events (consumer, event_id) "
    "SELECT %s::text, e FROM unnest(%s::text[]) AS e ON CONFLICT DO NOTHING"
)


def _select(row_type: type[Any], table: str, where: str) -> sql.Composed:
    columns = sql.SQL(", ").join(sql.Identifier(f.name) for f in fields(row_type))
    return sql.SQL("SELECT {columns} FROM {table} WHERE ").format(
        columns=columns, table=sql.Identifier(table)
    ) + sql.SQL(where)  # where: a constant of this module, never a value


SELECT_PAYMENT: Final = _select(Payment, "payments", "provider = %s AND provider_payment_id = %s")
SELECT_PAYMENTS_FOR_ORDER: Final = _select(
    Payment, "payments", "order_id = %s ORDER BY created_at, provider, provider_payment_id"
)
SELECT_REFUND: Final = _select(Refund, "refunds", "provider = %s AND refund_id = %s")
SELECT_REFUNDS_FOR_PAYMENT: Final = _select(
    Refund, "refunds", "provider = %s AND payment_id = %s ORDER BY created_at, refund_id"
)
SELECT_INVOICE: Final = _select(Invoice, "invoices", "provider = %s AND invoice_id = %s")
SELECT_SUBSCRIPTION: Final = _select(
    Subscription, "subscriptions", "provider = %s AND subscription_id = %s"
)
SELECT_CHECKOUT: Final = _select(
    CheckoutSession, "checkout_sessions", "provider = %s AND session_id = %s"
)
SELECT_WEBHOOK: Final = _select(WebhookEvent, "webhook_events", "provider = %s AND event_id = %s")
SELECT_ORDER: Final = _select(OrderRow, "orders", "order_id = %s")
SELECT_PROCESSED: Final = sql.SQL(
    "SELECT EXISTS (SELECT 1 FROM processed_events WHERE consumer = %s AND event_id = %s)"
)
