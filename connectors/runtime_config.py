"""The runtime config follower: every process's live copy of ``config.runtime``.

Each ingress and worker process runs one (``ConfigFollower``). It reads the compacted,
one-partition topic from the beginning when it starts, so the process starts from the
latest value of every key before it serves, then keeps following it, so a change written
by any ingress is applied here within the time one poll takes (well under the 2 s the
contract asks). The code that obeys a key asks :meth:`ConfigFollower.value` on every use:
nothing is cached elsewhere, so nothing needs to be told of a change.

Design (like ``ingress/replies.py``):

- **Explicit assignment, no group.** Partition 0 is *assigned* at offset 0, never
  subscribed: no rebalance ever pauses it, nothing is committed, and every process
  reads every entry. ``group.id`` is unique per process only because librdkafka wants one.
- **A thread polls.** confluent-kafka's ``poll`` blocks; the thread decodes each entry and
  swaps it into a dict under a lock, which :meth:`value` reads from any thread or loop.
- **Last in log order wins.** An entry replaces the key's current one whatever its
  ``configVersion``: that is the rule compaction applies too (it keeps the last record
  per key), so a process following live and one starting from the compacted topic
  always agree. A tombstone (null value) puts the key back to its default.
- **What cannot be applied is logged, never raised.** An entry that does not decode,
  names an undeclared key (another deployment's partner, a key of a newer release) or
  holds a value its key refuses keeps the key's previous value and logs a warning.
- **Start-up is bounded.** :meth:`start` returns once the topic is read to the end it
  had when the process started, or after ``start_timeout_s`` with a warning (Kafka down:
  the process runs on its defaults and catches up in the background, logged once done).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from base.errors import InvalidEvent, TransientError
from connectors.kafka_reader import end_offsets, high_watermarks
from schemas.catalog import TopicSpec, topic_spec
from schemas.codec import Codec
from schemas.runtime_keys import BadValue, RuntimeKeys

__all__ = ["CATALOG_TOPIC", "ConfigEntry", "ConfigFollower", "config_topic_spec"]

log = logging.getLogger(__name__)

CATALOG_TOPIC = "config.runtime"
"""The catalog topic whose schema entries are encoded with (``SLUICE_CONFIG_TOPIC`` may
name another topic of the same shape)."""
_POLL_S = 0.1


def config_topic_spec(name: str = CATALOG_TOPIC) -> TopicSpec:
    """The spec of a runtime config topic named ``name``: ``config.runtime``'s (compacted,
    one partition) under that name."""
    return dataclasses.replace(topic_spec(CATALOG_TOPIC), name=name)


_RETRY_ASSIGN_S = 1.0
_METADATA_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class ConfigEntry:
    """The value a key was last set to, as read from the topic."""

    key: str
    value: Any
    version: int
    updated_at_ms: int
    updated_by: str | None
    event_id: str


class ConfigFollower:
    """Follows ``topic`` (one partition) and holds the current entry of each declared key.

    :param keys: the declared keys (``schemas.runtime_keys.declared_keys``).
    :param topic: the topic to follow (``SLUICE_CONFIG_TOPIC``).
    :param start_timeout_s: how long :meth:`start` waits to have read the topic to its end.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        codec: Codec,
        keys: RuntimeKeys,
        *,
        topic: str = CATALOG_TOPIC,
        start_timeout_s: float = 10.0,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._codec = codec
        self.keys = keys
        self.topic = topic
        self._start_timeout_s = start_timeout_s
        self._extra_config = dict(extra_config or {})
        self._entries: dict[str, ConfigEntry] = {}
        self._position = 0  # offset of the next record to read
        self._caught_up = False
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the process reads -----------------------------------------------------------

    def value(self, key: str) -> Any:
        """The current value of ``key`` (its default while never set).

        :raises KeyError: ``key`` is not declared.
        """
        spec = self.keys[key]
        with self._changed:
            entry = self._entries.get(key)
        return spec.default if entry is None else entry.value

    def entry(self, key: str) -> ConfigEntry | None:
        """The entry ``key`` was last set by, or ``None`` (never set: at its default)."""
        with self._changed:
            return self._entries.get(key)

    def version(self, key: str) -> int:
        """``key``'s current version: 0 while it was never set."""
        entry = self.entry(key)
        return 0 if entry is None else entry.version

    @property
    def caught_up(self) -> bool:
        """True once the topic was read to the end it had at start-up."""
        with self._changed:
            return self._caught_up

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> bool:
        """Start following; block until the topic is read to its current end (at most
        ``start_timeout_s``). Whether it was. Idempotent."""
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._run, name="sluice-config-follower", daemon=True
            )
            self._thread.start()
        done = self._wait(lambda: self._caught_up, self._start_timeout_s)
        if not done:
            log.warning(
                "runtime config not read yet: running on the latest values seen (defaults "
                "at first) until it is",
                extra={"topic": self.topic},
            )
        return done

    def stop(self) -> None:
        """Stop following (values stay as they are). Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        thread.join()

    def sync(self, timeout_s: float = 5.0) -> bool:
        """Block until everything on the topic now has been read (a writer checks its
        ``If-Match`` against the latest durable state). Whether that happened in time.

        :raises TransientError: the topic's end cannot be asked for.
        """
        end = end_offsets(self._bootstrap, self.topic, timeout_s=timeout_s).get(0, 0)
        return self._wait(lambda: self._position >= end, timeout_s)

    def wait_for(self, key: str, event_id: str, timeout_s: float) -> bool:
        """Block until ``key``'s entry is the one written with ``event_id`` (or a later
        one): a writer answers once its own process applies its write."""
        target_seen = False

        def seen() -> bool:
            nonlocal target_seen
            entry = self._entries.get(key)
            target_seen = target_seen or (entry is not None and entry.event_id == event_id)
            return target_seen

        return self._wait(seen, timeout_s)

    def _wait(self, condition: Any, timeout_s: float) -> bool:
        with self._changed:
            return bool(self._changed.wait_for(condition, timeout=timeout_s))

    # -- the following thread -------------------------------------------------------------

    def _run(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self._bootstrap,
                # Required by librdkafka even without subscribing; unique, so it never
                # joins anyone's group. Nothing is committed.
                "group.id": f"sluice-config-{uuid.uuid4().hex}",
                "client.id": "sluice-config-follower",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "logger": logging.getLogger("librdkafka"),
                **self._extra_config,
            }
        )
        try:
            start_end = self._assign(consumer)
            if start_end is not None:
                self._follow(consumer, start_end)
        except Exception:
            # Not expected; the process keeps the values it has (logged, not raised).
            log.exception("runtime config follower stopped", extra={"topic": self.topic})
        finally:
            consumer.close()

    def _assign(self, consumer: Any) -> int | None:
        """Assign partition 0 at the beginning; the end it had then (``None``: stopping)."""
        warned = False
        while not self._stopping.is_set():
            try:
                end = high_watermarks(consumer, self.topic, timeout_s=_METADATA_TIMEOUT_S)
            except (KafkaException, TransientError) as exc:
                if not warned:
                    log.warning(
                        "cannot read the runtime config topic yet; retrying",
                        extra={"topic": self.topic, "error": str(exc)},
                    )
                    warned = True
                self._stopping.wait(_RETRY_ASSIGN_S)
                continue
            consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
            return end.get(0, 0)
        return None

    def _follow(self, consumer: Any, start_end: int) -> None:
        if start_end == 0:
            self._mark_caught_up()
        last_error = 0.0
        while not self._stopping.is_set():
            message = consumer.poll(_POLL_S)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    self._advance(message.offset())
                    if not self._caught_up:
                        self._mark_caught_up()
                elif time.monotonic() > last_error:
                    log.warning("reading runtime config failed", extra={"error": error.str()})
                    last_error = time.monotonic() + 30.0
                continue
            try:
                self._apply(message)
            except Exception:
                log.exception(
                    "runtime config entry not applied", extra={"offset": message.offset()}
                )
            self._advance(message.offset() + 1)
            if not self._caught_up and self._position >= start_end:
                self._mark_caught_up()

    def _advance(self, position: int) -> None:
        with self._changed:
            if position > self._position:
                self._position = position
            self._changed.notify_all()

    def _mark_caught_up(self) -> None:
        with self._changed:
            self._caught_up = True
            count = len(self._entries)
            self._changed.notify_all()
        log.info("runtime config read", extra={"topic": self.topic, "keys_set": count})

    def _apply(self, message: Any) -> None:
        raw_key = message.key()
        key = raw_key.decode("utf-8", "replace") if isinstance(raw_key, bytes) else ""
        where = {"key": key, "offset": message.offset(), "topic": self.topic}
        spec = self.keys.get(key)
        if spec is None:
            log.warning("runtime config entry for an undeclared key ignored", extra=where)
            return
        value = message.value()
        if value is None:  # a tombstone: back to the default
            with self._changed:
                self._entries.pop(key, None)
                self._changed.notify_all()
            log.info("runtime config key reset to its default", extra=where)
            return
        try:
            record = self._codec.decode(value, topic=CATALOG_TOPIC).record
            entry = ConfigEntry(
                key=key,
                value=spec.from_text(str(record["value"])),
                version=int(record["configVersion"]),
                updated_at_ms=_millis(record["updatedAt"]),
                updated_by=record.get("updatedBy"),
                event_id=str(record["eventId"]),
            )
        except (InvalidEvent, TransientError, BadValue, KeyError, TypeError, ValueError) as exc:
            log.warning(
                "runtime config entry cannot be applied: the key keeps its value",
                extra={**where, "error": str(exc)},
            )
            return
        with self._changed:
            self._entries[key] = entry
            self._changed.notify_all()
        log.info(
            "runtime config applied",
            extra={
                **where,
                "version": entry.version,
                "value": spec.to_text(entry.value),
                "updated_by": entry.updated_by,
                "live": spec.live,
            },
        )


def _millis(value: Any) -> int:
    """A decoded ``timestamp-millis`` (fastavro gives a datetime) as epoch milliseconds."""
    if isinstance(value, int):
        return value
    return int(value.timestamp() * 1000)
