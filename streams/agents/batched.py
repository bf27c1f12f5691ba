"""The loop every batched side-effect agent shares: take a batch, run the named effect.

Batches are *adaptive*: a batch ends as soon as the agent's input is drained (nothing
more already fetched), or at ``SLUICE_WORKER_BATCH_SIZE`` records. At low load every
record is its own batch and waits for nobody; under load, records pile up while the
previous batch is written, and the next batch takes them all. A fixed batching tick
(faust's ``take_events(within=...)``, 200 ms before) made every record wait for it at
low load: it was most of the 253 ms from webhook to order PAID in ``bench.orders``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from streams.context import WorkerContext
from streams.effects import Effect
from streams.records import Inbound

__all__ = ["drained_batches", "register_batched"]


async def drained_batches(stream: Any, max_size: int) -> AsyncIterator[list[Any]]:
    """Yield lists of faust events: whatever is buffered, up to ``max_size``.

    Acks are ours: an event is acked only once the caller is done with its batch (the
    caller's loop body returned), so an offset is committed only after its effect ran
    or its record went to retry/dlq.
    """
    stream.enable_acks = False
    queue = stream.channel.queue
    batch: list[Any] = []
    async for event in stream.events():
        batch.append(event)
        if len(batch) < max_size and not queue.empty():
            continue
        try:
            yield batch
        finally:
            for done in batch:
                await stream.ack(done)
            batch = []


def register_batched(ctx: WorkerContext, name: str, effect: Effect) -> None:
    """Register ``effect`` under ``name`` (so retry agents can re-run it) and an agent of
    the same name that feeds it adaptive batches from the topics ``name`` reads."""
    ctx.runner.register(name, effect)
    max_size = ctx.settings.worker_batch_size

    async def agent(stream: Any) -> None:
        async for events in drained_batches(stream, max_size):
            await ctx.runner.run(name, [Inbound.from_faust(event) for event in events])

    ctx.topology.app.agent(ctx.topology.reads(name), name=name)(agent)
