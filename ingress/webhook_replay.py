"""Replay stored raw webhooks: rebuild each ``RawWebhook`` from its ``webhook_events`` row
and publish it again on its ``webhooks.<provider>`` topic, marked as a replay.

Shared by ``POST /v1/admin/webhooks/replay`` (``ingress/admin_api.py``) and
``sluice replay`` (``sluice/cli.py``).

**Why from Postgres, not from the raw topic.** ``webhook_events`` holds every field the
ingress put in the record but the client address: the body byte for byte, the signature
header, content type, correlation id, event type and receive time. The record is rebuilt
exactly as the ingress built it (``ingress.records.raw_webhook_record``): the same
``eventId`` (uuid5 of provider and provider event id), the same ``occurredAt`` (the
provider's creation time in the body), the same key (the provider event id, or for
Razorpay the content id of the signed body, so the replay lands in the original's
partition), with ``replay: true``, ``sourceAddress`` null, and two headers:
``sluice-replay: 1`` and ``sluice-replay-id: <replay id>``. The table is kept past the
topic's retention (``SLUICE_POSTGRES_RETENTION``), and it is what the admin log shows,
so what an operator sees is what is replayed; a topic scan would also cost a read of up
to 30 days of webhooks for one event id.

**Why nothing is duplicated.** The worker's dedupe lets a replay through on purpose
(``streams.domain.dedupe``: a replay is processed whatever the table says, and leaves a
live entry as it was). Normalising it gives the same derived records, with the same
deterministic ids, as the first time; the projections skip ids they already applied
(``processed_events``) or only move rows forward (status ranks), and the join remembers
the payment ids it has seen, so the replay changes no row and emits no new event.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from base.errors import InvalidEvent
from connectors.webhook_log import StoredWebhook, WebhookLogStore
from ingress.publisher import Publisher
from ingress.records import RAW_WEBHOOK_VERSION, event_id_for
from ingress.verify import razorpay
from schemas.catalog import WEBHOOK_TOPICS
from schemas.codec import Codec
from schemas.headers import record_headers
from schemas.replay import REPLAY_HEADER, REPLAY_ID_HEADER

__all__ = [
    "PROVIDERS",
    "ReplayRequest",
    "TooManyToReplay",
    "UnknownEvents",
    "raw_record",
    "record_key",
    "replay_webhooks",
]

log = logging.getLogger(__name__)

PROVIDERS: Final = tuple(topic.removeprefix("webhooks.") for topic in WEBHOOK_TOPICS)
"""The providers whose webhooks can be replayed: one raw topic each."""
_CHUNK: Final = 200  # rows read, and records in flight, at a time


class TooManyToReplay(InvalidEvent):
    """The selection holds more webhooks than one call may replay (400; nothing sent)."""


class UnknownEvents(InvalidEvent):
    """Event ids that have no ``webhook_events`` row for the provider (nothing sent)."""

    def __init__(self, missing: Sequence[str]) -> None:
        shown = ", ".join(missing[:10]) + (" …" if len(missing) > 10 else "")
        super().__init__(f"no stored webhook for event ids: {shown}", field="eventIds")
        self.missing = tuple(missing)


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """What to replay: ``event_ids`` of ``provider``, or every webhook of ``provider``
    received in ``[since, until)`` (timezone-aware)."""

    provider: str
    event_ids: tuple[str, ...] = ()
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    replay_id: str = field(default_factory=lambda: str(uuid.uuid4()))


def record_key(stored: StoredWebhook, body: Any) -> str:
    """The key the ingress gave the record: the content id of a Razorpay body (its event
    id header is unsigned), the provider event id otherwise."""
    if stored.provider == "razorpay" and isinstance(body, dict):
        created = body.get("created_at")
        created = created if isinstance(created, int) and not isinstance(created, bool) else None
        return razorpay.content_id(body, stored.event_type, created, stored.raw_body)
    return stored.event_id


def raw_record(stored: StoredWebhook) -> tuple[str, dict[str, Any]]:
    """The key and the ``RawWebhook`` record (a dict for the codec) of a stored webhook,
    as the ingress built it on receipt, marked ``replay``. Pure."""
    try:
        body = orjson.loads(stored.raw_body)
    except orjson.JSONDecodeError:
        body = None
    created_field = "created_at" if stored.provider == "razorpay" else "created"
    created = body.get(created_field) if isinstance(body, dict) else None
    received_ms = round(stored.received_at.timestamp() * 1000)
    if not isinstance(created, int) or isinstance(created, bool):
        created = None
    record = {
        "eventId": event_id_for(stored.provider, stored.event_id),
        "eventType": stored.event_type,
        "version": RAW_WEBHOOK_VERSION,
        "occurredAt": created * 1000 if created is not None else received_ms,
        "correlationId": stored.correlation_id or event_id_for(stored.provider, stored.event_id),
        "source": f"sluice.ingress/{stored.provider}",
        "provider": stored.provider,
        "providerEventId": stored.event_id,
        "receivedAt": received_ms,
        "signatureHeader": stored.signature,
        "rawBody": stored.raw_body,
        "contentType": stored.content_type,
        "sourceAddress": None,
        "replay": True,
    }
    return record_key(stored, body), record


async def replay_webhooks(
    request: ReplayRequest,
    *,
    store: WebhookLogStore,
    publisher: Publisher,
    codec: Codec,
    max_events: int | None,
    traceparent: str | None = None,
) -> int:
    """Publish the selected stored webhooks again; returns how many.

    With ``max_events``, a selection holding more is refused before anything is sent
    (``TooManyToReplay``); without it (the CLI), a range is walked in chunks. Event ids
    without a row are refused before anything is sent (``UnknownEvents``).

    Not atomic: if publishing fails half-way (``NotDurable``), what was sent stays sent;
    replaying again is harmless (that is the point of replays).

    :raises TooManyToReplay, UnknownEvents: see above (HTTP 400, nothing published).
    :raises TransientError: Postgres is down; ``NotDurable``: Kafka did not take a record.
    """
    topic = f"webhooks.{request.provider}"
    if request.event_ids:
        wanted = tuple(dict.fromkeys(request.event_ids))
        if max_events is not None and len(wanted) > max_events:
            raise TooManyToReplay(
                f"at most {max_events} event ids per call (SLUICE_REPLAY_MAX_EVENTS)",
                field="eventIds",
            )
        rows = await store.for_replay(request.provider, event_ids=wanted, limit=len(wanted))
        missing = sorted(set(wanted) - {row.event_id for row in rows})
        if missing:
            raise UnknownEvents(missing)
        return await _publish(rows, topic, request, publisher, codec, traceparent)

    if max_events is not None:
        # One more than allowed tells a range that is too large, before sending anything.
        rows = await store.for_replay(
            request.provider, since=request.since, until=request.until, limit=max_events + 1
        )
        if len(rows) > max_events:
            raise TooManyToReplay(
                f"the range holds more than {max_events} webhooks "
                "(SLUICE_REPLAY_MAX_EVENTS): narrow it, or use sluice replay",
                field="until",
            )
        return await _publish(rows, topic, request, publisher, codec, traceparent)

    count = 0
    after: tuple[dt.datetime, str] | None = None
    while True:
        rows = await store.for_replay(
            request.provider, since=request.since, until=request.until, limit=_CHUNK, after=after
        )
        if not rows:
            return count
        count += await _publish(rows, topic, request, publisher, codec, traceparent)
        after = (rows[-1].received_at, rows[-1].event_id)


async def _publish(
    rows: Sequence[StoredWebhook],
    topic: str,
    request: ReplayRequest,
    publisher: Publisher,
    codec: Codec,
    traceparent: str | None,
) -> int:
    replay_headers = [(REPLAY_HEADER, b"1"), (REPLAY_ID_HEADER, request.replay_id.encode())]
    for start in range(0, len(rows), _CHUNK):
        sends = []
        for stored in rows[start : start + _CHUNK]:
            key, record = raw_record(stored)
            value = codec.encode(topic, record)
            headers = record_headers(topic, record, traceparent=traceparent) + replay_headers
            sends.append(publisher.publish(topic, key, value, headers))
        # Produced in order (one idempotent producer), acknowledged together.
        await asyncio.gather(*sends)
    log.info(
        "webhooks replayed",
        extra={"replay_id": request.replay_id, "provider": request.provider, "count": len(rows)},
    )
    return len(rows)
