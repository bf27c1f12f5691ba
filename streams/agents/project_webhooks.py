"""webhooks.outcomes → Postgres ``webhook_events``: every processed webhook, and what
became of it.

The normalise agent decided the status (``Normalised.status``) and wrote it with the
webhook as received to ``webhooks.outcomes``; this agent only writes the rows, batched.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from schemas.upserts import WebhookUpsert
from streams.agents.batched import register_batched
from streams.context import WorkerContext
from streams.domain.projection import webhook_upsert
from streams.domain.status import webhook_status
from streams.records import Inbound

__all__ = ["register", "webhook_row"]

log = logging.getLogger(__name__)

AGENT = "project_webhooks"


def webhook_row(outcome: Mapping[str, Any]) -> WebhookUpsert:
    """The ``webhook_events`` row of a decoded ``WebhookOutcome`` record (pure).

    :raises InvalidEvent: the status is not a webhook status (``UnknownStatus``).
    """
    return webhook_upsert(
        {**outcome, "eventType": outcome["providerEventType"]},
        status=webhook_status(outcome["status"]),
        reason=outcome["reason"],
        processed_at=datetime.fromtimestamp(outcome["occurredAt"] / 1000, UTC),
    )


def register(ctx: WorkerContext) -> None:
    async def record(records: Sequence[Inbound]) -> None:
        # Decoding failures raise InvalidEvent: the runner isolates and dead-letters them.
        rows = [
            webhook_row(ctx.codec.decode(item.value, topic=item.topic).record) for item in records
        ]
        projection = await ctx.connectors()
        await projection.record_webhooks(rows)

    register_batched(ctx, AGENT, record)
