"""Read ``webhook_events`` (the raw webhooks and what became of them) for operators.

Two readers of one table (``connectors/migrations/0001_webhooks_and_billing.sql``):

- :meth:`WebhookLogStore.page`: the admin log (``GET /v1/admin/webhooks/logs``), newest
  first, filtered by provider, event type, status, event id and a ``received_at`` range,
  paged by keyset on ``(received_at, provider, event_id)`` (the primary key breaks ties
  between webhooks received in the same microsecond), so a page costs an index range scan
  however deep it is, and rows arriving meanwhile never shift a page;
- :meth:`WebhookLogStore.for_replay`: the stored raw webhooks to re-publish
  (``POST /v1/admin/webhooks/replay``, ``sluice replay``), with their bodies, oldest first.

Connections come from a :class:`connectors.postgres.read_pool.ReadPool`, opened on first
use (the ingress starts without Postgres); driver errors come out as ``TransientError``
(the routes answer 503).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from psycopg import sql

from base.errors import InvalidEvent
from connectors.postgres.read_pool import ReadPool

__all__ = [
    "LogCursor",
    "StoredWebhook",
    "WebhookLogEntry",
    "WebhookLogFilter",
    "WebhookLogPage",
    "WebhookLogStore",
    "decode_cursor",
    "encode_cursor",
]

_LOG_COLUMNS: Final = sql.SQL(
    "provider, event_id, event_type, status, reason, correlation_id, content_type, "
    "received_at, processed_at, octet_length(raw_body), signature IS NOT NULL"
)
_REPLAY_COLUMNS: Final = sql.SQL(
    "provider, event_id, event_type, signature, raw_body, content_type, correlation_id, received_at"
)


@dataclass(frozen=True, slots=True)
class WebhookLogFilter:
    """Which rows to list; every condition given must hold. ``since``/``until`` bound
    ``received_at`` to ``[since, until)`` and must be timezone-aware."""

    provider: str | None = None
    event_type: str | None = None
    status: str | None = None
    event_id: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class LogCursor:
    """The last row of a page: the next page starts after it (newest first)."""

    received_at: dt.datetime
    provider: str
    event_id: str


@dataclass(frozen=True, slots=True)
class WebhookLogEntry:
    """One ``webhook_events`` row as the log shows it (without its body)."""

    provider: str
    event_id: str
    event_type: str
    status: str
    reason: str | None
    correlation_id: str | None
    content_type: str
    received_at: dt.datetime
    processed_at: dt.datetime | None
    body_bytes: int
    signed: bool


@dataclass(frozen=True, slots=True)
class WebhookLogPage:
    entries: tuple[WebhookLogEntry, ...]
    next_cursor: LogCursor | None


@dataclass(frozen=True, slots=True)
class StoredWebhook:
    """A raw webhook as stored: what a replay rebuilds its ``RawWebhook`` record from."""

    provider: str
    event_id: str
    event_type: str
    signature: str | None
    raw_body: bytes
    content_type: str
    correlation_id: str | None
    received_at: dt.datetime


def encode_cursor(cursor: LogCursor) -> str:
    """An opaque, URL-safe page cursor."""
    text = json.dumps([cursor.received_at.isoformat(), cursor.provider, cursor.event_id])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> LogCursor:
    """The cursor :func:`encode_cursor` made.

    :raises InvalidEvent: (field ``cursor``) anything else.
    """
    bad = InvalidEvent("cursor must be the next cursor of a previous page", field="cursor")
    if len(text) > 2048:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        received, provider, event_id = json.loads(raw)
        at = dt.datetime.fromisoformat(received)
    except (binascii.Error, ValueError, TypeError):
        raise bad from None
    if not (isinstance(provider, str) and isinstance(event_id, str)) or at.tzinfo is None:
        raise bad
    return LogCursor(at, provider, event_id)


class WebhookLogStore:
    """Reads ``webhook_events`` through a small lazily opened connection pool."""

    def __init__(self, dsn: str) -> None:
        self._pool = ReadPool(dsn, name="sluice-admin")

    async def page(
        self, selection: WebhookLogFilter, *, limit: int, after: LogCursor | None = None
    ) -> WebhookLogPage:
        """Up to ``limit`` rows matching ``selection``, newest first, after ``after``.

        :raises TransientError: Postgres is unreachable or too slow.
        """
        conditions, params = _conditions(selection)
        if after is not None:
            conditions.append(sql.SQL("(received_at, provider, event_id) < (%s, %s, %s)"))
            params += [after.received_at, after.provider, after.event_id]
        query = sql.SQL(
            "SELECT {columns} FROM webhook_events {where} "
            "ORDER BY received_at DESC, provider DESC, event_id DESC LIMIT %s"
        ).format(columns=_LOG_COLUMNS, where=_where(conditions))
        async with self._pool.connection() as conn:
            cursor = await conn.execute(query, [*params, limit + 1])
            rows = await cursor.fetchall()
        entries = tuple(WebhookLogEntry(*row) for row in rows[:limit])
        next_cursor = None
        if len(rows) > limit:
            last = entries[-1]
            next_cursor = LogCursor(last.received_at, last.provider, last.event_id)
        return WebhookLogPage(entries, next_cursor)

    async def for_replay(
        self,
        provider: str,
        *,
        event_ids: Sequence[str] = (),
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        limit: int,
        after: tuple[dt.datetime, str] | None = None,
    ) -> list[StoredWebhook]:
        """The stored webhooks of ``provider``: those named by ``event_ids``, or those
        received in ``[since, until)``, oldest first, at most ``limit``, after ``after``
        (``received_at``, ``event_id``) for the next chunk of a range.

        :raises TransientError: Postgres is unreachable or too slow.
        """
        conditions: list[sql.Composable] = [sql.SQL("provider = %s")]
        params: list[Any] = [provider]
        if event_ids:
            conditions.append(sql.SQL("event_id = ANY(%s)"))
            params.append(list(event_ids))
        if since is not None:
            conditions.append(sql.SQL("received_at >= %s"))
            params.append(since)
        if until is not None:
            conditions.append(sql.SQL("received_at < %s"))
            params.append(until)
        if after is not None:
            conditions.append(sql.SQL("(received_at, event_id) > (%s, %s)"))
            params += [after[0], after[1]]
        query = sql.SQL(
            "SELECT {columns} FROM webhook_events {where} ORDER BY received_at, event_id LIMIT %s"
        ).format(columns=_REPLAY_COLUMNS, where=_where(conditions))
        async with self._pool.connection() as conn:
            cursor = await conn.execute(query, [*params, limit])
            rows = await cursor.fetchall()
        return [
            StoredWebhook(
                provider=row[0],
                event_id=row[1],
                event_type=row[2],
                signature=row[3],
                raw_body=bytes(row[4]),
                content_type=row[5],
                correlation_id=row[6],
                received_at=row[7],
            )
            for row in rows
        ]

    async def close(self) -> None:
        """Close the pool, if it was ever opened. Idempotent; a later call reopens."""
        await self._pool.close()


def _conditions(selection: WebhookLogFilter) -> tuple[list[sql.Composable], list[Any]]:
    conditions: list[sql.Composable] = []
    params: list[Any] = []
    for column, value in (
        ("provider", selection.provider),
        ("event_type", selection.event_type),
        ("status", selection.status),
        ("event_id", selection.event_id),
    ):
        if value is not None:
            conditions.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
    if selection.since is not None:
        conditions.append(sql.SQL("received_at >= %s"))
        params.append(selection.since)
    if selection.until is not None:
        conditions.append(sql.SQL("received_at < %s"))
        params.append(selection.until)
    return conditions, params


def _where(conditions: list[sql.Composable]) -> sql.Composable:
    if not conditions:
        return sql.SQL("")
    return sql.SQL("WHERE ") + sql.SQL(" AND ").join(conditions)
