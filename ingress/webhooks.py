"""The provider webhook routes: one generic handler, configured per provider.

The handler does five things in order (STYLE §6): check size and content type, verify
the signature, build and encode the record, publish (returns only once durable), respond.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web

from base.clock import Clock
from base.metrics import Metrics
from ingress.events import publish_counted
from ingress.middleware import correlation_id
from ingress.publisher import Publisher
from ingress.records import ReceivedWebhook, raw_webhook_record
from ingress.requests import read_json_body, traceparent_of
from ingress.responses import json_response
from ingress.verify import VerifiedEvent
from schemas.codec import Codec
from schemas.headers import record_headers

__all__ = ["WebhookSource", "webhook_handler"]

Verifier = Callable[[bytes, Mapping[str, str], Sequence[str], float], VerifiedEvent]


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
        raw_body = await read_json_body(request, max_body_bytes)
        event = source.verify(raw_body, request.headers, source.secrets, clock.time())
        traceparent = traceparent_of(request)
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
        headers = record_headers(source.topic, record, traceparent=traceparent)
        # Keyed by what the signed content is when the event id is unsigned (Razorpay),
        # so a replay under a fresh id meets the original in the same partition, where
        # the worker's dedupe table holds it.
        key = event.content_id or event.event_id
        await publish_counted(publisher, metrics, source.topic, key, value, headers)
        return json_response(dict(source.success), status=source.success_status)

    return handle
