"""The Kafka headers of every record Sluice writes, built in one place (DESIGN §4).

``event-type``, ``event-id`` and ``correlation-id`` come from the record's envelope,
``traceparent`` from the request or the record that caused it, and ``content-type`` from
the topic's spec in the catalog (:attr:`~schemas.catalog.TopicSpec.content_type`), so
operators can filter with ``kcat -f '%h'`` without decoding Avro. The ingress, the
worker's agents and dead letters all call :func:`record_headers`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Final

from base.tracing import outgoing_traceparent
from schemas.catalog import topic_spec

__all__ = [
    "CONTENT_TYPE",
    "CORRELATION_ID",
    "EVENT_ID",
    "EVENT_TYPE",
    "TRACEPARENT",
    "Headers",
    "record_headers",
]

EVENT_TYPE: Final = "event-type"
EVENT_ID: Final = "event-id"
CORRELATION_ID: Final = "correlation-id"
TRACEPARENT: Final = "traceparent"
CONTENT_TYPE: Final = "content-type"

Headers = list[tuple[str, bytes]]
"""Kafka headers as librdkafka takes them: (name, value bytes) pairs, in order."""


def record_headers(
    topic: str, record: Mapping[str, Any], *, traceparent: str | None = None
) -> Headers:
    """The headers of ``record`` (an envelope record: ``eventType``, ``eventId``,
    ``correlationId``) on ``topic``: the three envelope headers, then ``traceparent``
    when given, then ``content-type`` when the topic declares one.

    :raises UnknownTopic: ``topic`` is not in the catalog (a programming error).
    :raises KeyError: ``record`` lacks an envelope field (a programming error).
    """
    headers = [
        (EVENT_TYPE, str(record["eventType"]).encode()),
        (EVENT_ID, str(record["eventId"]).encode()),
        (CORRELATION_ID, str(record["correlationId"]).encode()),
    ]
    # The span writing the record, when it continues the given trace (base.tracing).
    traceparent = outgoing_traceparent(traceparent)
    if traceparent:
        headers.append((TRACEPARENT, traceparent.encode()))
    content_type = _content_type(topic)
    if content_type is not None:
        headers.append((CONTENT_TYPE, content_type))
    return headers


@functools.cache
def _content_type(topic: str) -> bytes | None:
    # Cached: the normalise agent builds headers for every event it emits.
    content_type = topic_spec(topic).content_type
    return None if content_type is None else content_type.encode()
