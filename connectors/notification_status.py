"""Read a notification from Postgres (for the ingress).

``GET /internal/v1/notifications/{id}`` answers from the ``notifications`` row the notify
agent keeps (``connectors/migrations/0004_notifications.sql``). One read-only query.

Connections come from a :class:`connectors.postgres.read_pool.ReadPool`: opened on first
use, so the ingress starts without Postgres; driver errors come out as ``TransientError``
(the route answers 503).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from connectors.postgres.read_pool import ReadPool

__all__ = ["NotificationStatusStore", "StoredNotification"]

_NOTIFICATION = """
SELECT id, channel, template, to_ref, user_id, recipient, status, attempts, last_error,
       provider_message_id, cause_event_id, created_at, updated_at, sent_at
FROM notifications
WHERE id = %s
"""


@dataclass(frozen=True, slots=True)
class StoredNotification:
    """A ``notifications`` row. ``to`` is what the request named (a user id or a
    contact); ``recipient`` the contact it went (or was to go) to, once resolved."""

    id: str
    channel: str
    template: str
    to: str
    user_id: str | None
    recipient: str | None
    status: str
    attempts: int
    last_error: str | None
    provider_message_id: str | None
    cause_event_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    sent_at: dt.datetime | None


class NotificationStatusStore:
    """Reads notifications through a small lazily opened connection pool."""

    def __init__(self, dsn: str) -> None:
        self._pool = ReadPool(dsn)

    async def notification(self, notification_id: str) -> StoredNotification | None:
        """The notification, or ``None`` when there is no such row.

        :raises TransientError: Postgres is unreachable or too slow.
        """
        async with self._pool.connection() as conn:
            cursor = await conn.execute(_NOTIFICATION, (notification_id,))
            row = await cursor.fetchone()
        if row is None:
            return None
        return StoredNotification(*row)

    async def close(self) -> None:
        """Close the pool, if it was ever opened. Idempotent; a later call reopens."""
        await self._pool.close()
