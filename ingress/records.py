"""Turn a verified webhook request into the raw webhook record (pure)."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

from ingress.verify import VerifiedEvent

__all__ = ["RAW_WEBHOOK_VERSION", "ReceivedWebhook", "raw_webhook_record"]

RAW_WEBHOOK_VERSION = 1
# Namespace for ids derived from provider event ids: the same provider event always
# gets the same Sluice event id, so a redelivered webhook is recognisably the same.
EVENT_ID_NAMESPACE = uuid.UUID("5b1b3b0e-9f3c-4c57-9d0c-2f4f1a8e8a10")


@dataclass(frozen=True)
class ReceivedWebhook:
    """What the route knows about one verified request."""

    provider: str
    event: VerifiedEvent
    raw_body: bytes
    signature_header: str | None
    content_type: str
    correlation_id: str
    traceparent: str
    source_address: str | None
    received_at_ms: int


def event_id_for(provider: str, provider_event_id: str) -> str:
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{provider}:{provider_event_id}"))


def raw_webhook_record(received: ReceivedWebhook) -> dict[str, Any]:
    """The Avro record (as a dict) for the ``webhooks.<provider>`` topics."""
    event = received.event
    occurred_ms = event.created * 1000 if event.created is not None else received.received_at_ms
    return {
        "eventId": event_id_for(received.provider, event.event_id),
        "eventType": event.event_type,
        "version": RAW_WEBHOOK_VERSION,
        "occurredAt": occurred_ms,
        "correlationId": received.correlation_id,
        "source": f"sluice.ingress/{received.provider}",
        "provider": received.provider,
        "providerEventId": event.event_id,
        "receivedAt": received.received_at_ms,
        "signatureHeader": received.signature_header,
        "rawBody": received.raw_body,
        "contentType": received.content_type,
        "sourceAddress": received.source_address,
        "replay": False,
    }


def new_traceparent() -> str:
    """A fresh W3C trace context for requests that arrive without one.

    One ``os.urandom`` call for both ids (16-byte trace id, 8-byte parent id), on the
    hot path of every request; ``secrets.token_hex`` is the same source, called twice.
    """
    ids = os.urandom(24).hex()
    return f"00-{ids[:32]}-{ids[32:]}-01"
