"""retry.<delay> → wait until the head record is due → re-run its effect.

One agent per delay topic. A delay topic holds records of one delay only, so records
arrive roughly in due order and waiting for the head blocks nothing that is due sooner;
the main agents never wait at all.
"""

from __future__ import annotations

import logging
from typing import Any

from streams.agents.acking import acked_events
from streams.context import WorkerContext
from streams.domain.retry import RetryHeaders, due_in
from streams.records import Inbound

__all__ = ["register"]

log = logging.getLogger(__name__)


def register(ctx: WorkerContext) -> None:
    for wire in ctx.topology.wires:
        if wire.agent.startswith("retry_"):
            _register_one(ctx, wire.agent)


def _register_one(ctx: WorkerContext, agent_name: str) -> None:
    async def retry_agent(stream: Any) -> None:
        async for event in acked_events(stream):
            record = Inbound.from_faust(event)
            retry = RetryHeaders.from_kafka(record.headers)
            if retry is None or not retry.effect:
                await ctx.runner.dead_letter(
                    agent_name,
                    record,
                    reason="record on a retry topic without retry headers",
                    error_class="InvalidEvent",
                )
                continue
            # Capped: a corrupt but well-formed due time must not stall the partition.
            now = ctx.clock.time()
            wait = min(due_in(retry, now), ctx.runner.policy.max_wait(record.topic))
            # Held until re-run: the overdue gauge reads it while the agent waits on it
            # and while its effect runs (a stuck effect shows as a growing overdue).
            ctx.retry_heads.hold(record.topic, record.partition, now + due_in(retry, now))
            if wait > 0:
                await ctx.clock.sleep(wait)
            log.info(
                "retrying effect",
                extra={
                    "position": record.position,
                    "effect": retry.effect,
                    "attempt": retry.attempt,
                },
            )
            try:
                await ctx.runner.rerun(record, retry)
            finally:
                ctx.retry_heads.release(record.topic, record.partition)

    ctx.topology.app.agent(ctx.topology.reads(agent_name), name=agent_name)(retry_agent)
