"""``processed_events`` for a consumer whose output is a Kafka record, not a row.

A projection writes its ``processed_events`` entry in the transaction that applies the
event. An agent that only produces records (the lifecycle notifier) cannot: its output
is durable once the broker acknowledged it, outside any transaction. So it asks
:meth:`ProcessedEvents.seen` before producing and calls :meth:`ProcessedEvents.record`
once its records are delivered: a redelivered input then produces nothing, and a crash
between delivery and the record produces the same records again (same ids), never none.
The retention purge (``SLUICE_POSTGRES_RETENTION``) removes old entries like any other.

Driver errors come out as ``TransientError``/``PermanentError`` (``errors.py``).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from base.sinks import Sink, sink_call
from connectors.postgres.client import PostgresProjection

__all__ = ["ProcessedEvents"]

_SEEN: Final = "SELECT event_id FROM processed_events WHERE consumer = %s AND event_id = ANY(%s)"
_RECORD: Final = (
    "INSERT INTO processed_events (consumer, event_id) "
    "SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING"
)


class ProcessedEvents:
    """The ``processed_events`` entries of ``consumer``, over ``projection``'s pool.

    :raises TransientError: (every method) the database is unavailable.
    """

    def __init__(self, projection: PostgresProjection, consumer: str) -> None:
        self._db = projection
        self._consumer = consumer

    @sink_call(Sink.POSTGRES)
    async def seen(self, event_ids: Collection[str]) -> set[str]:
        """Those of ``event_ids`` this consumer recorded."""
        if not event_ids:
            return set()
        async with self._db.connection() as conn:
            cursor = await conn.execute(_SEEN, (self._consumer, list(event_ids)))
            return {str(row[0]) for row in await cursor.fetchall()}

    @sink_call(Sink.POSTGRES)
    async def record(self, event_ids: Collection[str]) -> None:
        """Record ``event_ids`` as processed by this consumer (repeats change nothing)."""
        if not event_ids:
            return
        async with self._db.connection() as conn:
            await conn.execute(_RECORD, (self._consumer, list(event_ids)))
