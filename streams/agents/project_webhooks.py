"""webhooks.* → Postgres ``webhook_events``: every accepted webhook, and what became of it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from base.errors import InvalidEvent
from schemas.upserts import WebhookUpsert
from streams.agents.batched import register_batched
from streams.context import WorkerContext
from streams.domain.normalise import normalise
from streams.domain.projection import webhook_upsert
from streams.domain.status import WebhookStatus
from streams.records import Inbound

__all__ = ["register", "webhook_row"]

log = logging.getLogger(__name__)

AGENT = "project_webhooks"

# What normalisation did with the webhook, as webhook_events.status.
_STATUS = {
    "mapped": WebhookStatus.PROCESSED,
    "unmapped": WebhookStatus.IGNORED,
    "invalid": WebhookStatus.FAILED,
}


def webhook_row(raw: dict[str, Any], processed_at: datetime) -> WebhookUpsert:
    """The ``webhook_events`` row for a decoded raw webhook record (pure)."""
    result = normalise(raw)
    return webhook_upsert(
        raw, status=_STATUS[result.outcome], reason=result.reason, processed_at=processed_at
    )


def register(ctx: WorkerContext) -> None:
    async def record(records: Sequence[Inbound]) -> None:
        now = datetime.fromtimestamp(ctx.clock.time(), UTC)
        rows = []
        for item in records:
            try:
                raw = ctx.codec.decode(item.value, topic=item.topic).record
            except InvalidEvent:
                # normalise_webhooks owns dead-lettering undecodable raw records; one
                # dead letter per bad record, not one per agent that read it.
                log.warning("undecodable webhook record skipped", extra={"position": item.position})
                continue
            rows.append(webhook_row(raw, now))
        projection = await ctx.connectors()
        await projection.record_webhooks(rows)

    register_batched(ctx, AGENT, record)
