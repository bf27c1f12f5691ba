"""billing.* → Postgres projections (payments, refunds, invoices, subscriptions, ...).

Batched: one transaction per batch, idempotent per event id, never regressing a status.
Failures go through the shared retry mechanism (transient → retry.<delay>, else dlq).
"""

from __future__ import annotations

from collections.abc import Sequence

from streams.agents.batched import register_batched
from streams.context import WorkerContext
from streams.domain.projection import plan_billing
from streams.records import Inbound

__all__ = ["register"]

AGENT = "project_billing"


def register(ctx: WorkerContext) -> None:
    async def apply(records: Sequence[Inbound]) -> None:
        # Decoding failures raise InvalidEvent: the runner isolates and dead-letters them.
        events = [ctx.codec.decode(record.value, topic=record.topic).record for record in records]
        projection = await ctx.connectors()
        await projection.write_billing(plan_billing(events), consumer=AGENT)

    register_batched(ctx, AGENT, apply)
