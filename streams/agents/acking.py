"""Acks that follow the worker's failure rule: an event is acked only once it was handled.

faust's stream iterators ack an event in a ``finally``: when the agent's body raises, the
event is acked all the same, and its offset commits although the record was neither
processed, retried nor dead-lettered. Agents iterate :func:`acked_events` (one event at a
time) or ``batched.drained_batches`` (batches) instead, which ack only after the loop
body returned; an exception stops the worker (``streams/app.py`` gives every agent
mode's ``CrashingSupervisor``), so the record is consumed again after the restart.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from streams.observe import record_scope
from streams.records import Inbound

__all__ = ["acked_events"]


async def acked_events(stream: Any) -> AsyncGenerator[Any, None]:
    """The faust events of ``stream``, each acked once the caller's loop body for it
    returned (the caller asked for the next event or ended the loop normally).

    An exception in the loop body closes this generator at its ``yield``, so the event
    in hand is never acked; neither is an event cut short by shutdown. The loop body runs
    in the record's span and log context (``streams.observe.record_scope``).
    """
    stream.enable_acks = False
    async for event in stream.events():
        # The caller's loop body runs inside the record's span and log context.
        with record_scope([Inbound.from_faust(event)]):
            yield event
        await stream.ack(event)
