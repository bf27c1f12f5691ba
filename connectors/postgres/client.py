"""The Postgres projection connector: one pool, narrow typed writes and reads.

:class:`PostgresProjection` is an async context manager over a psycopg 3
``AsyncConnectionPool``. It writes the typed upserts the domain planned
(``schemas/upserts.py``) and reads rows back; it decides no rule itself. Its writes are
idempotent and batched, and safe with out-of-order events and concurrent writers:

- every billing upsert is an ``INSERT ... ON CONFLICT DO UPDATE`` whose status guard is
  evaluated *in SQL* against the row as it is now (``guards.py``, generated from the
  rank tables of ``schemas/statuses.py``);
- a batch is one transaction: the ``processed_events`` entry of an event is written by
  the same statement that applies it, and an event already in ``processed_events`` for
  that consumer is skipped;
- a batch is sent in pipeline mode: a handful of round trips whatever its size (the
  statements, the commit, and the pool's connection check);
- ``orders`` holds snapshots: a row is replaced only by a higher ``revision`` (the
  join's counter), so replays and late records never overwrite newer state.

Driver errors come out as :class:`~base.errors.TransientError` or
:class:`~base.errors.PermanentError` (``errors.py``); anything else (a missing table,
an SQL bug) is not translated and crashes loudly. The connector never retries: the
caller's retry topics do. While the server is down calls fail within ``timeout``
seconds; the pool reconnects by itself once it is back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Final, Literal, Self, TypeVar, get_args

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import TupleRow, class_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from base.sinks import Sink, sink_call
from connectors.postgres.errors import translate_error
from connectors.postgres.guards import LOCK_PAYMENTS, PAYMENT_REFUND_UPDATE, WEBHOOK_UPSERT
from connectors.postgres.params import billing_statements, order_params, webhook_params
from connectors.postgres.rows import (
    CheckoutSession,
    Invoice,
    OrderRow,
    Payment,
    Refund,
    Subscription,
    WebhookEvent,
)
from connectors.postgres.statements import (
    ORDER_UPSERT,
    RECORD_PROCESSED,
    SELECT_CHECKOUT,
    SELECT_INVOICE,
    SELECT_ORDER,
    SELECT_PAYMENT,
    SELECT_PAYMENTS_FOR_ORDER,
    SELECT_PROCESSED,
    SELECT_REFUND,
    SELECT_REFUNDS_FOR_PAYMENT,
    SELECT_SUBSCRIPTION,
    SELECT_WEBHOOK,
)
from schemas.upserts import BillingUpserts, OrderSnapshots, WebhookUpsert

__all__ = ["PROJECTION_TABLES", "PostgresProjection", "ProjectionTable"]

_R = TypeVar("_R")

ProjectionTable = Literal[
    "webhook_events",
    "payments",
    "refunds",
    "invoices",
    "subscriptions",
    "checkout_sessions",
    "orders",
    "processed_events",
]
PROJECTION_TABLES: Final[frozenset[str]] = frozenset(get_args(ProjectionTable))
"""The tables :meth:`PostgresProjection.count` accepts."""


# -- the connector ---------------------------------------------------------------------


class PostgresProjection:
    """Writes and reads the webhook and billing projections. Use as an async context
    manager, or call :meth:`start` and :meth:`close`.

    :param dsn: a libpq connection string or URL (``DATABASE_URL``).
    :param min_size: connections kept open; :param max_size: the most ever opened.
    :param timeout: seconds a call waits for a working connection before it fails with
        ``TransientError`` — the bound on calls while the server is down.
    :param reconnect_timeout: seconds the pool retries a lost connection (with backoff)
        before giving up and starting afresh on the next call. Kept short so the first
        call after an outage waits for at most a few seconds of backoff.
    :param statement_timeout: server-side limit per statement; exceeding it is transient.

    One instance is shared by the tasks of one event loop; calls may run concurrently
    (each takes its own pooled connection).
    """

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 5.0,
        reconnect_timeout: float = 5.0,
        statement_timeout: float = 30.0,
        name: str = "sluice-projection",
    ) -> None:
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout
        self._reconnect_timeout = reconnect_timeout
        self._statement_timeout_ms = max(1, round(statement_timeout * 1000))
        self._name = name
        self._pool: AsyncConnectionPool[AsyncConnection[TupleRow]] | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the pool and wait for its first connection (at most ``timeout`` s).

        Idempotent. Raises ``TransientError`` (and holds nothing open) when the server
        cannot be reached.
        """
        if self._pool is not None:
            return
        pool: AsyncConnectionPool[AsyncConnection[TupleRow]] = AsyncConnectionPool(
            self._dsn,
            min_size=self._min_size,
            max_size=self._max_size,
            open=False,
            check=AsyncConnectionPool.check_connection,
            timeout=self._timeout,
            reconnect_timeout=self._reconnect_timeout,
            name=self._name,
            kwargs={
                "autocommit": True,
                "application_name": self._name,
                "options": f"-c statement_timeout={self._statement_timeout_ms}",
                # A server that vanishes without closing its sockets is noticed, too.
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
            },
        )
        try:
            await pool.open(wait=True, timeout=self._timeout)
        except BaseException as exc:
            await pool.close()
            error = translate_error(exc)
            if error is not None:
                raise error from exc
            raise
        self._pool = pool

    async def close(self) -> None:
        """Close every connection (waits up to 5 s for calls in flight). Idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close(timeout=5.0)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[TupleRow]]:
        if self._pool is None:
            raise RuntimeError("PostgresProjection used before start() or after close()")
        try:
            async with self._pool.connection(timeout=self._timeout) as conn:
                yield conn
        except (psycopg.Error, PoolTimeout, TooManyRequests) as exc:
            error = translate_error(exc)
            if error is None:
                raise
            raise error from exc

    def connection(self) -> AbstractAsyncContextManager[AsyncConnection[TupleRow]]:
        """A pooled autocommit connection whose driver errors come out translated, for
        the sibling stores of this package (``leads.py``), which share this pool."""
        return self._connection()

    async def ping(self) -> None:
        """Run one trivial query. Raises ``TransientError`` when the server is unusable."""
        async with self._connection() as conn:
            await conn.execute("SELECT 1")

    # -- writes ------------------------------------------------------------------------

    @sink_call(Sink.POSTGRES)
    async def record_webhooks(self, rows: Sequence[WebhookUpsert]) -> None:
        """Insert raw webhooks, or move their status forward; one transaction per call.

        Idempotent: a row exists once per (provider, event_id); a repeat never rewrites
        ``raw_body`` or the other received fields, and the status only moves up
        ``RECEIVED < FAILED < IGNORED < PROCESSED`` (``reason`` and ``processed_at`` move
        with it). A status row may arrive before its ``RECEIVED`` row.

        :raises TransientError: database unavailable (nothing was written).
        :raises PermanentError: a row violates the table's constraints.
        """
        if not rows:
            return
        params = [webhook_params(row) for row in rows]
        async with self._connection() as conn, conn.pipeline(), conn.transaction():
            await conn.cursor().executemany(WEBHOOK_UPSERT, params)

    @sink_call(Sink.POSTGRES)
    async def write_billing(self, batch: BillingUpserts, consumer: str) -> int:
        """Write one batch of billing upserts; returns how many events were newly applied.

        All in one transaction, pipelined (round trips do not grow with the batch): each
        upsert is claimed in ``processed_events(consumer, event_id)`` by the very
        statement that applies it, so an event already processed by ``consumer`` (or
        repeated within the batch) is skipped. Per upsert:

        - :class:`PaymentUpsert` → ``payments``, status never regressing;
        - :class:`RefundUpsert` → ``refunds`` (when it has a refund id), then its payment
          moves to ``PARTIALLY_REFUNDED``/``REFUNDED`` by the larger of its succeeded
          refunds' sum and ``amount_refunded_minor``, created with an unknown amount if
          it does not exist yet;
        - checkout sessions and invoices by rank; subscriptions by newest event.

        Idempotent and order-independent: any order and any repetition of the same
        upserts ends in the same rows. Safe against concurrent batches.

        :param consumer: the ``processed_events`` namespace, e.g. the agent's name.
        :raises TransientError: database unavailable, deadlock, serialization failure
            (nothing was written).
        :raises PermanentError: a value a CHECK constraint refused (negative amount,
            upper-case currency); nothing was written, and the message names the
            constraint but not the record: re-run records one by one to find it.
        """
        if not consumer:
            raise ValueError("consumer must be a non-empty string")
        plan = billing_statements(batch, consumer)
        if not plan.gated:
            return 0
        cursors = []
        async with self._connection() as conn:
            async with conn.pipeline(), conn.transaction():
                if plan.lock_keys:
                    await conn.execute(LOCK_PAYMENTS, (plan.lock_keys,))
                for statement, params in plan.gated:
                    cursor = conn.cursor()
                    await cursor.executemany(statement, params, returning=True)
                    cursors.append(cursor)
                if plan.refund_updates:
                    await conn.cursor().executemany(PAYMENT_REFUND_UPDATE, plan.refund_updates)
            applied = 0
            for cursor in cursors:
                applied += await _sum_results(cursor)
        return applied

    @sink_call(Sink.POSTGRES)
    async def write_order_snapshots(self, batch: OrderSnapshots, consumer: str) -> int:
        """Write order snapshots into ``orders``; returns how many rows were inserted or
        replaced.

        A snapshot is written only if its revision is higher than the stored row's
        (``ON CONFLICT ... WHERE t.revision < EXCLUDED.revision``): a replayed, repeated
        or late snapshot changes nothing. Every id of ``batch.event_ids`` is recorded in
        ``processed_events(consumer, event_id)`` in the same transaction. The revision,
        not ``processed_events``, decides what is written, so truncating ``orders`` and
        replaying ``orders.lifecycle`` rebuilds the table. One transaction, pipelined.

        :param consumer: the ``processed_events`` namespace, e.g. the agent's name.
        :raises TransientError: database unavailable, deadlock (nothing was written).
        :raises PermanentError: the database refused a value (nothing was written).
        """
        if not consumer:
            raise ValueError("consumer must be a non-empty string")
        if not batch.orders:
            return 0
        upserts = [order_params(upsert) for upsert in batch.orders]
        async with self._connection() as conn:
            async with conn.pipeline(), conn.transaction():
                cursor = conn.cursor()
                await cursor.executemany(ORDER_UPSERT, upserts, returning=True)
                await conn.execute(RECORD_PROCESSED, (consumer, list(batch.event_ids)))
            return await _sum_results(cursor)

    # -- reads -------------------------------------------------------------------------

    @sink_call(Sink.POSTGRES)
    async def fetch_order(self, order_id: str) -> OrderRow | None:
        """The ``orders`` row of ``order_id``, or None. Raises ``TransientError``."""
        return await self._one(OrderRow, SELECT_ORDER, (order_id,))

    @sink_call(Sink.POSTGRES)
    async def payment(self, provider: str, payment_id: str) -> Payment | None:
        """The payment (provider, provider_payment_id), or None. Raises ``TransientError``."""
        return await self._one(Payment, SELECT_PAYMENT, (provider, payment_id))

    @sink_call(Sink.POSTGRES)
    async def payments_for_order(self, order_id: str) -> list[Payment]:
        """Every payment of an order, oldest first. Raises ``TransientError``."""
        return await self._all(Payment, SELECT_PAYMENTS_FOR_ORDER, (order_id,))

    @sink_call(Sink.POSTGRES)
    async def refund(self, provider: str, refund_id: str) -> Refund | None:
        """The refund (provider, refund_id), or None. Raises ``TransientError``."""
        return await self._one(Refund, SELECT_REFUND, (provider, refund_id))

    @sink_call(Sink.POSTGRES)
    async def refunds_for_payment(self, provider: str, payment_id: str) -> list[Refund]:
        """Every refund of a payment, oldest first. Raises ``TransientError``."""
        return await self._all(Refund, SELECT_REFUNDS_FOR_PAYMENT, (provider, payment_id))

    @sink_call(Sink.POSTGRES)
    async def invoice(self, provider: str, invoice_id: str) -> Invoice | None:
        """The invoice (provider, invoice_id), or None. Raises ``TransientError``."""
        return await self._one(Invoice, SELECT_INVOICE, (provider, invoice_id))

    @sink_call(Sink.POSTGRES)
    async def subscription(self, provider: str, subscription_id: str) -> Subscription | None:
        """The subscription (provider, subscription_id), or None. Raises ``TransientError``."""
        return await self._one(Subscription, SELECT_SUBSCRIPTION, (provider, subscription_id))

    @sink_call(Sink.POSTGRES)
    async def checkout_session(self, provider: str, session_id: str) -> CheckoutSession | None:
        """The checkout session (provider, session_id), or None. Raises ``TransientError``."""
        return await self._one(CheckoutSession, SELECT_CHECKOUT, (provider, session_id))

    @sink_call(Sink.POSTGRES)
    async def webhook_event(self, provider: str, event_id: str) -> WebhookEvent | None:
        """The raw webhook (provider, event_id), or None. Raises ``TransientError``."""
        return await self._one(WebhookEvent, SELECT_WEBHOOK, (provider, event_id))

    @sink_call(Sink.POSTGRES)
    async def is_processed(self, consumer: str, event_id: str) -> bool:
        """Whether ``consumer`` has applied ``event_id``. Raises ``TransientError``."""
        async with self._connection() as conn:
            cursor = await conn.execute(SELECT_PROCESSED, (consumer, event_id))
            row = await cursor.fetchone()
        return bool(row and row[0])

    @sink_call(Sink.POSTGRES)
    async def count(self, table: ProjectionTable) -> int:
        """Rows in one of :data:`PROJECTION_TABLES` (tests, operators). Raises
        ``ValueError`` for any other name, ``TransientError`` when unavailable."""
        if table not in PROJECTION_TABLES:
            raise ValueError(f"not a projection table: {table!r}")
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        async with self._connection() as conn:
            cursor = await conn.execute(query)
            row = await cursor.fetchone()
        return int(row[0]) if row is not None else 0

    async def _one(
        self, row_type: type[_R], query: sql.Composed, args: tuple[str, ...]
    ) -> _R | None:
        async with self._connection() as conn:
            cursor = conn.cursor(row_factory=class_row(row_type))
            await cursor.execute(query, args)
            return await cursor.fetchone()

    async def _all(
        self, row_type: type[_R], query: sql.Composed, args: tuple[str, ...]
    ) -> list[_R]:
        async with self._connection() as conn:
            cursor = conn.cursor(row_factory=class_row(row_type))
            await cursor.execute(query, args)
            return await cursor.fetchall()


async def _sum_results(cursor: psycopg.AsyncCursor[TupleRow]) -> int:
    """The sum of the one-column results of an ``executemany(..., returning=True)``."""
    total = 0
    while True:
        row = await cursor.fetchone()
        total += int(row[0]) if row is not None else 0
        if not cursor.nextset():
            return total
