"""Request/reply over Kafka: wait for the ``sluice.commands.Reply`` to a command.

Some internal routes publish a command and would rather answer with its outcome than
with a bare 202: the worker that finishes the command writes a Reply carrying the
command's ``taskId`` to the ``replies`` topic, and the ingress holding that task answers
its caller with the reply's status and body (or 202 + ``taskId`` after a timeout). This
module is the waiting half and knows nothing about what the commands are (payments now,
cache invalidation and lead delivery later).

Design:

- **Every ingress reads every reply.** Replies are keyed by task id, so a reply lands
  on any partition, and the ingress process that holds the waiting request can be any
  of several behind a load balancer. Each process therefore reads all partitions and
  ignores replies for task ids it is not waiting for. Replies are small and few (one
  per command whose caller waits), so this costs little; routing replies to the right
  process instead would need per-process topics or partitions to manage.
- **Explicit assignment, no group.** Each process uses its own unique ``group.id`` only
  because librdkafka requires one: partitions are *assigned*, never subscribed, so no
  rebalance ever pauses reading, and nothing is committed. A restarted process has no
  waiting requests, so it has no use for old replies.
- **Start at the high watermarks read at start-up.** Everything written after that
  point is read; nothing before it is (those replies answer requests of an earlier
  process). The watermarks are read and the partitions assigned before :meth:`start`
  returns (bounded, see ``assign_timeout_s``), i.e. before the app takes requests.
  When Kafka or the topic is not there yet, assignment keeps being retried in the
  background; meanwhile commands cannot be published either, so nobody is waiting.
- **Register before publishing.** :meth:`ReplyWaiter.expect` is called *before* the
  command is published: a worker can answer within milliseconds, and a reply that
  arrives before anyone expects it is dropped as unknown. Registering first makes that
  impossible; the handle is a context manager that unregisters on the way out, so a
  failed publish or a timeout leaves nothing behind.
- **A thread polls, the loop resolves.** confluent-kafka's ``poll`` blocks, so one
  daemon thread polls and decodes; each reply is handed to the event loop with
  ``call_soon_threadsafe``, which resolves the waiting future there (futures are not
  thread-safe). The registry is touched only on the loop; the thread's read of it to
  skip other processes' replies early is a harmless race: a task is registered before
  its command exists, so its reply can never be read before the registration.
- **First reply wins.** A redelivered command may be answered twice (with the same
  reply id); the second finds no waiting future and is ignored.

Partitions added to ``replies`` while a process runs are read only after its restart;
until then their replies time out into 202s, which callers must handle anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from base.errors import InvalidEvent, TransientError
from connectors.kafka_reader import high_watermarks
from schemas.codec import Codec

__all__ = ["REPLY_TOPIC", "PendingReply", "Reply", "ReplyWaiter"]

log = logging.getLogger(__name__)

REPLY_TOPIC = "replies"
_POLL_S = 0.2  # how long one poll blocks: bounds how long stop() waits for the thread
_RETRY_ASSIGN_S = 1.0
_METADATA_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a task: respond with ``status`` and the JSON text ``body``."""

    task_id: str
    status: int
    body: str
    event_id: str
    correlation_id: str

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Reply:
        return cls(
            task_id=str(record["taskId"]),
            status=int(record["status"]),
            body=str(record["body"]),
            event_id=str(record["eventId"]),
            correlation_id=str(record["correlationId"]),
        )


class PendingReply:
    """One expected reply. Use as a context manager around publish-and-wait, so the
    registration is dropped whatever happens (publish failure, timeout, cancellation)."""

    def __init__(self, waiter: ReplyWaiter, task_id: str, future: asyncio.Future[Reply]) -> None:
        self._waiter = waiter
        self.task_id = task_id
        self._future = future

    async def wait(self, timeout_s: float) -> Reply | None:
        """The reply, or ``None`` if none arrived within ``timeout_s``."""
        done, _ = await asyncio.wait({self._future}, timeout=timeout_s)
        return self._future.result() if done else None

    def cancel(self) -> None:
        """Stop waiting; a reply arriving later is ignored. Idempotent."""
        self._waiter._forget(self.task_id, self._future)

    def __enter__(self) -> PendingReply:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()


