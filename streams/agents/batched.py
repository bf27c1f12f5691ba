"""The loop every batched side-effect agent shares: take a batch, run the named effect.

Batches are *adaptive*. A batch ends at once when its input is drained: nothing more is
buffered and Kafka has nothing newer for the partition of its last record (the consumer's
high watermark). So at low load every record is its own batch and waits for nobody.
While the agent is behind (a backlog after a restart, a burst), a batch keeps taking
records for up to ``SLUICE_WORKER_BATCH_WITHIN`` (default 200 ms) or
``SLUICE_WORKER_BATCH_SIZE`` of them, so one Postgres transaction and one Elasticsearch
bulk request carry many records.

Both halves matter. faust's ``take_events(within=200 ms)`` made every record wait for the
tick at low load (most of the 253 ms from webhook to order PAID in ``bench.orders``).
Flushing whenever the in-memory queue was empty, without the lag check, made one-record
batches during a backlog, because faust hands records to an agent one at a time: their
per-batch overhead starved the worker's one thread, and the orders fault test's restarted
worker could not catch up in four minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Any

from streams.context import WorkerContext
from streams.effects import Effect
from streams.observe import record_scope
from streams.records import Inbound

__all__ = ["agent_batches", "behind_head", "drained_batches", "register_batched"]

Behind = Callable[[Any], bool]


def behind_head(consumer: Any) -> Behind:
    """Whether Kafka already holds records after ``event`` in its partition, by the high
    watermark of the consumer's last fetch (unknown: not behind)."""

    def behind(event: Any) -> bool:
        message = event.message
        try:
            highwater = consumer.highwater(message.tp)
        except Exception:  # revoked meanwhile, or not fetched yet: do not wait
            return False
        return highwater is not None and message.offset + 1 < highwater

    return behind


async def drained_batches(
    stream: Any, max_size: int, max_wait_s: float, behind: Behind
) -> AsyncGenerator[list[Any], None]:
    """Yield lists of faust events, as the module docstring describes.

    A pump task moves events from the stream into a bounded queue, so waiting for more
    events never cancels faust's own iterator. Acks are ours: events are acked only once
    the caller is done with their batch (its loop body returned), so an offset is
    committed only after its effect ran or its record went to retry/dlq; a batch whose
    loop body raised, or that shutdown cut short, is never acked: it is consumed again.
    """
    stream.enable_acks = False
    ready: asyncio.Queue[Any] = asyncio.Queue(maxsize=max_size)

    async def pump() -> None:
        async for event in stream.events():
            await ready.put(event)

    pumping = asyncio.ensure_future(pump())
    loop = asyncio.get_running_loop()
    try:
        while True:
            first = await _take(ready, pumping, None)
            if first is _ENDED:
                return
            batch = [first]
            deadline = loop.time() + max_wait_s
            while len(batch) < max_size:
                if not ready.empty():
                    batch.append(ready.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0 or not behind(batch[-1]):
                    break
                more = await _take(ready, pumping, remaining)
                if more is _ENDED:
                    return  # stopping: an unfinished batch is not handled, not acked
                if more is _TIMED_OUT:
                    break
                batch.append(more)
            with record_scope([Inbound.from_faust(event) for event in batch]):
                yield batch
            # Reached only once the caller's loop body for this batch returned. An
            # exception there closes this generator at the yield: the batch is never
            # acked, so its offsets cannot commit (see streams/agents/acking.py).
            for event in batch:
                await stream.ack(event)
    finally:
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pumping


_TIMED_OUT = object()
_ENDED = object()


async def _take(
    ready: asyncio.Queue[Any], pumping: asyncio.Future[None], wait_s: float | None
) -> Any:
    """The next event, ``_TIMED_OUT`` after ``wait_s`` seconds, or ``_ENDED`` once the
    stream ended with nothing left (its error, if it failed, is raised here).

    Waits with ``asyncio.wait``, never by cancelling a ``get`` that may already hold an
    event (a cancelled ``Queue.get`` leaves its item in the queue).
    """
    if not ready.empty():
        return ready.get_nowait()
    getting = asyncio.ensure_future(ready.get())
    try:
        await asyncio.wait([getting, pumping], timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getting.done():
            getting.cancel()
    if getting.done() and not getting.cancelled():
        return getting.result()
    if pumping.done():
        pumping.result()  # the stream failed: its error surfaces in the agent
        return _ENDED
    return _TIMED_OUT


def agent_batches(ctx: WorkerContext, stream: Any) -> AsyncGenerator[list[Any], None]:
    """``drained_batches`` of an agent's stream, sized and timed by the worker's settings."""
    settings = ctx.settings
    return drained_batches(
        stream,
        settings.worker_batch_size,
        settings.worker_batch_within_s,
        behind_head(ctx.topology.app.consumer),
    )


def register_batched(ctx: WorkerContext, name: str, effect: Effect) -> None:
    """Register ``effect`` under ``name`` (so retry agents can re-run it) and an agent of
    the same name that feeds it adaptive batches from the topics ``name`` reads."""
    ctx.runner.register(name, effect)

    async def agent(stream: Any) -> None:
        async for events in agent_batches(ctx, stream):
            await ctx.runner.run(name, [Inbound.from_faust(event) for event in events])

    ctx.topology.app.agent(ctx.topology.reads(name), name=name)(agent)
