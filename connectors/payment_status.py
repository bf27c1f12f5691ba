"""Read an order's payment status from the Postgres projection (for the ingress).

``GET /internal/v1/payments/{orderId}`` answers from the ``orders`` row the join's
lifecycle events keep current and the ``payments`` rows linked to it by ``order_id``
(DESIGN §6). Two queries, read-only: the order first, its payments only if it exists.

The pool is opened on first use, not at start-up: the ingress's one essential job is
webhooks into Kafka, and it must start (and keep serving them) whether or not Postgres
is up. A failed open holds nothing and is tried again on the next call. Driver errors
come out as ``TransientError`` (the route answers 503) via
:func:`connectors.postgres.errors.translate_error`; its messages name no row values.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from base.errors import TransientError
from connectors.postgres.errors import translate_error

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
    """Reads order payment status through a small lazily opened connection pool.

    :param timeout: seconds to wait for a connection (and for the first one, when the
        pool opens) before the call fails with ``TransientError``. Short: a caller is
        waiting on the other end, and 503 tells it to come back.
    """

    def __init__(
        self,
        dsn: str,
        *,
        max_size: int = 4,
        timeout: float = 3.0,
        statement_timeout: float = 5.0,
        name: str = "sluice-ingress",
    ) -> None:
        self._dsn = dsn
        self._max_size = max_size
        self._timeout = timeout
        self._statement_timeout_ms = max(1, round(statement_timeout * 1000))
        self._name = name
        self._pool: AsyncConnectionPool[AsyncConnection[TupleRow]] | None = None
        self._opening = asyncio.Lock()

    async def order_status(self, order_id: str) -> OrderPaymentStatus | None:
        """The order's status and payments, or ``None`` when there is no such order.

        :raises TransientError: Postgres is unreachable or too slow.
        """
        pool = await self._open()
        try:
            async with pool.connection(timeout=self._timeout) as conn:
                cursor = await conn.execute(_ORDER, (order_id,))
                order = await cursor.fetchone()
                if order is None:
                    return None
                cursor = await conn.execute(_PAYMENTS, (order_id,))
                payments = await cursor.fetchall()
        except (psycopg.Error, PoolTimeout, TooManyRequests) as exc:
            _raise_transient(exc)
            raise
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
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close(timeout=5.0)

    async def _open(self) -> AsyncConnectionPool[AsyncConnection[TupleRow]]:
        async with self._opening:  # one open at a time; the rest wait for its outcome
            if self._pool is not None:
                return self._pool
            pool: AsyncConnectionPool[AsyncConnection[TupleRow]] = AsyncConnectionPool(
                self._dsn,
                min_size=1,
                max_size=self._max_size,
                open=False,
                check=AsyncConnectionPool.check_connection,
                timeout=self._timeout,
                reconnect_timeout=self._timeout,
                name=self._name,
                kwargs={
                    "autocommit": True,
                    "application_name": self._name,
                    "connect_timeout": max(1, round(self._timeout)),
                    "options": f"-c statement_timeout={self._statement_timeout_ms}",
                },
            )
            try:
                await pool.open(wait=True, timeout=self._timeout)
            except BaseException as exc:
                await pool.close()
                _raise_transient(exc)
                raise
            self._pool = pool
            return pool


def _raise_transient(exc: BaseException) -> None:
    """Raise the ``TransientError`` ``exc`` stands for, if it is one (server down, pool
    timeout). Anything else (a missing table: migrations not applied) is left to crash
    loudly, as in :mod:`connectors.postgres`; reading two tables is never bad input."""
    error = translate_error(exc)
    if isinstance(error, TransientError):
        raise error from exc
