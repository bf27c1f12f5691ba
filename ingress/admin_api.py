"""The admin API's webhook routes (internal listener, ``admin`` scope by route name):

- ``GET /v1/admin/webhooks/logs`` (``admin.webhooks.logs``): ``webhook_events`` rows,
  newest first. Query: ``provider``, ``eventType``, ``status`` (RECEIVED, FAILED,
  IGNORED, PROCESSED), ``eventId``, ``since``/``until`` (ISO 8601 with offset:
  ``received_at`` in ``[since, until)``), ``limit`` (1 to 200, default 50), ``cursor`` (the
  ``next`` of the previous page). 200 ``{"items": [...], "next": cursor|null}``.
- ``POST /v1/admin/webhooks/replay`` (``admin.webhooks.replay``): ``{"provider",
  "eventIds": [...]}`` or ``{"provider", "since", "until"}``; re-publishes the stored raw
  webhooks (``ingress.webhook_replay``), at most ``SLUICE_REPLAY_MAX_EVENTS``. 202
  ``{"accepted": true, "replayId", "count"}``.

400 names the bad parameter or field (an unknown one too); 404 for event ids without a
row (nothing published); 503 without ``DATABASE_URL``, with Postgres down, or when Kafka
does not take a record. Parameters are checked before the database is needed, so a bad
request is 400 whether or not Postgres is there.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from base.errors import InvalidEvent
from base.metrics import MetricName, Metrics
from connectors.webhook_log import (
    WebhookLogEntry,
    WebhookLogFilter,
    WebhookLogStore,
    decode_cursor,
    encode_cursor,
)
from ingress.admin_params import check_query, parse_limit, parse_range, short_text
from ingress.domain_events import parse_json, reject_unknown_fields
from ingress.outcomes import NotFound, Unavailable
from ingress.publisher import NotDurable, Publisher
from ingress.requests import read_json_body, traceparent_of
from ingress.responses import iso_time, json_response
from ingress.scopes import caller_name
from ingress.webhook_replay import PROVIDERS, ReplayRequest, UnknownEvents, replay_webhooks
from schemas.codec import Codec
from schemas.statuses import WebhookStatus

__all__ = ["log_entry_body", "parse_replay_body", "webhook_logs_handler", "webhook_replay_handler"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.Response]]

_LOG_PARAMS = ("provider", "eventType", "status", "eventId", "since", "until", "limit", "cursor")
_STATUSES = tuple(str(status) for status in WebhookStatus)
_NO_DATABASE = "the webhook log needs DATABASE_URL on this ingress"


def _provider(value: Any) -> str:
    if value not in PROVIDERS:
        raise InvalidEvent(f"provider must be one of {', '.join(PROVIDERS)}", field="provider")
    return str(value)


def _optional_text(query: Mapping[str, str], name: str) -> str | None:
    return short_text(query[name], name) if name in query else None


def log_entry_body(entry: WebhookLogEntry) -> dict[str, Any]:
    """One row as the log shows it."""
    return {
        "provider": entry.provider,
        "eventId": entry.event_id,
        "eventType": entry.event_type,
        "status": entry.status,
        "reason": entry.reason,
        "correlationId": entry.correlation_id,
        "contentType": entry.content_type,
        "receivedAt": iso_time(entry.received_at),
        "processedAt": iso_time(entry.processed_at) if entry.processed_at else None,
        "bodyBytes": entry.body_bytes,
        "signed": entry.signed,
    }


def webhook_logs_handler(store: WebhookLogStore | None) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        query = request.query
        check_query(query, _LOG_PARAMS)
        status = query.get("status")
        if status is not None and status not in _STATUSES:
            raise InvalidEvent(f"status must be one of {', '.join(_STATUSES)}", field="status")
        since, until = parse_range(query.get("since"), query.get("until"))
        selection = WebhookLogFilter(
            provider=_provider(query["provider"]) if "provider" in query else None,
            event_type=_optional_text(query, "eventType"),
            status=status,
            event_id=_optional_text(query, "eventId"),
            since=since,
            until=until,
        )
        limit = parse_limit(query.get("limit"))
        after = decode_cursor(query["cursor"]) if "cursor" in query else None
        if store is None:
            raise Unavailable(_NO_DATABASE)
        page = await store.page(selection, limit=limit, after=after)
        return json_response(
            {
                "items": [log_entry_body(entry) for entry in page.entries],
                "next": encode_cursor(page.next_cursor) if page.next_cursor else None,
            }
        )

    return handle


def parse_replay_body(body: Any) -> ReplayRequest:
    """The replay request of a decoded JSON body.

    :raises InvalidEvent: naming the field: not an object, an unknown field, no or an
        unknown ``provider``, ``eventIds`` not a non-empty list of ids, both or neither
        of ``eventIds`` and ``since``/``until``, a bad time.
    """
    if not isinstance(body, Mapping):
        raise InvalidEvent("the body must be a JSON object")
    reject_unknown_fields(body, ("provider", "eventIds", "since", "until"))
    if "provider" not in body:
        raise InvalidEvent("provider is required", field="provider")
    provider = _provider(body["provider"])
    ids = body.get("eventIds")
    if ids is not None:
        if "since" in body or "until" in body:
            raise InvalidEvent("give eventIds or since/until, not both", field="since")
        if not isinstance(ids, list) or not ids:
            raise InvalidEvent("eventIds must be a non-empty list of event ids", field="eventIds")
        event_ids = tuple(short_text(item, "eventIds") for item in ids)
        return ReplayRequest(provider=provider, event_ids=event_ids)
    since, until = parse_range(body.get("since"), body.get("until"), required=True)
    return ReplayRequest(provider=provider, since=since, until=until)


def webhook_replay_handler(
    *,
    store: WebhookLogStore | None,
    publisher: Publisher,
    codec: Codec,
    metrics: Metrics,
    max_body_bytes: int,
    max_events: int,
) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        replay = parse_replay_body(parse_json(await read_json_body(request, max_body_bytes)))
        if store is None:
            raise Unavailable(_NO_DATABASE)
        topic = f"webhooks.{replay.provider}"
        try:
            count = await replay_webhooks(
                replay,
                store=store,
                publisher=publisher,
                codec=codec,
                max_events=max_events,
                traceparent=traceparent_of(request),
            )
        except UnknownEvents as exc:
            raise NotFound(str(exc)) from None
        except NotDurable:
            metrics.inc(MetricName.PUBLISH_FAILURES, topic=topic)
            raise
        metrics.inc(MetricName.RECORDS_PUBLISHED, count, topic=topic)
        log.info(
            "webhook replay requested",
            extra={
                "replay_id": replay.replay_id,
                "provider": replay.provider,
                "count": count,
                "caller": caller_name(request),
            },
        )
        return json_response(
            {"accepted": True, "replayId": replay.replay_id, "count": count}, status=202
        )

    return handle
