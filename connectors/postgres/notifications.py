"""The notification store: ``notifications`` (DESIGN §6), one row per notification.

:class:`NotificationStore` shares the projection's pool (:meth:`PostgresProjection.connection`)
and decides no rule: the worker's domain (``streams.domain.notifications``) says which
status an outcome leads to; this module guarantees the table invariants, whatever order
and however many times the worker's records arrive:

- a notification is inserted once (QUEUED); every later copy changes nothing;
- SENT and FAILED are final: an outcome recorded against a row already SENT or FAILED
  changes nothing (a late copy cannot undo a send nor fail a sent message);
- ``attempts`` counts the sends made (one per :meth:`record` with ``attempted``), in the
  statement that records the outcome.

Driver errors come out as ``TransientError``/``PermanentError`` (``errors.py``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from typing import Any, Final

from psycopg import sql
from psycopg.rows import class_row

from base.sinks import Sink, sink_call
from connectors.postgres.client import PostgresProjection

__all__ = ["NewNotification", "NotificationRow", "NotificationStore"]


@dataclass(frozen=True, slots=True)
class NewNotification:
    """A requested notification, to store (the columns known before sending)."""

    id: str
    channel: str
    template: str
    to_ref: str
    user_id: str | None
    cause_event_id: str | None

    def __repr__(self) -> str:  # to_ref may be a contact: not in logs
        return f"NewNotification({self.id}, {self.channel}, {self.template})"


@dataclass(frozen=True, slots=True)
class NotificationRow:
    """A ``notifications`` row."""

    id: str
    channel: str
    template: str
    to_ref: str
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

    def __repr__(self) -> str:
        return f"NotificationRow({self.id}, {self.channel}, {self.status}, {self.attempts})"


def _columns(row_type: type[Any]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(f.name) for f in fields(row_type))


_INSERT: Final = sql.SQL(
    "INSERT INTO notifications (id, channel, template, to_ref, user_id, cause_event_id, "
    "status, attempts) VALUES (%(id)s, %(channel)s, %(template)s, %(to_ref)s, %(user_id)s, "
    "%(cause_event_id)s, 'QUEUED', 0) ON CONFLICT (id) DO NOTHING"
)
_SELECT: Final = sql.SQL("SELECT {} FROM notifications WHERE id = %s").format(
    _columns(NotificationRow)
)
# The rows created for the same to_ref within the window up to this row's creation, this
# row excluded, and so are the rows refused before any send (the cap, a missing contact):
# they never reached the recipient. Measured from the row's created_at, not now, so a
# redelivered copy is judged as its first copy was.
_COUNT_RECENT: Final = sql.SQL(
    "SELECT count(*) FROM notifications WHERE to_ref = %(to_ref)s AND id <> %(id)s "
    "AND created_at > %(created_at)s - make_interval(secs => %(window_s)s) "
    "AND created_at <= %(created_at)s AND (status <> 'FAILED' OR attempts > 0)"
)
_RECORD: Final = sql.SQL(
    "UPDATE notifications SET status = %(status)s, "
    "attempts = attempts + %(attempted)s, last_error = %(error)s, "
    "recipient = COALESCE(%(recipient)s, recipient), "
    "provider_message_id = COALESCE(%(provider_message_id)s, provider_message_id), "
    "sent_at = CASE WHEN %(status)s = 'SENT' THEN %(at)s ELSE sent_at END, "
    "updated_at = now() WHERE id = %(id)s AND status NOT IN ('SENT', 'FAILED') RETURNING {}"
).format(_columns(NotificationRow))


class NotificationStore:
    """Reads and writes ``notifications`` over ``projection``'s pool (started by its
    owner). Calls may run concurrently.

    :raises TransientError: (every method) the database is unavailable; nothing written.
    """

    def __init__(self, projection: PostgresProjection) -> None:
        self._db = projection

    @sink_call(Sink.POSTGRES)
    async def store(self, notification: NewNotification) -> NotificationRow:
        """Insert ``notification`` as QUEUED unless it is stored already; the row as it
        is now. Idempotent: a second copy changes nothing and gets the stored row back.

        :raises PermanentError: the database refused a value (an unknown channel).
        """
        params = {
            "id": notification.id,
            "channel": notification.channel,
            "template": notification.template,
            "to_ref": notification.to_ref,
            "user_id": notification.user_id,
            "cause_event_id": notification.cause_event_id,
        }
        async with self._db.connection() as conn:
            await conn.execute(_INSERT, params)
            cursor = conn.cursor(row_factory=class_row(NotificationRow))
            await cursor.execute(_SELECT, (notification.id,))
            row = await cursor.fetchone()
        assert row is not None  # inserted, or there already
        return row

    @sink_call(Sink.POSTGRES)
    async def get(self, notification_id: str) -> NotificationRow | None:
        """The notification, or ``None`` when it is not stored."""
        async with self._db.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(NotificationRow))
            await cursor.execute(_SELECT, (notification_id,))
            return await cursor.fetchone()

    @sink_call(Sink.POSTGRES)
    async def recent(self, row: NotificationRow, window_s: float) -> int:
        """How many notifications to ``row.to_ref`` were created within ``window_s``
        seconds before ``row`` (itself and those refused before any send not counted)."""
        params = {
            "to_ref": row.to_ref,
            "id": row.id,
            "created_at": row.created_at,
            "window_s": window_s,
        }
        async with self._db.connection() as conn:
            cursor = await conn.execute(_COUNT_RECENT, params)
            counted = await cursor.fetchone()
        return int(counted[0]) if counted is not None else 0

    @sink_call(Sink.POSTGRES)
    async def record(
        self,
        notification_id: str,
        *,
        status: str,
        attempted: bool,
        error: str | None = None,
        recipient: str | None = None,
        provider_message_id: str | None = None,
        at: dt.datetime | None = None,
    ) -> NotificationRow | None:
        """Record an outcome: the new ``status``, one more attempt when ``attempted``,
        ``last_error`` (replaced, ``None`` clears it), the resolved ``recipient``, the
        provider's message id, ``sent_at = at`` when SENT. The row as it is now, or
        ``None`` when it was already SENT or FAILED (nothing changed) or is not stored.

        :raises PermanentError: the database refused a value.
        """
        params = {
            "id": notification_id,
            "status": status,
            "attempted": 1 if attempted else 0,
            "error": error,
            "recipient": recipient,
            "provider_message_id": provider_message_id,
            "at": at or dt.datetime.now(dt.UTC),
        }
        async with self._db.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(NotificationRow))
            await cursor.execute(_RECORD, params)
            return await cursor.fetchone()
