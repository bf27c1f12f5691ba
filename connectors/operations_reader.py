"""What the on-call dashboard shows from Postgres: the latest webhooks, the order funnel,
lead delivery per partner and notification outcomes.

Read-only counts and a short list, through a :class:`~connectors.postgres.read_pool.ReadPool`
(opened on first use, so the ingress starts without Postgres; an unreachable database is
a ``TransientError``, which the dashboard shows as a notice rather than failing).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from connectors.postgres.read_pool import ReadPool

__all__ = ["LATEST_WEBHOOKS", "OperationsReader", "OperationsSnapshot"]

LATEST_WEBHOOKS = 25
"""How many of the most recently received webhooks the dashboard lists."""

_LATEST_WEBHOOKS = """
SELECT provider, event_id, event_type, status, reason, received_at, processed_at
FROM webhook_events
ORDER BY received_at DESC, provider, event_id
LIMIT %s
"""
_WEBHOOK_STATUSES = "SELECT status, count(*) FROM webhook_events GROUP BY status"
_ORDER_STATUSES = "SELECT status, count(*) FROM orders GROUP BY status"
_LEADS = "SELECT partner_id, status, count(*) FROM leads GROUP BY partner_id, status"
_NOTIFICATIONS = "SELECT channel, status, count(*) FROM notifications GROUP BY channel, status"


@dataclass(frozen=True, slots=True)
class OperationsSnapshot:
    """One read of every Postgres section, JSON-ready through :meth:`as_json`.

    ``webhook_statuses``, ``order_statuses``: status → count; ``leads``: partner → status
    → count; ``notifications``: channel → status → count; ``latest_webhooks``: newest
    first, at most :data:`LATEST_WEBHOOKS` (never the raw body or signature).
    """

    latest_webhooks: tuple[dict[str, Any], ...]
    webhook_statuses: dict[str, int]
    order_statuses: dict[str, int]
    leads: dict[str, dict[str, int]]
    notifications: dict[str, dict[str, int]]

    def as_json(self) -> dict[str, Any]:
        return {
            "latestWebhooks": list(self.latest_webhooks),
            "webhookStatuses": self.webhook_statuses,
            "orders": self.order_statuses,
            "leads": self.leads,
            "notifications": self.notifications,
        }


class OperationsReader:
    """Reads the dashboard's Postgres sections in one short connection."""

    def __init__(self, dsn: str) -> None:
        self._pool = ReadPool(dsn, max_size=2, name="sluice-dashboard")

    async def snapshot(self) -> OperationsSnapshot:
        """Every section, read now.

        :raises TransientError: Postgres is unreachable or too slow.
        """
        async with self._pool.connection() as conn:
            latest = await (await conn.execute(_LATEST_WEBHOOKS, (LATEST_WEBHOOKS,))).fetchall()
            webhooks = await (await conn.execute(_WEBHOOK_STATUSES)).fetchall()
            orders = await (await conn.execute(_ORDER_STATUSES)).fetchall()
            leads = await (await conn.execute(_LEADS)).fetchall()
            notifications = await (await conn.execute(_NOTIFICATIONS)).fetchall()
        return OperationsSnapshot(
            latest_webhooks=tuple(
                {
                    "provider": row[0],
                    "eventId": row[1],
                    "eventType": row[2],
                    "status": row[3],
                    "reason": row[4],
                    "receivedAt": _iso(row[5]),
                    "processedAt": _iso(row[6]),
                }
                for row in latest
            ),
            webhook_statuses={str(status): int(n) for status, n in webhooks},
            order_statuses={str(status): int(n) for status, n in orders},
            leads=_nested(leads),
            notifications=_nested(notifications),
        )

    async def close(self) -> None:
        """Close the pool, if it was ever opened. Idempotent."""
        await self._pool.close()


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _nested(rows: list[tuple[Any, ...]]) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = {}
    for outer, inner, count in rows:
        found.setdefault(str(outer), {})[str(inner)] = int(count)
    return found
