"""A small, lazily opened, read-only connection pool for the ingress's status routes.

The pool is opened on first use, not at start-up: the ingress's one essential job is
webhooks into Kafka, and it must start (and keep serving them) whether or not Postgres
is up. A failed open holds nothing and is tried again on the next call. Driver errors
that may pass (server down, pool timeout) come out as ``TransientError`` (the routes
answer 503) via :func:`connectors.postgres.errors.translate_error`, whose messages name
no row values; anything else (a missing table: migrations not applied) is left to crash
loudly, as in :mod:`connectors.postgres`: reading a few rows is never bad input.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from base.errors import TransientError
from connectors.postgres.errors import translate_error

__all__ = ["ReadPool"]


class ReadPool:
    """Connections for reads, autocommit, with a statement timeout.

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

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[TupleRow]]:
        """A pooled connection; the queries run in the ``with`` body.

        :raises TransientError: Postgres is unreachable or too slow (on open or query).
        """
        pool = await self._open()
        try:
            async with pool.connection(timeout=self._timeout) as conn:
                yield conn
        except (psycopg.Error, PoolTimeout, TooManyRequests) as exc:
            _raise_transient(exc)
            raise

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
    """Raise the ``TransientError`` ``exc`` stands for, if it is one."""
    error = translate_error(exc)
    if isinstance(error, TransientError):
        raise error from exc
