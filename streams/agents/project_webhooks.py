"""webhooks.* → Postgres ``webhook_events``: every accepted webhook, and what became of it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from connectors.postgres import WebhookRow

from streams.context import WorkerContext
from streams.domain.normalise import normalise
from streams.records import Inbound

__all__ = ["register", "webhook_row"]

AGENT = "project_webhooks"

# What normalisation did with the webhook, as webhook_events.status.
_STATUS = {"mapped": "PROCESSED", "unmapped": "IGNORED", "invalid": "FAILED"}


def webhook_row(raw: dict[str, Any], processed_at: datetime) -> WebhookRow:
    """The ``webhook_events`` row for a decoded raw webhook record (pure)."""
    result = normalise(raw)
    return WebhookRow(
        provider=raw["provider"],
        event_id=raw["providerEventId"],
        event_type=raw["eventType"],
        signature=raw["signatureHeader"],
        raw_body=raw["rawBody"],
        content_type=raw["contentType"],
        correlation_id=raw["correlationId"],
        received_at=datetime.fromtimestamp(raw["receivedAt"] / 1000, UTC),
        processed_at=processed_at,
        status=_STATUS[result.outcome],
        reason=result.reason,
    )


def register(ctx: WorkerContext) -> None:
    app = ctx.topology.app
    settings = ctx.settings

    async def record(records: Sequence[Inbound]) -> None:
        now = datetime.fromtimestamp(ctx.clock.time(), UTC)
        rows = [
            webhook_row(ctx.codec.decode(item.value, topic=item.topic).record, now)
            for item in records
        ]
        projection = await ctx.connectors()
        await projection.record_webhooks(rows)

    ctx.runner.register(AGENT, record)

    async def project_webhooks(stream: Any) -> None:
        async for events in stream.take_events(
            settings.worker_batch_size, within=settings.worker_batch_within_s
        ):
            await ctx.runner.run(AGENT, [Inbound.from_faust(event) for event in events])

    app.agent(ctx.topology.reads(AGENT), name=AGENT)(project_webhooks)
