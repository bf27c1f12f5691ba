"""The lead store: ``leads`` and ``lead_delivery_attempts`` (DESIGN §6).

:class:`LeadStore` shares the projection's pool (:meth:`PostgresProjection.connection`)
and decides no rule: the worker's domain (``streams.domain.leads``) says which status an
attempt leads to; this module only guarantees the table invariants, whatever order and
however many times the worker's records arrive:

- a lead is inserted once (RECEIVED); every later copy changes nothing;
- every attempt is one ``lead_delivery_attempts`` row whose number is taken under the
  lead row's lock, in the transaction that records it: a redelivered record (after a
  crash, say) adds the next row, it never overwrites one nor collides with one;
- ``leads.status`` never leaves DELIVERED: a late failure of an older copy records its
  attempt but keeps the lead delivered (``delivered_at`` is the first delivery's).

Driver errors come out as ``TransientError``/``PermanentError`` (``errors.py``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final

from psycopg import sql
from psycopg.rows import class_row

from base.errors import PermanentError
from base.sinks import Sink, sink_call
from connectors.postgres.client import PostgresProjection

__all__ = ["AttemptRow", "LeadRow", "LeadStore", "NewLead"]


@dataclass(frozen=True, slots=True)
class NewLead:
    """A lead as received, to store (the ``leads`` columns the worker fills)."""

    lead_id: str
    partner_id: str
    external_lead_id: str
    name: str | None
    email: str | None
    phone: str | None
    listing_id: str | None
    message: str | None
    payload: str
    """The partner's payload, JSON text (stored as jsonb)."""
    received_at: dt.datetime


@dataclass(frozen=True, slots=True)
class LeadRow:
    """A ``leads`` row: the lead as stored (what is delivered) and its delivery state."""

    lead_id: str
    partner_id: str
    external_lead_id: str
    name: str | None
    email: str | None
    phone: str | None
    listing_id: str | None
    message: str | None
    payload: Any
    """The partner's payload (jsonb, decoded)."""
    received_at: dt.datetime
    status: str
    attempts: int
    last_error: str | None
    delivered_at: dt.datetime | None

    def __repr__(self) -> str:  # the lead's contact details stay out of logs
        return f"LeadRow({self.lead_id}, {self.partner_id}, {self.status}, {self.attempts})"


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """A ``lead_delivery_attempts`` row."""

    lead_id: str
    attempt: int
    http_status: int | None
    error: str | None
    latency_ms: int | None
    trigger: str
    event_id: str | None
    attempted_at: dt.datetime


def _columns(row_type: type[Any]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(f.name) for f in fields(row_type))


_INSERT_LEAD: Final = sql.SQL(
    "INSERT INTO leads (lead_id, partner_id, external_lead_id, name, email, phone, "
    "listing_id, message, payload, status, attempts, received_at) "
    "VALUES (%(lead_id)s, %(partner_id)s, %(external_lead_id)s, %(name)s, %(email)s, "
    "%(phone)s, %(listing_id)s, %(message)s, %(payload)s::jsonb, 'RECEIVED', 0, "
    "%(received_at)s) ON CONFLICT DO NOTHING"
)
_SELECT_LEAD: Final = sql.SQL("SELECT {} FROM leads WHERE lead_id = %s").format(_columns(LeadRow))
_LOCK_LEAD: Final = sql.SQL("SELECT 1 FROM leads WHERE lead_id = %s FOR UPDATE")
# The next number under the lead's lock: max + 1 of the rows there are, so a number is
# never reused even if leads.attempts were ever edited by hand.
_INSERT_ATTEMPT: Final = sql.SQL(
    "INSERT INTO lead_delivery_attempts (lead_id, attempt, http_status, error, latency_ms, "
    "trigger, metadata, event_id, attempted_at) "
    "SELECT %(lead_id)s, COALESCE(max(attempt), 0) + 1, %(http_status)s, %(error)s, "
    "%(latency_ms)s, %(trigger)s, %(metadata)s::jsonb, %(event_id)s, %(attempted_at)s "
    "FROM lead_delivery_attempts WHERE lead_id = %(lead_id)s RETURNING attempt"
)
# DELIVERED is final: the CASEs read the row as it was before this UPDATE.
_UPDATE_LEAD: Final = sql.SQL(
    "UPDATE leads SET attempts = %(attempt)s, "
    "status = CASE WHEN status = 'DELIVERED' THEN status ELSE %(status)s END, "
    "last_error = CASE WHEN status = 'DELIVERED' OR %(status)s = 'DELIVERED' "
    "THEN last_error ELSE %(error)s END, "
    "delivered_at = CASE WHEN %(status)s = 'DELIVERED' "
    "THEN COALESCE(delivered_at, %(attempted_at)s) ELSE delivered_at END, "
    "updated_at = now() WHERE lead_id = %(lead_id)s RETURNING {}"
).format(_columns(LeadRow))
_SELECT_EVENT_ATTEMPT: Final = sql.SQL(
    "SELECT max(attempt) FROM lead_delivery_attempts "
    "WHERE lead_id = %s AND event_id = %s AND trigger = %s"
)
_SELECT_ATTEMPTS: Final = sql.SQL(
    "SELECT {} FROM lead_delivery_attempts WHERE lead_id = %s ORDER BY attempt"
).format(_columns(AttemptRow))


