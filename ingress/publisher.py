"""Durable publishing: a record is acknowledged only once Kafka says it is durable.

``KafkaPublisher`` wraps confluent-kafka's idempotent producer with ``acks=all``. A
background thread serves the producer's delivery reports and resolves one asyncio future
per record, so ``publish`` returns only after the broker's acknowledgement (EventGate's
"guaranteed" producer). If no report arrives within the timeout, ``publish`` raises
``NotDurable`` and the route answers 503: the sender retries, and dedupe downstream absorbs
the rare record that became durable after we gave up on it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from sluice.errors import SluiceError

__all__ = ["KafkaPublisher", "NotDurable", "Publisher"]

log = logging.getLogger(__name__)


class NotDurable(SluiceError):
    """The record could not be made durable in Kafka in time (→ HTTP 503)."""


class Publisher(Protocol):
    async def publish(self, topic: str, key: str, value: bytes, headers: Mapping[str, str]) -> None:
        """Return once the record is durable; raise ``NotDurable`` otherwise."""
        ...

    async def ready(self) -> bool:
        """True while the cluster is reachable."""
        ...


class KafkaPublisher:
    """Idempotent, ``acks=all`` producer with awaitable delivery.

    :param timeout_s: how long ``publish`` waits for the delivery report.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        timeout_s: float = 5.0,
        client_id: str = "sluice-ingress",
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self._timeout_s = timeout_s
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap_servers,
            "client.id": client_id,
            "enable.idempotence": True,
            "acks": "all",
            # Small batches: a webhook sender is waiting on each record.
            "linger.ms": 2,
            # No compression: batches are a few small webhooks, and every consumer
            # (aiokafka inside faust, kcat, partners' clients) must read them without
            # optional codec libraries.
            "compression.type": "none",
            # librdkafka keeps retrying until this deadline; past it the record fails
            # for good. Bounded so a long outage does not hoard memory.
            "delivery.timeout.ms": max(int(timeout_s * 1000) * 6, 30_000),
            "reconnect.backoff.max.ms": 1000,
            "error_cb": self._on_error,
            # librdkafka's own log lines go through logging, not raw to stderr.
            "logger": logging.getLogger("librdkafka"),
        }
        config.update(extra_config or {})
        self._producer = Producer(config)
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="kafka-publisher", daemon=True)
        self._poller.start()
        self._ready_checked_at = 0.0
        self._ready = False
        self._ready_lock = asyncio.Lock()

    async def publish(self, topic: str, key: str, value: bytes, headers: Mapping[str, str]) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            # Runs on the poller thread; hand the outcome back to the event loop.
            loop.call_soon_threadsafe(_settle, done, err)

        try:
            self._producer.produce(
                topic,
                value=value,
                key=key.encode(),
                headers=[(name, text.encode()) for name, text in headers.items()],
                on_delivery=on_delivery,
            )
        except BufferError:
            raise NotDurable("producer queue is full") from None
        except KafkaException as exc:
            raise NotDurable(f"produce failed: {exc.args[0]}") from None
        try:
            await asyncio.wait_for(asyncio.shield(done), self._timeout_s)
        except TimeoutError:
            raise NotDurable(f"no delivery report within {self._timeout_s:g}s") from None

    async def ready(self) -> bool:
        """Ask the cluster for metadata, at most once a second (probes can be frequent)."""
        async with self._ready_lock:
            if time.monotonic() - self._ready_checked_at >= 1.0:
                self._ready = await asyncio.to_thread(self._metadata_ok)
                self._ready_checked_at = time.monotonic()
            return self._ready

    def _metadata_ok(self) -> bool:
        try:
            metadata = self._producer.list_topics(timeout=1.0)
        except KafkaException:
            return False
        return bool(metadata.brokers)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is queued (bounded), then stop the poller thread."""
        await asyncio.to_thread(self._producer.flush, timeout_s)
        self._closed.set()
        await asyncio.to_thread(self._poller.join, 2.0)

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)

    @staticmethod
    def _on_error(err: KafkaError) -> None:
        # Connection-level trouble; per-record outcomes arrive via delivery reports.
        log.warning("kafka client error", extra={"kafka_error": err.str()})


def _settle(done: asyncio.Future[None], err: KafkaError | None) -> None:
    if done.done():  # the caller timed out and moved on
        return
    if err is None:
        done.set_result(None)
    else:
        done.set_exception(NotDurable(f"delivery failed: {err.str()}"))
