"""The internal notifications API: enqueue a templated message, and read one back.

Routes (internal listener, token-protected by ``ingress.auth``):

- ``POST /internal/v1/notifications/send`` ``{to, channel, template, data}``
- ``GET /internal/v1/notifications/{id}``

A send request is checked whole before anything is published, so a request the route
accepts is one the worker can render (the same templates, ``schemas.notify_templates``,
and recipient rules, ``schemas.recipients``). The handler's steps, and what answers each
bad input (nothing is published for any of them):

1. content type and size (``ingress.requests.read_json_body``): 415, 413;
2. the body as JSON (``ingress.domain_events.parse_json``): 400 when malformed;
3. the ``Idempotency-Key`` header, when sent: 1-255 printable ASCII characters, else 400
   (the payments and leads routes' rule);
4. the request (:func:`parse_send`), each a 400 naming the field: a body that is not an
   object or has a field other than the four; ``channel`` not EMAIL, SMS or PUSH;
   ``template`` not a template code, or no template of that code for the channel;
   ``data`` not an object, missing a variable the template declares or holding one of
   the wrong kind (``data.<name>``); ``to`` neither a user id nor a contact that fits the
   channel (an email address, an E.164 number, ``push:<token>``);
5. encode and publish a ``sluice.notifications.NotificationRequest`` to
   ``notifications.requested`` keyed by ``to`` (as checked: an email address with its
   domain normalised); the publisher returns only once the record is durable (503
   otherwise), then 202 ``{"enqueued": true, "id": "<notificationId>"}``.

The notification id is ``notification_id_for_request(key)`` when the caller sent an
``Idempotency-Key``, a fresh uuid4 otherwise; it is also the record's ``eventId``, so the
worker's dedupe sends a retried request (same key, same id) once. ``data`` is published
as the template saw it after :meth:`NotificationTemplate.check`: only the declared
variables, currencies upper-cased, absent optional ones ``null``; compact JSON text.

The read route answers from Postgres (``connectors.notification_status``): 400 for an id
that is not a UUID (every notification id is one), 404 for an unknown notification, 503
when this ingress has no ``DATABASE_URL`` or Postgres is down.

The request checks are plain functions at the top (no aiohttp, no IO); the handlers below
them are the glue.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from aiohttp import web

from base.clock import Clock
from base.errors import InvalidEvent, TransientError
from base.metrics import Metrics
from connectors.notification_status import StoredNotification
from ingress.domain_events import parse_json, reject_unknown_fields
from ingress.events import publish_counted
from ingress.middleware import correlation_id
from ingress.outcomes import NotFound, Unavailable
from ingress.payments import IDEMPOTENCY_HEADER, request_id_from
from ingress.publisher import Publisher
from ingress.requests import read_json_body, traceparent_of
from ingress.responses import iso_time, json_response
from schemas.catalog import NOTIFICATION_REQUEST_SUBJECT
from schemas.codec import Codec
from schemas.headers import record_headers
from schemas.notifications import Channel, notification_id_for_request
from schemas.notify_templates import NotificationTemplate, TemplateCatalog, default_catalog
from schemas.recipients import PUSH_TOKEN_PREFIX, Contact, parse_recipient

__all__ = [
    "BODY_FIELDS",
    "EVENT_TYPE",
    "NOTIFICATION_TOPIC",
    "NotificationSource",
    "SendRequest",
    "check_notification_id",
    "notification_body",
    "notification_status_handler",
    "parse_send",
    "send_handler",
    "send_record",
]

log = logging.getLogger(__name__)

NOTIFICATION_TOPIC: Final = "notifications.requested"
EVENT_TYPE: Final = "notification.requested"
SOURCE: Final = "ingress"
BODY_FIELDS: Final = ("to", "channel", "template", "data")

_TEMPLATE_CODE = re.compile(r"[A-Za-z0-9_]{1,64}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


# -- requests (pure) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A checked send request. ``to`` is the recipient as published (the record key);
    ``data_json`` the template's checked variables as compact JSON text."""

    to: str
    channel: Channel
    template: str
    data_json: str


def parse_send(body: Any, templates: TemplateCatalog) -> SendRequest:
    """``{to, channel, template, data}``, checked against ``templates``.

    :raises InvalidEvent: naming the first bad field (see the module docstring).
    """
    if not isinstance(body, dict):
        raise InvalidEvent("the body must be a JSON object")
    reject_unknown_fields(body, BODY_FIELDS)
    channel = _channel(body.get("channel"))
    code = body.get("template")
    if not isinstance(code, str) or not _TEMPLATE_CODE.fullmatch(code):
        raise InvalidEvent("template must be a template code, e.g. ORDER_PAID", field="template")
    template = templates.get(code, channel)
    data = body.get("data")
    if not isinstance(data, dict):
        raise InvalidEvent(
            f"data must be an object of the template's variables ({_declared(template)})",
            field="data",
        )
    checked = template.check(data)
    if "to" not in body:
        raise InvalidEvent("to is required: a user id or a contact", field="to")
    recipient = parse_recipient(body["to"], channel)
    return SendRequest(
        to=_to_text(recipient) if isinstance(recipient, Contact) else recipient.user_id,
        channel=channel,
        template=template.code,
        # Compact; non-ASCII kept as is (the codec refuses what UTF-8 cannot carry).
        data_json=json.dumps(checked, separators=(",", ":"), ensure_ascii=False),
    )


