"""``POST /internal/v1/events``: domain events from internal services onto their topic.

The handler does what the webhook handler does, in the same order: check content type
(415) and size (413), parse and validate (400, :mod:`ingress.domain_events`), encode,
publish (returns only once durable; 503 otherwise), answer 202 with the event id. The
token was checked before (``ingress.auth``). Nothing is published for a request that
fails any check.

The record helpers at the bottom are shared with the payment routes (``ingress.payments``);
reading the body and the trace context is ``ingress.requests``, shared by every route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from base.clock import Clock
from base.metrics import MetricName, Metrics
from ingress.domain_events import DomainEventParser, parse_json
from ingress.middleware import correlation_id
from ingress.publisher import NotDurable, Publisher
from ingress.requests import read_json_body, traceparent_of
from ingress.responses import json_response
from schemas.codec import Codec
from schemas.headers import record_headers

__all__ = ["events_handler", "publish_counted"]


def events_handler(
    *,
    publisher: Publisher,
    codec: Codec,
    clock: Clock,
    metrics: Metrics,
    max_body_bytes: int,
    parser: DomainEventParser | None = None,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    # Built once: reads the schemas and checks the route table against them now, so a
    # broken table fails at start-up, not on the first request.
    parser = parser or DomainEventParser(codec.resolver.catalog)

    async def handle(request: web.Request) -> web.Response:
        raw_body = await read_json_body(request, max_body_bytes)
        event = parser.parse(
            parse_json(raw_body),
            correlation_id=correlation_id(request),
            now_ms=int(clock.time() * 1000),
        )
        # The codec validates once more, strictly, with the whole record (a 400 too).
        value = codec.encode(event.topic, event.record)
        headers = record_headers(event.topic, event.record, traceparent=traceparent_of(request))
        await publish_counted(publisher, metrics, event.topic, event.key, value, headers)
        return json_response({"accepted": True, "eventId": event.event_id}, status=202)

    return handle


async def publish_counted(
    publisher: Publisher,
    metrics: Metrics,
    topic: str,
    key: str,
    value: bytes,
    headers: Sequence[tuple[str, bytes]],
) -> None:
    """Publish (durable or ``NotDurable``), count the outcome and time it (every route
    that publishes goes through here)."""
    try:
        with metrics.timed(MetricName.PUBLISH_LATENCY, topic=topic):
            await publisher.publish(topic, key, value, headers)
    except NotDurable:
        metrics.inc(MetricName.PUBLISH_FAILURES, topic=topic)
        raise
    metrics.inc(MetricName.RECORDS_PUBLISHED, topic=topic)
