"""Read a lead and its delivery attempts from Postgres (for the ingress).

``GET /internal/v1/leads/{leadId}`` answers from the ``leads`` row the lead delivery
agent keeps and its ``lead_delivery_attempts`` rows (``connectors/migrations/0003_leads.sql``).
Two queries, read-only: the lead first, its attempts only if it exists.

Connections come from a :class:`connectors.postgres.read_pool.ReadPool`: opened on first
use, so the ingress starts without Postgres; driver errors come out as ``TransientError``
(the route answers 503).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from connectors.postgres.read_pool import ReadPool

__all__ = ["LeadAttempt", "LeadStatusStore", "StoredLead"]

_LEAD = """
SELECT lead_id, partner_id, external_lead_id, name, email, phone, listing_id, message,
       payload, status, attempts, last_error, received_at, delivered_at, updated_at
FROM leads
WHERE lead_id = %s
"""

_ATTEMPTS = """
SELECT attempt, http_status, error, latency_ms, trigger, attempted_at
FROM lead_delivery_attempts
WHERE lead_id = %s
ORDER BY attempt
"""


@dataclass(frozen=True, slots=True)
class LeadAttempt:
    """A ``lead_delivery_attempts`` row."""

    attempt: int
    http_status: int | None
    error: str | None
    latency_ms: int | None
    trigger: str
    attempted_at: dt.datetime


@dataclass(frozen=True, slots=True)
class StoredLead:
    """The ``leads`` row and its attempts, oldest first. ``payload`` is the partner's
    payload as received (jsonb, decoded)."""

    lead_id: str
    partner_id: str
    external_lead_id: str
    name: str | None
    email: str | None
    phone: str | None
    listing_id: str | None
    message: str | None
    payload: Mapping[str, Any]
    status: str
    attempts: int
    last_error: str | None
    received_at: dt.datetime
    delivered_at: dt.datetime | None
    updated_at: dt.datetime
    delivery_attempts: tuple[LeadAttempt, ...]


class LeadStatusStore:
    """Reads leads through a small lazily opened connection pool."""

    def __init__(self, dsn: str) -> None:
        self._pool = ReadPool(dsn)

    async def lead(self, lead_id: str) -> StoredLead | None:
        """The lead and its attempts, or ``None`` when there is no such lead.

        :raises TransientError: Postgres is unreachable or too slow.
        """
        async with self._pool.connection() as conn:
            cursor = await conn.execute(_LEAD, (lead_id,))
            row = await cursor.fetchone()
            if row is None:
                return None
            cursor = await conn.execute(_ATTEMPTS, (lead_id,))
            attempts = await cursor.fetchall()
        return StoredLead(
            lead_id=row[0],
            partner_id=row[1],
            external_lead_id=row[2],
            name=row[3],
            email=row[4],
            phone=row[5],
            listing_id=row[6],
            message=row[7],
            payload=row[8],
            status=row[9],
            attempts=row[10],
            last_error=row[11],
            received_at=row[12],
            delivered_at=row[13],
            updated_at=row[14],
            delivery_attempts=tuple(
                LeadAttempt(
                    attempt=attempt[0],
                    http_status=attempt[1],
                    error=attempt[2],
                    latency_ms=attempt[3],
                    trigger=attempt[4],
                    attempted_at=attempt[5],
                )
                for attempt in attempts
            ),
        )

    async def close(self) -> None:
        """Close the pool, if it was ever opened. Idempotent; a later call reopens."""
        await self._pool.close()
