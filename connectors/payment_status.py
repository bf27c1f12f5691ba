"""Read an order's payment status from the Postgres projection (for the ingress).

``GET /internal/v1/payments/{orderId}`` answers from the ``orders`` row the join's
lifecycle events keep current and the ``payments`` rows linked to it by ``order_id``
(DESIGN §6). Two queries, read-only: the order first, its payments only if it exists.

Connections come from a :class:`connectors.postgres.read_pool.ReadPool`: opened on first
use, so the ingress starts without Postgres; driver errors come out as ``TransientError``
(the route answers 503).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from connectors.postgres.read_pool import ReadPool

__all__ = ["OrderPayment", "OrderPaymentStatus", "PaymentStatusStore"]

_ORDER = """
SELECT order_id, status, amount_minor, currency, refunded_minor, payment_provider,
       payment_intent_id, client_secret, updated_at
FROM orders
WHERE order_id = %s
"""

_PAYMENTS = """
SELECT provider, provider_payment_id, status, amount_minor, currency,
       amount_refunded_minor, updated_at
FROM payments
WHERE order_id = %s
ORDER BY updated_at, provider, provider_payment_id
"""


@dataclass(frozen=True, slots=True)
class OrderPayment:
    """A ``payments`` row linked to the order."""

    provider: str
    provider_payment_id: str
    status: str
    amount_minor: int | None
    currency: str | None
    refunded_minor: int
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class OrderPaymentStatus:
    """The ``orders`` row and its payments. ``client_secret`` is kept out of ``repr``, so
    a logged value cannot leak it; it is only ever sent to the API caller."""

    order_id: str
    status: str
    amount_minor: int | None
    currency: str | None
    refunded_minor: int
    payment_provider: str | None
    payment_intent_id: str | None
    client_secret: str | None = field(repr=False)
    updated_at: dt.datetime
    payments: tuple[OrderPayment, ...]


class PaymentStatusStore:
    """Reads order payment status through a small lazily opened connection pool."""

    def __init__(self, dsn: str) -> None:
        self._pool = ReadPool(dsn)

    async def order_status(self, order_id: str) -> OrderPaymentStatus | None:
        """The order's status and payments, or ``None`` when there is no such order.

        :raises TransientError: Postgres is unreachable or too slow.
        """
        async with self._pool.connection() as conn:
            cursor = await conn.execute(_ORDER, (order_id,))
            order = await cursor.fetchone()
            if order is None:
                return None
            cursor = await conn.execute(_PAYMENTS, (order_id,))
            payments = await cursor.fetchall()
        return OrderPaymentStatus(
            order_id=order[0],
            status=order[1],
            amount_minor=order[2],
            currency=order[3],
            refunded_minor=order[4],
            payment_provider=order[5],
            payment_intent_id=order[6],
            client_secret=order[7],
            updated_at=order[8],
            payments=tuple(
                OrderPayment(
                    provider=row[0],
                    provider_payment_id=row[1],
                    status=row[2],
                    amount_minor=row[3],
                    currency=row[4],
                    refunded_minor=row[5],
                    updated_at=row[6],
                )
                for row in payments
            ),
        )

    async def close(self) -> None:
        """Close the pool, if it was ever opened. Idempotent; a later call reopens."""
        await self._pool.close()
