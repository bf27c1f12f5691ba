"""The loop every batched side-effect agent shares: take a batch, run the named effect."""

from __future__ import annotations

from typing import Any

from streams.context import WorkerContext
from streams.effects import Effect
from streams.records import Inbound

__all__ = ["register_batched"]


def register_batched(ctx: WorkerContext, name: str, effect: Effect) -> None:
    """Register ``effect`` under ``name`` (so retry agents can re-run it) and an agent of
    the same name that feeds it batches from the topics ``name`` reads (per topology).

    Faust acks a batch's events only after the loop body returns, so a batch is
    committed once its effect succeeded or its records went to retry/dlq.
    """
    ctx.runner.register(name, effect)
    settings = ctx.settings

    async def agent(stream: Any) -> None:
        async for events in stream.take_events(
            settings.worker_batch_size, within=settings.worker_batch_within_s
        ):
            await ctx.runner.run(name, [Inbound.from_faust(event) for event in events])

    ctx.topology.app.agent(ctx.topology.reads(name), name=name)(agent)
