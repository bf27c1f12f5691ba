"""Durable publishing: a record is acknowledged only once Kafka says it is durable.

``KafkaPublisher`` wraps confluent-kafka's idempotent producer with ``acks=all``. Each
record gets one asyncio future, resolved by the producer's delivery report, so
``publish`` returns only after the broker's acknowledgement (EventGate's "guaranteed"
producer). If no report arrives within the timeout, ``publish`` raises ``NotDurable``
and the route answers 503: the sender retries, and dedupe downstream absorbs the rare
record that became durable after we gave up on it.

The producer's callbacks (delivery reports, ``error_cb``, librdkafka's log lines) are
served on the event loop itself, by a small task that calls ``poll(0)``: every
``BUSY_POLL_S`` while a ``publish`` is waiting, every ``IDLE_POLL_S`` otherwise (woken
at once when a publish starts). A delivery report then settles its future directly.
The earlier design, a thread blocked in ``poll`` handing each report to the loop with
``call_soon_threadsafe``, paid two GIL hand-offs and a self-pipe wake-up per record and
cost about a third of the ingress's throughput in ``bench.ingress``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from base.errors import SluiceError

__all__ = ["BUSY_POLL_S", "IDLE_POLL_S", "KafkaPublisher", "NotDurable", "Publisher"]

log = logging.getLogger(__name__)

#: How often the pump polls while a publish waits. When the loop is otherwise idle this
#: adds up to ~1 ms to an acknowledgement (epoll sleeps in whole milliseconds, so 0.5 ms
#: becomes 1 ms); under load the loop turns faster than this anyway. Shorter would not
#: help for that reason, and polling without sleeping would spin a core.
BUSY_POLL_S = 0.0005
#: How often the pump polls when nobody waits: late reports (for publishes that already
#: timed out) and connection errors are not urgent.
IDLE_POLL_S = 0.1


class NotDurable(SluiceError):
    """The record could not be made durable in Kafka in time (→ HTTP 503)."""


class Publisher(Protocol):
    async def publish(
        self, topic: str, key: str, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        """Return once the record is durable; raise ``NotDurable`` otherwise."""
        ...

    async def ready(self) -> bool:
        """True while the cluster is reachable."""
        ...


class KafkaPublisher:
    """Idempotent, ``acks=all`` producer with awaitable delivery.

    Use it from one event loop. Created inside a running loop, it starts serving the
    producer's callbacks at once; otherwise from the first ``publish`` or ``ready``.

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
            # Small batches: a webhook sender is waiting on each record, and at low rates
            # every millisecond of linger is a millisecond of its wait (1 ms also pays
            # for the pump's poll interval, see BUSY_POLL_S). Under load a batch still
            # takes every record produced in that millisecond (several at bench peak;
            # Kafka's CPU per record did not measurably rise against 2 ms).
            "linger.ms": 1,
            # No compression: batches are a few small webhooks, and every consumer
            # (aiokafka inside faust, kcat, partners' clients) must read them without
            # optional codec libraries.
            "compression.type": "none",
            # Java's (and aiokafka's, so faust's) partitioner: a key lands in the same
            # partition whoever writes it. librdkafka's default (CRC32) would put an
            # order.created from the ingress and the billing events the worker derives
            # for the same order id in different partitions, and the co-partitioned
            # orders⇄payments join would never see them together.
            "partitioner": "murmur2_random",
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
        self._closed = False
        # The pump task and what it needs; all touched on the loop's thread only.
        self._pump: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._waiting = 0  # publishes awaiting their delivery report
        self._ready_checked_at = 0.0
        self._ready = False
        self._ready_lock = asyncio.Lock()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            pass  # no loop yet: the first publish() or ready() starts the pump
        else:
            # Start now, so connection errors are logged before the first request.
            self._ensure_pump(loop)

    async def publish(
        self, topic: str, key: str, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        if self._closed:
            raise NotDurable("publisher is closed")
        loop = asyncio.get_running_loop()
        self._ensure_pump(loop)
        done: asyncio.Future[None] = loop.create_future()
        loop_thread = threading.get_ident()

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if threading.get_ident() == loop_thread:
                # Served by the pump's poll(), on the loop: no hand-off needed.
                _settle(done, err)
            else:
                # Served by flush() in close(), on a worker thread.
                loop.call_soon_threadsafe(_settle, done, err)

        try:
            self._producer.produce(
                topic,
                value=value,
                key=key.encode(),
                headers=list(headers),
                on_delivery=on_delivery,
            )
        except BufferError:
            raise NotDurable("producer queue is full") from None
        except KafkaException as exc:
            raise NotDurable(f"produce failed: {exc.args[0]}") from None
        if not self._waiting:
            self._wake.set()  # the pump may be in its idle wait: poll fast from now on
        self._waiting += 1
        # A timer rather than wait_for(shield(done)): no extra futures per record, and a
        # report that arrives after the deadline finds ``done`` settled and is dropped.
        timer = loop.call_later(self._timeout_s, _expire, done, self._timeout_s)
        try:
            await done
        finally:
            timer.cancel()
            self._waiting -= 1

    async def ready(self) -> bool:
        """Ask the cluster for metadata, at most once a second (probes can be frequent)."""
        # A process that only probes must still serve error_cb and log lines.
        self._ensure_pump(asyncio.get_running_loop())
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
        """Stop the pump, then flush what is queued (bounded) on a worker thread.

        Reports that ``flush`` serves still settle their publishes (via the loop).
        Afterwards ``publish`` raises ``NotDurable``.
        """
        self._closed = True
        pump, self._pump = self._pump, None
        if pump is not None and not pump.done():
            pump.cancel()
            if pump.get_loop() is asyncio.get_running_loop():
                # wait() rather than ``await pump``: a cancellation of close() itself
                # still propagates, the pump's own CancelledError does not.
                await asyncio.wait([pump])
        # In a thread: flush blocks for up to timeout_s, and the loop must keep running
        # to settle the publishes whose reports it serves.
        await asyncio.to_thread(self._producer.flush, timeout_s)

    def _ensure_pump(self, loop: asyncio.AbstractEventLoop) -> None:
        pump = self._pump
        if self._closed or (pump is not None and not pump.done() and pump.get_loop() is loop):
            return
        # First start, or the previous loop is gone: asyncio.Event binds to one loop.
        self._wake = asyncio.Event()
        self._pump = loop.create_task(self._run_pump(), name="kafka-publisher-pump")

    async def _run_pump(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake
        while True:
            self._poll()
            if self._waiting:
                await asyncio.sleep(BUSY_POLL_S)
                continue
            wake.clear()
            timer = loop.call_later(IDLE_POLL_S, wake.set)
            try:
                await wake.wait()
            finally:
                timer.cancel()

    def _poll(self) -> None:
        try:
            self._producer.poll(0)
        except Exception:
            # confluent-kafka re-raises a callback's exception from poll(). Keep serving:
            # a dead pump would leave every later publish to time out.
            log.exception("kafka producer callback failed")

    @staticmethod
    def _on_error(err: KafkaError) -> None:
        # Connection-level trouble; per-record outcomes arrive via delivery reports.
        log.warning("kafka client error", extra={"kafka_error": err.str()})


def _settle(done: asyncio.Future[None], err: KafkaError | None) -> None:
    if done.done():  # the caller timed out or was cancelled, and moved on
        return
    if err is None:
        done.set_result(None)
    else:
        done.set_exception(NotDurable(f"delivery failed: {err.str()}"))


def _expire(done: asyncio.Future[None], timeout_s: float) -> None:
    if not done.done():
        done.set_exception(NotDurable(f"no delivery report within {timeout_s:g}s"))
