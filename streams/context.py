"""What every agent is given: codec, clock, connectors, the effect runner, the topology."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from connectors.postgres import PostgresProjection
from schemas.codec import Codec
from sluice.clock import Clock
from sluice.settings import Settings
from streams.effects import EffectRunner
from streams.topology import Topology

__all__ = ["FaustOutbox", "WorkerContext"]


class FaustOutbox:
    """Produce through the faust app's producer.

    Sends are not awaited one by one: faust flushes its producer before it commits the
    consumed offsets, so a record is durable before its input is marked done
    (at-least-once), without a round trip per record.
    """

    def __init__(self, topology: Topology) -> None:
        self._topology = topology

    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        await self._topology.topic(topic).send(key=key, value=value, headers=list(headers))


@dataclass
class WorkerContext:
    settings: Settings
    codec: Codec
    clock: Clock
    topology: Topology
    outbox: FaustOutbox
    runner: EffectRunner
    projection: PostgresProjection
    _started: bool = field(default=False, init=False)
    _start_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    async def connectors(self) -> PostgresProjection:
        """The started projection; started on first use, from inside the worker's loop.

        Lazy because faust owns the event loop and offers no awaited start-up hook for
        our own clients; a failure here is a TransientError handled like any other.
        """
        if not self._started:
            async with self._start_lock:
                if not self._started:
                    await self.projection.start()
                    self._started = True
        return self.projection
