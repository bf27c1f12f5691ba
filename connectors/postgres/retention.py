"""Retention of the bookkeeping tables: ``processed_events`` and ``webhook_events``.

Both grow by one row per event forever unless pruned. A row older than the retention
(``SLUICE_POSTGRES_RETENTION``, default 35 days) is deleted: by then Kafka no longer
holds the webhook (30 days) and the worker's dedupe window (30 days) has let its id go,
so nothing can arrive that the row would still deduplicate.

Deletes run in small batches, each its own short transaction, oldest rows by index
range, with ``SKIP LOCKED``: a purge never holds many row locks at once nor waits for a
writer, so the projections keep flowing while it runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from psycopg import sql

__all__ = ["RETAINED_TABLES", "RetainedTable", "purge_expired", "purge_expired_at"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetainedTable:
    """A table pruned by age: ``column`` is the indexed timestamp that ages a row."""

    name: str
    column: str


RETAINED_TABLES: Final = (
    RetainedTable("processed_events", "processed_at"),
    RetainedTable("webhook_events", "received_at"),
)


def _delete_batch(table: RetainedTable) -> sql.Composed:
    # ctid = ANY(ARRAY(subquery)): Postgres deletes the chosen rows by their physical id
    # (a TID scan), and the subquery reads at most LIMIT rows off the timestamp index.
    return sql.SQL(
        "DELETE FROM {table} WHERE ctid = ANY(ARRAY("
        "SELECT ctid FROM {table} WHERE {column} < %s "
        "ORDER BY {column} LIMIT %s FOR UPDATE SKIP LOCKED))"
    ).format(table=sql.Identifier(table.name), column=sql.Identifier(table.column))


async def purge_expired(
    conn: psycopg.AsyncConnection[Any],
    cutoff: datetime,
    *,
    batch_rows: int = 1000,
    tables: tuple[RetainedTable, ...] = RETAINED_TABLES,
) -> dict[str, int]:
    """Delete every row older than ``cutoff`` (timezone-aware) from each table.

    ``conn`` must be in autocommit mode: each batch of at most ``batch_rows`` rows then
    commits on its own. Returns the rows deleted per table.
    """
    if not conn.autocommit:
        raise ValueError("purge_expired needs an autocommit connection (one commit per batch)")
    if cutoff.tzinfo is None:
        raise ValueError("cutoff must be timezone-aware")
    deleted: dict[str, int] = {}
    for table in tables:
        query = _delete_batch(table)
        total = 0
        while True:
            cursor = await conn.execute(query, (cutoff, batch_rows))
            total += cursor.rowcount
            if cursor.rowcount < batch_rows:
                break
        deleted[table.name] = total
    return deleted


async def purge_expired_at(
    database_url: str, cutoff: datetime, *, batch_rows: int = 1000
) -> dict[str, int]:
    """``purge_expired`` on a connection of its own, opened and closed around the purge."""
    async with await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, connect_timeout=10
    ) as conn:
        deleted = await purge_expired(conn, cutoff, batch_rows=batch_rows)
    log.info("expired rows purged", extra={"cutoff": cutoff.isoformat(), "deleted": deleted})
    return deleted