class ReplyWaiter:
    """Reads ``topic`` (every partition) and hands each reply to whoever expects it.

    Use from one event loop: :meth:`start` on it, then :meth:`expect` from its tasks.

    :param assign_timeout_s: how long :meth:`start` waits for the partitions to be
        assigned before returning anyway (assignment then continues in the background).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        codec: Codec,
        *,
        topic: str = REPLY_TOPIC,
        assign_timeout_s: float = 10.0,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._codec = codec
        self._topic = topic
        self._assign_timeout_s = assign_timeout_s
        self._extra_config = dict(extra_config or {})
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._assigned = threading.Event()

    @property
    def topic(self) -> str:
        """The topic replies are read from: what commands name as their ``replyTo``."""
        return self._topic

    @property
    def assigned(self) -> bool:
        """True once the partitions are assigned (replies written from then on are read)."""
        return self._assigned.is_set()

    @property
    def waiting(self) -> int:
        """How many replies are expected right now."""
        return len(self._pending)

    async def start(self) -> None:
        """Start reading at the current end of every partition. Idempotent."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="sluice-reply-waiter", daemon=True)
        self._thread.start()
        assigned = await asyncio.to_thread(self._assigned.wait, self._assign_timeout_s)
        if not assigned:
            log.warning(
                "reply topic not assigned yet; request/reply routes answer 202 until it is",
                extra={"topic": self._topic},
            )

    async def stop(self) -> None:
        """Stop reading and close the consumer; waiting requests time out. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        await asyncio.to_thread(thread.join)
        self._assigned.clear()

    def expect(self, task_id: str) -> PendingReply:
        """Register interest in ``task_id``'s reply. Call BEFORE publishing the command."""
        if task_id in self._pending:
            raise ValueError(f"task {task_id} is already expected")
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[task_id] = future
        return PendingReply(self, task_id, future)

    def _forget(self, task_id: str, future: asyncio.Future[Reply]) -> None:
        if self._pending.get(task_id) is future:
            del self._pending[task_id]
        if not future.done():
            future.cancel()

    def _deliver(self, reply: Reply) -> None:
        """On the loop: resolve the future waiting for ``reply``, if any."""
        future = self._pending.pop(reply.task_id, None)
        if future is not None and not future.done():
            future.set_result(reply)

    # -- the polling thread ------------------------------------------------------------

    def _run(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self._bootstrap,
                # Required by librdkafka even without subscribing; unique, so it can
                # never join (or disturb) anyone's group. Nothing is committed.
                "group.id": f"sluice-ingress-replies-{uuid.uuid4().hex}",
                "client.id": "sluice-ingress-replies",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                # Only used if an assigned offset is gone (retention): skip to the end.
                "auto.offset.reset": "latest",
                "logger": logging.getLogger("librdkafka"),
                **self._extra_config,
            }
        )
        try:
            if self._assign(consumer):
                self._poll_loop(consumer)
        except Exception:
            # Not expected; without this thread every request/reply call times out (202).
            log.exception("reply waiter stopped", extra={"topic": self._topic})
        finally:
            consumer.close()

    def _assign(self, consumer: Any) -> bool:
        """Assign every partition at its high watermark; retry until it works or stop."""
        warned = False
        while not self._stopping.is_set():
            try:
                positions = self._high_watermarks(consumer)
            except (KafkaException, TransientError) as exc:
                if not warned:
                    log.warning(
                        "cannot read the reply topic yet; retrying",
                        extra={"topic": self._topic, "error": str(exc)},
                    )
                    warned = True
                self._stopping.wait(_RETRY_ASSIGN_S)
                continue
            consumer.assign(positions)
            self._assigned.set()
            log.info(
                "reading replies",
                extra={"topic": self._topic, "partitions": len(positions)},
            )
            return True
        return False

    def _high_watermarks(self, consumer: Any) -> list[Any]:
        ends = high_watermarks(consumer, self._topic, timeout_s=_METADATA_TIMEOUT_S)
        return [TopicPartition(self._topic, partition, high) for partition, high in ends.items()]

    def _poll_loop(self, consumer: Any) -> None:
        last_error = 0.0
        while not self._stopping.is_set():
            message: Message | None = consumer.poll(_POLL_S)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                # Connection trouble is retried by librdkafka; say so at most every 30 s.
                if error.code() != KafkaError._PARTITION_EOF and time.monotonic() > last_error:
                    log.warning("reading replies failed", extra={"error": error.str()})
                    last_error = time.monotonic() + 30.0
                continue
            try:
                self._handle(message)
            except Exception:
                # One bad record must not end the thread (every wait would time out).
                log.exception("reply handling failed", extra={"offset": message.offset()})

    def _handle(self, message: Message) -> None:
        key = message.key()
        # Cheap early exit for other processes' replies (see the module docstring).
        if isinstance(key, bytes) and key.decode("utf-8", "replace") not in self._pending:
            return
        value = message.value()
        try:
            if not isinstance(value, bytes):
                raise InvalidEvent("empty reply value")
            reply = Reply.from_record(self._codec.decode(value, topic=self._topic).record)
        except (InvalidEvent, TransientError, KeyError, TypeError, ValueError) as exc:
            # Its caller times out into a 202 and can look the outcome up later.
            log.warning(
                "undecodable reply ignored",
                extra={
                    "partition": message.partition(),
                    "offset": message.offset(),
                    "error": str(exc),
                },
            )
            return
        loop = self._loop
        if loop is None:
            return
        # RuntimeError: the loop is closed, so nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._deliver, reply)
