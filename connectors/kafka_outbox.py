"""The worker's output producer: confluent-kafka (librdkafka), not faust's aiokafka one.

Agents hand records to :meth:`KafkaOutbox.send` without waiting for each delivery.
At-least-once needs every record an input produced to be durable before that input's
offset is committed, so :meth:`KafkaOutbox.flush` is a *delivery barrier*: it returns
once librdkafka holds nothing undelivered, and raises if any record failed for good.
The worker calls it right before every offset commit (``streams/transport.py``).

Why not faust's producer: in ``bench.pipeline``'s profile, aiokafka's producer and
faust's send path were about half of the normalise agent's CPU per event; librdkafka
batches and sends from its own threads, in C.

Use it from one event loop. Delivery reports are served by ``poll(0)`` on that loop
(after every send and while a barrier waits), so callbacks never cross threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from base.errors import SluiceError

__all__ = ["DeliveryFailed", "KafkaOutbox"]

log = logging.getLogger(__name__)

#: How long the barrier sleeps between polls while records are in flight. A commit
#: happens about once a second, so 1 ms of granularity is noise; polling without
#: sleeping would spin the loop's thread.
_BARRIER_POLL_S = 0.001


class DeliveryFailed(SluiceError):
    """A produced record could not be made durable (the input must not be committed)."""


class KafkaOutbox:
    """Idempotent ``acks=all`` producer with a flush that is a delivery barrier.

    A failed delivery is sticky: every later :meth:`flush` raises, so no offset is ever
    committed past a record whose output was lost; the worker stops, and its
    replacement re-reads from the last good commit.

    :param delivery_timeout_s: how long librdkafka retries a record before it fails.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str = "sluice-worker",
        delivery_timeout_s: float = 300.0,
        linger_ms: float = 1.0,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "client.id": client_id,
            "enable.idempotence": True,
            "acks": "all",
            # Under load librdkafka batches whatever arrives while a request is in
            # flight; at low load each millisecond of linger is a millisecond of latency
            # on every hop of the pipeline.
            "linger.ms": linger_ms,
            # Same as the ingress: consumers must not need optional codec libraries.
            "compression.type": "none",
            # Java's (and faust's) partitioner, so co-partitioned joins hold whoever
            # writes the key (see ingress/publisher.py).
            "partitioner": "murmur2_random",
            "delivery.timeout.ms": int(delivery_timeout_s * 1000),
            "reconnect.backoff.max.ms": 1000,
            "error_cb": _on_error,
            "logger": logging.getLogger("librdkafka"),
        }
        config.update(extra_config or {})
        self._producer = Producer(config)
        self._failure: str | None = None
        self._closed = False

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None and self._failure is None:
            self._failure = f"{msg.topic()}: {err.str()}"
            log.error(
                "output record not delivered", extra={"topic": msg.topic(), "error": err.str()}
            )

    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        """Queue one record; durable by the next :meth:`flush`."""
        if self._closed:
            raise DeliveryFailed("outbox is closed")
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=list(headers),
                    on_delivery=self._on_delivery,
                )
                break
            except BufferError:
                # librdkafka's queue is full (the broker is slow or away): wait for room
                # instead of failing the record; the agent's input waits with it.
                self._producer.poll(0)
                await asyncio.sleep(0.01)
            except KafkaException as exc:
                raise DeliveryFailed(f"produce to {topic} failed: {exc.args[0]}") from None
        # Serve the delivery reports that are ready (cheap when there are none), so the
        # report queue never grows with the stream.
        self._producer.poll(0)

    async def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every queued record is delivered.

        :raises DeliveryFailed: a record failed, now or earlier, or ``timeout_s`` passed
            with records still in flight.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        producer = self._producer
        while True:
            producer.poll(0)
            if len(producer) == 0:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise DeliveryFailed(
                    f"{len(producer)} records still in flight after {timeout_s:g}s"
                )
            await asyncio.sleep(_BARRIER_POLL_S)
        if self._failure is not None:
            raise DeliveryFailed(f"an output record was not delivered ({self._failure})")

    def in_flight(self) -> int:
        """Records queued or awaiting the broker's acknowledgement."""
        return len(self._producer)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued (bounded); later sends raise. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.flush(timeout_s)
        except DeliveryFailed as exc:
            log.error("outbox closed with undelivered records", extra={"error": str(exc)})


def _on_error(err: KafkaError) -> None:
    # Connection-level trouble; per-record outcomes arrive via delivery reports.
    log.warning("kafka client error", extra={"kafka_error": err.str()})
