"""The provider webhook routes: one generic handler, configured per provider.

The handler does five things in order (STYLE §6): check size and content type, verify
the signature, build and encode the record, publish (returns only once durable), respond.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web

from ingress.middleware import correlation_id
from ingress.outcomes import BodyTooLarge, UnsupportedMediaType
from ingress.publisher import NotDurable, Publisher
from ingress.records import ReceivedWebhook, kafka_headers, new_traceparent, raw_webhook_record
from ingress.verify import VerifiedEvent
from schemas.codec import Codec
from sluice.clock import Clock
from sluice.metrics import MetricName, Metrics

__all__ = ["WebhookSource", "webhook_handler"]

Verifier = Callable[[bytes, Mapping[str, str], Sequence[str], float], VerifiedEvent]

AVRO_CONTENT_TYPE = "application/vnd.sluice.raw-webhook+avro"
_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


@dataclass(frozen=True)
class WebhookSource:
    """One provider's webhook endpoint: how to verify it and where it goes."""

    provider: str
    topic: str
    signature_header: str
    verify: Verifier
    secrets: tuple[str, ...]
    success: Mapping[str, object]
    success_status: int = 200


def webhook_handler(
    source: WebhookSource,
    *,
    publisher: Publisher,
    codec: Codec,
    clock: Clock,
    metrics: Metrics,
    max_body_bytes: int,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        _check_content_type(request)
        raw_body = await _read_body(request, max_body_bytes)
        event = source.verify(raw_body, request.headers, source.secrets, clock.time())
        traceparent = request.headers.get("traceparent", "")
        if not _TRACEPARENT.fullmatch(traceparent):
            traceparent = new_traceparent()
        received = ReceivedWebhook(
            provider=source.provider,
            event=event,
            raw_body=raw_body,
            signature_header=request.headers.get(source.signature_header),
            content_type=request.content_type,
            correlation_id=correlation_id(request),
            traceparent=traceparent,
            source_address=request.remote,
            received_at_ms=int(clock.time() * 1000),
        )
        record = raw_webhook_record(received)
        value = codec.encode(source.topic, record)
        headers = kafka_headers(record, traceparent, AVRO_CONTENT_TYPE)
        try:
            await publisher.publish(source.topic, event.event_id, value, headers)
        except NotDurable:
            metrics.inc(MetricName.PUBLISH_FAILURES, topic=source.topic)
            raise
        metrics.inc(MetricName.RECORDS_PUBLISHED, topic=source.topic)
        return web.json_response(dict(source.success), status=source.success_status)

    return handle


def _check_content_type(request: web.Request) -> None:
    # Stripe sends "application/json; charset=utf-8"; aiohttp strips the parameters.
    if request.content_type != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json")


async def _read_body(request: web.Request, limit: int) -> bytes:
    # Refuse early on a declared length; aiohttp's client_max_size still guards bodies
    # that lie about their length or use chunked encoding.
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"request body exceeds {limit} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"request body exceeds {limit} bytes") from None
