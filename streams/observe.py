"""What the worker knows about the record in hand, for traces, logs and metrics.

:func:`record_scope` is entered by the agents' iterators (``acking.acked_events``,
``batched.drained_batches``) around each record or batch: a span continuing the
records' ``traceparent`` (the first record's, linked to the others' in a batch) and the
log context (event id and correlation id of a single record), so every line logged and
every sink called while handling it carry them. :class:`RetryHeads` holds the due time
of the record each retry agent waits on, for the ``retry head overdue`` gauge.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

from base.logs import log_context
from base.tracing import continue_trace
from schemas.headers import CORRELATION_ID, EVENT_ID, TRACEPARENT
from streams.records import Inbound, header_value

__all__ = ["RetryHeads", "record_scope"]


@contextlib.contextmanager
def record_scope(records: Sequence[Inbound]) -> Iterator[None]:
    """A span ``<topic> process`` and the log context for ``records`` (not empty)."""
    first = records[0]
    single = len(records) == 1
    with (
        continue_trace(
            f"{first.topic} process",
            header_value(first.headers, TRACEPARENT),
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": first.topic,
                "messaging.destination.partition.id": str(first.partition),
                "messaging.kafka.offset": first.offset,
                "messaging.batch.message_count": len(records),
            },
            links=[header_value(record.headers, TRACEPARENT) for record in records[1:]],
        ),
        log_context(
            event_id=header_value(first.headers, EVENT_ID) if single else None,
            correlation_id=header_value(first.headers, CORRELATION_ID) if single else None,
        ),
    ):
        yield


class RetryHeads:
    """The due time of the record each retry agent holds, by (topic, partition).

    Written by the agents (event loop), read by the metrics server's thread.
    """

    def __init__(self) -> None:
        self._due: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()

    def hold(self, topic: str, partition: int, due: float) -> None:
        with self._lock:
            self._due[(topic, partition)] = due

    def release(self, topic: str, partition: int) -> None:
        with self._lock:
            self._due.pop((topic, partition), None)

    def overdue(self, now: float) -> list[tuple[tuple[str, ...], float]]:
        """``((topic,), seconds)`` per delay topic with a held record: how long its most
        overdue head is past due (negative: due in that many seconds)."""
        with self._lock:
            earliest: dict[str, float] = {}
            for (topic, _), due in self._due.items():
                earliest[topic] = min(due, earliest.get(topic, due))
        return [((topic,), now - due) for topic, due in sorted(earliest.items())]
