"""Sluice's faust app and Kafka transport: faust's aiokafka driver with two changes.

1. **Fetch wait.** faust builds its aiokafka consumer with ``fetch_max_wait_ms=1500``
   (hard-coded). aiokafka leaves a partition out of the next fetch request while it still
   holds unconsumed records of it; records that reach such a partition then wait for the
   in-flight request to come back, up to the whole wait. On a loaded or slow machine that
   is most hops, and each hop of the pipeline took 1.5-2.4 s at p50 while no process was
   saturated. We set the wait (``SLUICE_CONSUMER_FETCH_WAIT``, default 50 ms): an idle
   worker then asks the broker 20 times a second, which costs the broker little.
2. **Delivery barrier before every commit.** The worker's outputs go through
   :class:`connectors.kafka_outbox.KafkaOutbox` (librdkafka), not faust's producer, so
   faust's own ``producer.flush()`` before a commit no longer covers them. The consumer
   awaits the app's barriers first, on every commit path (periodic, rebalance, shutdown,
   transactional), so an input's offset is committed only once its outputs are durable.
   The offsets the broker accepted are kept (:meth:`SluiceApp.committed_offset`): the
   orders join forgets an input's emits once its offset is committed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = ["Barrier", "SluiceApp"]

Barrier = Callable[[], Awaitable[None]]


class SluiceApp(faust.App):
    """A faust app whose consumer waits for :attr:`barriers` before each commit."""

    def __init__(self, *args: Any, fetch_max_wait_s: float = 0.05, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fetch_max_wait_s = fetch_max_wait_s
        self.barriers: list[Barrier] = []
        #: (topic, partition) -> the offset last committed by this worker.
        self.committed: dict[tuple[str, int], int] = {}

    def committed_offset(self, topic: str, partition: int) -> int | None:
        """The offset this worker last committed for a partition (the next offset to
        read), or None before its first commit of it.

        Only commits the broker accepted count (faust's own record of committed offsets
        is updated even when a commit failed in a rebalance), so an offset below it is
        never read again, by this worker or the next owner of the partition.
        """
        return self.committed.get((topic, partition))

    async def before_commit(self) -> None:
        for barrier in self.barriers:
            await barrier()

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads these when the consumer starts (it builds its Fetcher then);
        # faust passes no way to set them. tests/test_worker_transport.py checks both.
        app = cast(SluiceApp, self.app)
        consumer._fetch_max_wait_ms = int(app.fetch_max_wait_s * 1000)
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _commit_offsets(self, offsets: Mapping[Any, int], *args: Any, **kwargs: Any) -> bool:
        await cast(SluiceApp, self.app).before_commit()
        result: bool = await super()._commit_offsets(offsets, *args, **kwargs)
        return result

    async def _commit(self, offsets: Mapping[Any, int]) -> bool:
        assignment = self.assignment()
        done: bool = await super()._commit(offsets)
        if done:
            cast(SluiceApp, self.app).committed.update(
                {
                    (tp.topic, tp.partition): offset
                    for tp, offset in offsets.items()
                    if tp in assignment
                }
            )
        return done


class _Transport(faust_aiokafka.Transport):
    Consumer = _Consumer