class LeadStore:
    """Reads and writes ``leads`` and ``lead_delivery_attempts`` over ``projection``'s
    pool (started by its owner). Calls may run concurrently.

    :raises TransientError: (every method) the database is unavailable; nothing written.
    """

    def __init__(self, projection: PostgresProjection) -> None:
        self._db = projection

    @sink_call(Sink.POSTGRES)
    async def store(self, lead: NewLead) -> LeadRow:
        """Insert ``lead`` as RECEIVED unless it is stored already; the row as it is now.

        Idempotent: a second copy changes nothing and gets the stored row back.

        :raises PermanentError: the database refused a value, or another lead id holds
            the same (partner_id, external_lead_id) (a record not made by the ingress).
        """
        params = {
            "lead_id": lead.lead_id,
            "partner_id": lead.partner_id,
            "external_lead_id": lead.external_lead_id,
            "name": lead.name,
            "email": lead.email,
            "phone": lead.phone,
            "listing_id": lead.listing_id,
            "message": lead.message,
            "payload": lead.payload,
            "received_at": lead.received_at,
        }
        async with self._db.connection() as conn:
            await conn.execute(_INSERT_LEAD, params)
            cursor = conn.cursor(row_factory=class_row(LeadRow))
            await cursor.execute(_SELECT_LEAD, (lead.lead_id,))
            row = await cursor.fetchone()
        if row is None:
            raise PermanentError(
                f"lead {lead.lead_id}: partner {lead.partner_id} already has a lead with "
                "this externalLeadId under another id"
            )
        return row

    @sink_call(Sink.POSTGRES)
    async def lead(self, lead_id: str) -> LeadRow | None:
        """The lead's delivery state, or ``None`` when it is not stored."""
        async with self._db.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(LeadRow))
            await cursor.execute(_SELECT_LEAD, (lead_id,))
            return await cursor.fetchone()

    @sink_call(Sink.POSTGRES)
    async def attempt_of(self, lead_id: str, event_id: str, trigger: str) -> int | None:
        """The number of the attempt record ``event_id`` caused with ``trigger``, if any
        (a redelivered deliver-now command finds the attempt it made)."""
        async with self._db.connection() as conn:
            cursor = await conn.execute(_SELECT_EVENT_ATTEMPT, (lead_id, event_id, trigger))
            row = await cursor.fetchone()
        return int(row[0]) if row is not None and row[0] is not None else None

    @sink_call(Sink.POSTGRES)
    async def attempts(self, lead_id: str) -> list[AttemptRow]:
        """Every attempt of the lead, first first."""
        async with self._db.connection() as conn:
            cursor = conn.cursor(row_factory=class_row(AttemptRow))
            await cursor.execute(_SELECT_ATTEMPTS, (lead_id,))
            return await cursor.fetchall()

    @sink_call(Sink.POSTGRES)
    async def record_attempt(
        self,
        lead_id: str,
        *,
        status: str,
        http_status: int | None,
        error: str | None,
        latency_ms: int,
        trigger: str,
        event_id: str,
        attempted_at: dt.datetime,
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[int, LeadRow]:
        """Record one attempt and move the lead to ``status`` (never out of DELIVERED),
        in one transaction; the attempt's number and the lead as it is now.

        :raises PermanentError: the lead is not stored (attempts follow :meth:`store`),
            or the database refused a value.
        """
        params = {
            "lead_id": lead_id,
            "status": status,
            "http_status": http_status,
            "error": error,
            "latency_ms": latency_ms,
            "trigger": trigger,
            "event_id": event_id,
            "attempted_at": attempted_at,
            "metadata": json.dumps(dict(metadata or {})),
        }
        async with self._db.connection() as conn, conn.transaction():
            locked = await conn.execute(_LOCK_LEAD, (lead_id,))
            if await locked.fetchone() is None:
                raise PermanentError(f"lead {lead_id} is not stored: no attempt recorded")
            inserted = await conn.execute(_INSERT_ATTEMPT, params)
            numbered = await inserted.fetchone()
            assert numbered is not None  # INSERT ... SELECT of an aggregate: one row
            attempt = int(numbered[0])
            cursor = conn.cursor(row_factory=class_row(LeadRow))
            await cursor.execute(_UPDATE_LEAD, {**params, "attempt": attempt})
            row = await cursor.fetchone()
        assert row is not None  # locked above, in this transaction
        return attempt, row
