"""billing.* → Postgres projections (payments, refunds, invoices, subscriptions, ...).

Batched: one transaction per batch, idempotent per event id, never regressing a status.
Failures go through the shared retry mechanism (transient → retry.<delay>, else dlq).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from streams.context import WorkerContext
from streams.records import Inbound

__all__ = ["register"]

AGENT = "project_billing"


def register(ctx: WorkerContext) -> None:
    app = ctx.topology.app
    settings = ctx.settings

    async def apply(records: Sequence[Inbound]) -> None:
        # Decoding failures raise InvalidEvent: the runner isolates and dead-letters them.
        events = [ctx.codec.decode(record.value, topic=record.topic).record for record in records]
        projection = await ctx.connectors()
        await projection.apply_billing(events, consumer=AGENT)

    ctx.runner.register(AGENT, apply)

    async def project_billing(stream: Any) -> None:
        async for events in stream.take_events(
            settings.worker_batch_size, within=settings.worker_batch_within_s
        ):
            await ctx.runner.run(AGENT, [Inbound.from_faust(event) for event in events])

    app.agent(ctx.topology.reads(AGENT), name=AGENT)(project_billing)
