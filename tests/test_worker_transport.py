"""Sluice's faust transport: the consumer's fetch wait, the barrier before each commit,
and the adaptive batches of the side-effect agents."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from streams.agents.acking import acked_events
from streams.agents.batched import drained_batches
from streams.transport import SluiceApp


def _app(**kwargs: Any) -> SluiceApp:
    # Nothing connects: the broker address is never dialled in these tests.
    return SluiceApp("test-transport", broker="kafka://127.0.0.1:9", autodiscover=False, **kwargs)


async def test_the_worker_consumer_uses_our_fetch_wait_not_fausts_1500_ms() -> None:
    app = _app(fetch_max_wait_s=0.05)
    consumer = app.consumer._thread._create_worker_consumer(app.transport)  # type: ignore[attr-defined]
    try:
        assert consumer._fetch_max_wait_ms == 50
    finally:
        await consumer.stop()


class _Refused(Exception):
    pass


async def test_every_commit_waits_for_the_barriers_first_and_a_failed_one_stops_it() -> None:
    app = _app()
    calls: list[str] = []

    async def delivered() -> None:
        calls.append("delivered")

    async def lost() -> None:
        calls.append("lost")
        raise _Refused

    app.barriers += [delivered, lost]
    # The commit never reaches the consumer (which is not even started): the failed
    # barrier's exception is what comes out, so no offset can be committed past it.
    with pytest.raises(_Refused):
        await app.consumer._commit_offsets({})  # type: ignore[attr-defined]
    assert calls == ["delivered", "lost"]


@dataclass(frozen=True)
class _Message:
    """The part of a faust message the worker reads (its trace and log scope)."""

    topic: str = "webhooks.stripe"
    partition: int = 0
    offset: int = 0
    key: bytes | None = None
    value: bytes = b""
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class _Event:
    value: int
    acked: bool = False
    message: _Message = field(default_factory=_Message)


@dataclass
class _StreamStandIn:
    """What ``drained_batches`` uses of a faust stream: ``events()`` and ``ack()``. A
    stand-in, not faust: these tests pin the batching rule (when a batch ends, when its
    events are acked); the real faust stream runs it in every pipeline, orders and fault
    test. An event with a negative value ends the stream (faust stopping it)."""

    queue: asyncio.Queue[_Event] = field(default_factory=asyncio.Queue)
    enable_acks: bool = True

    async def events(self) -> AsyncIterator[_Event]:
        while True:
            event = await self.queue.get()
            if event.value < 0:
                return
            yield event

    async def ack(self, event: _Event) -> None:
        event.acked = True


def _at_head(_event: Any) -> bool:
    return False


def _behind(_event: Any) -> bool:
    return True


#: Long enough that a test finishing well within its 5 s bound proves nobody waited.
LONG_WAIT_S = 60.0


async def _values(batches: AsyncIterator[list[_Event]], count: int) -> list[list[int]]:
    seen: list[list[int]] = []
    while sum(map(len, seen)) < count:
        batch = await asyncio.wait_for(anext(batches), timeout=5)
        seen.append([e.value for e in batch])
    return seen


async def test_at_the_head_a_batch_ends_when_the_buffer_is_drained_or_full() -> None:
    stream = _StreamStandIn()
    for value in range(5):
        stream.queue.put_nowait(_Event(value))
    batches = drained_batches(stream, 3, LONG_WAIT_S, _at_head)
    seen = await _values(batches, 5)
    assert seen[0] == [0, 1, 2]  # full
    assert [v for batch in seen for v in batch] == [0, 1, 2, 3, 4]  # drained: no wait
    assert stream.enable_acks is False  # acks are the batch loop's


async def test_a_lone_record_at_the_head_is_its_own_batch_at_once() -> None:
    stream = _StreamStandIn()
    batches = drained_batches(stream, 500, LONG_WAIT_S, _at_head)
    pending = asyncio.ensure_future(anext(batches))
    stream.queue.put_nowait(_Event(7))
    batch = await asyncio.wait_for(pending, timeout=5)
    assert [e.value for e in batch] == [7]


async def test_behind_the_head_a_batch_waits_for_more_records() -> None:
    stream = _StreamStandIn()
    batches = drained_batches(stream, 3, LONG_WAIT_S, _behind)
    pending = asyncio.ensure_future(anext(batches))
    for value in range(3):
        stream.queue.put_nowait(_Event(value))
        await asyncio.sleep(0)  # one at a time, as faust hands them over
    batch = await asyncio.wait_for(pending, timeout=5)
    assert [e.value for e in batch] == [0, 1, 2]  # one batch, not three


async def test_behind_the_head_a_batch_waits_at_most_the_batch_window() -> None:
    stream = _StreamStandIn()
    stream.queue.put_nowait(_Event(1))
    batch = await asyncio.wait_for(anext(drained_batches(stream, 500, 0.05, _behind)), 5)
    assert [e.value for e in batch] == [1]


async def test_events_are_acked_only_after_their_batch_was_handled() -> None:
    stream = _StreamStandIn()
    for value in range(2):
        stream.queue.put_nowait(_Event(value))
    batches = drained_batches(stream, 10, LONG_WAIT_S, _at_head)
    [batch] = [await asyncio.wait_for(anext(batches), timeout=5)]
    assert not any(e.acked for e in batch)  # the effect has not run yet
    following = asyncio.ensure_future(anext(batches))  # the loop body returned
    stream.queue.put_nowait(_Event(2))
    await asyncio.wait_for(following, timeout=5)
    assert all(e.acked for e in batch)


async def test_records_of_an_unfinished_batch_are_never_acked() -> None:
    # The stream stops (the worker shuts down) while a batch is still filling: its
    # records were never handled, so they stay unacked and are consumed again.
    stream = _StreamStandIn()
    held = [_Event(0), _Event(1)]
    for event in held:
        stream.queue.put_nowait(event)
    stream.queue.put_nowait(_Event(-1))
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(drained_batches(stream, 10, LONG_WAIT_S, _behind)), 5)
    assert not any(e.acked for e in held)


class _Bug(Exception):
    pass


async def _fail_on(items: AsyncIterator[Any], failing: Callable[[Any], bool]) -> list[Any]:
    """Loop over ``items`` like an agent whose body raises ``_Bug`` at the first item
    ``failing`` accepts; returns the items seen."""
    seen: list[Any] = []
    try:
        async for item in items:
            seen.append(item)
            if failing(item):
                raise _Bug
    except _Bug:
        return seen
    raise AssertionError("the loop body never failed")


async def test_a_batch_whose_loop_body_raised_is_never_acked() -> None:
    # faust's own iterators ack in a ``finally``: the failed batch would commit. Ours
    # ack only once the loop body returned.
    stream = _StreamStandIn()
    for value in range(3):
        stream.queue.put_nowait(_Event(value))
    batches = drained_batches(stream, 10, LONG_WAIT_S, _at_head)
    [batch] = await _fail_on(batches, lambda _batch: True)
    await batches.aclose()  # what the event loop does with an abandoned generator
    assert batch
    assert not any(e.acked for e in batch)


async def test_acked_events_acks_an_event_only_after_its_loop_body_returned() -> None:
    stream = _StreamStandIn()
    first, poisoned = _Event(0), _Event(1)
    for event in (first, poisoned, _Event(2)):
        stream.queue.put_nowait(event)
    events = acked_events(stream)
    assert await _fail_on(events, lambda event: event is poisoned) == [first, poisoned]
    await events.aclose()
    assert stream.enable_acks is False  # faust's own per-event acks are off
    assert first.acked
    assert not poisoned.acked
