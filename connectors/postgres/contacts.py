"""The user contact store: ``user_contacts`` (DESIGN §6), how to reach each user.

:class:`ContactStore` shares the projection's pool (:meth:`PostgresProjection.connection`)
and guarantees one invariant whatever order and however many times the
``user.contact_updated`` events arrive: a row only ever moves to a *newer* event, by
``(occurred_at, event id)``. An older event (a late or replayed copy) never overwrites a
newer contact; of two events with the same ``occurred_at``, the greater event id wins, so
every worker ends with the same row; a copy of the applied event changes nothing.

Driver errors come out as ``TransientError``/``PermanentError`` (``errors.py``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Final

from psycopg import sql
from psycopg.rows import class_row

from base.sinks import Sink, sink_call
from connectors.postgres.client import PostgresProjection

__all__ = ["ContactRow", "ContactStore", "ContactUpsert"]


@dataclass(frozen=True, slots=True)
class ContactUpsert:
    """A user's whole contact as of one event (fields left out are cleared)."""

    user_id: str
    email: str | None
    phone: str | None
    push_tokens: Sequence[str]
    preferred_channels: Sequence[str]
    locale: str | None
    occurred_at: dt.datetime
    event_id: str

    def __repr__(self) -> str:  # contact details stay out of logs
        return f"ContactUpsert({self.user_id}, {self.event_id})"


@dataclass(frozen=True, slots=True)
class ContactRow:
    """A ``user_contacts`` row."""

    user_id: str
    email: str | None
    phone: str | None
    push_tokens: list[str]
    preferred_channels: list[str]
    locale: str | None
    occurred_at: dt.datetime
    last_event_id: str

    def __repr__(self) -> str:
        return f"ContactRow({self.user_id}, {self.last_event_id})"


def _columns(row_type: type[Any]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(f.name) for f in fields(row_type))


# The row comparison is evaluated against the row as it is now, under its lock: the
# newer event wins whichever transaction commits first.
_UPSERT: Final = sql.SQL(
    "INSERT INTO user_contacts AS c (user_id, email, phone, push_tokens, preferred_channels, "
    "locale, occurred_at, last_event_id) "
    "VALUES (%(user_id)s, %(email)s, %(phone)s, %(push_tokens)s, %(preferred_channels)s, "
    "%(locale)s, %(occurred_at)s, %(event_id)s) "
    "ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, phone = EXCLUDED.phone, "
    "push_tokens = EXCLUDED.push_tokens, preferred_channels = EXCLUDED.preferred_channels, "
    "locale = EXCLUDED.locale, occurred_at = EXCLUDED.occurred_at, "
    "last_event_id = EXCLUDED.last_event_id, updated_at = now() "
    "WHERE (c.occurred_at, c.last_event_id) < (EXCLUDED.occurred_at, EXCLUDED.last_event_id)"
)
_SELECT: Final = sql.SQL("SELECT {} FROM user_contacts WHERE user_id = %s").format(
    _columns(ContactRow)
)


class ContactStore:
    """Reads and writes ``user_contacts`` over ``projection``'s pool (started by its
    owner). Calls may run concurrently.

    :raises TransientError: (every method) the database is unavailable; nothing written.
    """

    def __init__(self, projection: PostgresProjection) -> None:
        self._db = projection

    @sink_call(Sink.POSTGRES)
    async def apply(self, contacts: Sequence[ContactUpsert]) -> int:
        """Apply each contact unless its user's row is from a newer event (module
        docstring), in one transaction; how many rows changed.

        :raises PermanentError: the database refused a value.
        """
        changed = 0
        async with self._db.connection() as conn, conn.transaction():
            for contact in contacts:
                cursor = await conn.execute(
                    _UPSERT,
                    {
                        "user_id": contact.user_id,
                        "email": contact.email,
                        "phone": contact.phone,
                        "push_tokens": list(contact.push_tokens),
                        "preferred_channels": list(contact.preferred_channels),
                        "locale": contact.locale,
                        "occurred_at": contact.occurred_at,
                        "event_id": contact.event_id,
                    },
                )
                changed += cursor.rowcount
        return changed

    @sink_call(Sink.POSTGRES)
    async def contact(self, user_id: str) -> ContactRow | None:
        """The user's contact, or ``None`` when no event about the user was applied."""
        async with self._db.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(ContactRow))
            await cursor.execute(_SELECT, (user_id,))
            return await cursor.fetchone()