def _channel(value: Any) -> Channel:
    if not isinstance(value, str) or value not in Channel.__members__:
        raise InvalidEvent(f"channel must be one of {', '.join(Channel)}", field="channel")
    return Channel(value)


def _declared(template: NotificationTemplate) -> str:
    names = list(template.variables)
    return ", ".join(names) if names else "none"


def _to_text(contact: Contact) -> str:
    """A direct contact written as ``to`` is: push tokens keep their prefix, so the
    worker reads the published ``to`` the way this route read the request's."""
    if contact.channel is Channel.PUSH:
        return PUSH_TOKEN_PREFIX + contact.address
    return contact.address


def send_record(
    request: SendRequest,
    *,
    notification_id: str,
    idempotency_key: str | None,
    correlation_id: str,
    now_ms: int,
    version: int,
) -> dict[str, Any]:
    """The ``NotificationRequest`` for ``request``; ``eventId`` is the notification id,
    so every copy of one request is one event to the worker's dedupe."""
    return {
        "eventId": notification_id,
        "eventType": EVENT_TYPE,
        "version": version,
        "occurredAt": now_ms,
        "correlationId": correlation_id,
        "source": SOURCE,
        "notificationId": notification_id,
        "channel": str(request.channel),
        "template": request.template,
        "to": request.to,
        "data": request.data_json,
        "causeEventId": None,
        "idempotencyKey": idempotency_key,
    }


def check_notification_id(value: str) -> str:
    """A notification id (a UUID, hyphenated), lower-cased.

    :raises InvalidEvent: anything else (``field="id"``).
    """
    if not _UUID.fullmatch(value):
        raise InvalidEvent(
            "id must be a notification id (a UUID such as 3f2b…-…), as the send route answered",
            field="id",
        )
    return value.lower()


def notification_body(row: StoredNotification) -> dict[str, Any]:
    """The JSON of ``GET /internal/v1/notifications/{id}``."""
    return {
        "id": row.id,
        "channel": row.channel,
        "template": row.template,
        "to": row.to,
        "userId": row.user_id,
        "recipient": row.recipient,
        "status": row.status,
        "attempts": row.attempts,
        "lastError": row.last_error,
        "providerMessageId": row.provider_message_id,
        "causeEventId": row.cause_event_id,
        "createdAt": iso_time(row.created_at),
        "updatedAt": iso_time(row.updated_at),
        "sentAt": None if row.sent_at is None else iso_time(row.sent_at),
    }


# -- handlers ----------------------------------------------------------------------------


class NotificationSource(Protocol):
    """Where notifications are read from (``connectors.notification_status``)."""

    async def notification(self, notification_id: str) -> StoredNotification | None: ...

    async def close(self) -> None: ...


def send_handler(
    *,
    publisher: Publisher,
    codec: Codec,
    clock: Clock,
    metrics: Metrics,
    max_body_bytes: int,
    templates: TemplateCatalog | None = None,
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> Callable[[web.Request], Awaitable[web.Response]]:
    # Loaded now: a broken template stops the ingress at start-up, not on a request.
    catalog = templates if templates is not None else default_catalog()
    version = codec.resolver.catalog.latest_version(NOTIFICATION_REQUEST_SUBJECT)

    async def handle(request: web.Request) -> web.Response:
        raw_body = await read_json_body(request, max_body_bytes)
        body = parse_json(raw_body)
        idempotency_key = request_id_from(request.headers.get(IDEMPOTENCY_HEADER))
        send = parse_send(body, catalog)
        notification_id = (
            notification_id_for_request(idempotency_key) if idempotency_key else new_id()
        )
        record = send_record(
            send,
            notification_id=notification_id,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id(request),
            now_ms=int(clock.time() * 1000),
            version=version,
        )
        value = codec.encode(NOTIFICATION_TOPIC, record)
        headers = record_headers(NOTIFICATION_TOPIC, record, traceparent=traceparent_of(request))
        await publish_counted(publisher, metrics, NOTIFICATION_TOPIC, send.to, value, headers)
        return json_response({"enqueued": True, "id": notification_id}, status=202)

    return handle


def notification_status_handler(
    store: NotificationSource | None,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        # First: a bad id is a 400, never a 503.
        notification_id = check_notification_id(request.match_info["id"])
        if store is None:
            raise Unavailable("notifications are unavailable: this ingress has no DATABASE_URL")
        try:
            row = await store.notification(notification_id)
        except TransientError as exc:
            log.warning("notifications unavailable", extra={"error": str(exc)})
            raise Unavailable(
                "notifications are unavailable: the database cannot be reached; retry later"
            ) from exc
        if row is None:
            raise NotFound(f"no notification {notification_id}")
        return json_response(notification_body(row))

    return handle
