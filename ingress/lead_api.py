"""The internal leads API: deliver a lead now (request/reply), and read a lead.

Routes (internal listener, token-protected by ``ingress.auth``):

- ``POST /internal/v1/leads/deliver`` ``{leadId, partnerId, attempt?, metadata?, force?}``
- ``GET /internal/v1/leads/{leadId}``

A deliver request is a ``sluice.leads.LeadDeliveryCommand`` on ``commands.leads.deliver``,
keyed by lead id (so it meets the lead's own deliveries in one partition), with
``eventId = taskId`` (a fresh uuid4) and ``replyTo`` the reply topic; it is published
and answered through :class:`ingress.commands.CommandSender`, like the payment commands:
the lead delivery agent's reply (200 ``{"delivered": bool, "attempt": n}``, 404 unknown
lead, 409 the lead is another partner's) or, after ``SLUICE_REPLY_TIMEOUT``, 202
``{"accepted": true, "taskId"}``.

A retried call must not deliver twice: that is what ``attempt`` is for (the agent makes
no attempt when the lead already has that many), not ``Idempotency-Key``, which is not
read here. The task id stays a fresh uuid4 even when the caller sends a key: two
concurrent calls with one key would otherwise wait on one task id.

Checks (400 naming the field, nothing published): ``leadId`` a printable id of at most
256 characters (``check_identifier``); ``partnerId`` a partner of the registry (a
disabled one too: its leads may still need delivering); ``attempt`` a positive integer
that fits Avro's int; ``metadata`` an object of at most 50 string values, keys printable
and at most 64 characters, values at most 1024; ``force`` a boolean; no other field.

The read route answers from Postgres (``connectors.lead_status``): 400 for a bad id,
404 for an unknown lead, 503 when this ingress has no ``DATABASE_URL`` or Postgres is
down.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from aiohttp import web

from base.clock import Clock
from base.errors import InvalidEvent, TransientError
from base.partners import PartnerRegistry
from connectors.lead_status import StoredLead
from ingress.commands import CommandSender
from ingress.domain_events import check_identifier, parse_json, reject_unknown_fields
from ingress.middleware import correlation_id
from ingress.outcomes import NotFound, Unavailable
from ingress.requests import read_json_body, traceparent_of
from ingress.responses import iso_time, json_response
from schemas.catalog import LEAD_DELIVERY_COMMAND_SUBJECT

__all__ = [
    "DELIVER_COMMAND_TOPIC",
    "DELIVER_EVENT_TYPE",
    "DeliverRequest",
    "LeadSource",
    "deliver_record",
    "lead_body",
    "lead_deliver_handler",
    "lead_status_handler",
    "parse_deliver",
]

log = logging.getLogger(__name__)

DELIVER_COMMAND_TOPIC: Final = "commands.leads.deliver"
DELIVER_EVENT_TYPE: Final = "lead.deliver"
SOURCE: Final = "ingress"

_FIELDS = ("leadId", "partnerId", "attempt", "metadata", "force")
_MAX_ATTEMPT = 2**31 - 1  # Avro int
_MAX_METADATA = 50
_MAX_METADATA_KEY = 64
_MAX_METADATA_VALUE = 1024


# -- requests (pure) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliverRequest:
    """A checked deliver-now request."""

    lead_id: str
    partner_id: str
    attempt: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    force: bool = False


def parse_deliver(body: Any, partners: PartnerRegistry) -> DeliverRequest:
    """``{leadId, partnerId, attempt?, metadata?, force?}``, checked.

    :raises InvalidEvent: naming the first bad field.
    """
    if not isinstance(body, dict):
        raise InvalidEvent("the body must be a JSON object")
    reject_unknown_fields(body, _FIELDS)
    lead_id = check_identifier(body.get("leadId"), "leadId")
    partner_id = check_identifier(body.get("partnerId"), "partnerId")
    if partners.get(partner_id) is None:
        raise InvalidEvent(f"unknown partner {partner_id[:64]!r}", field="partnerId")
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise InvalidEvent("force must be true or false", field="force")
    return DeliverRequest(
        lead_id=lead_id,
        partner_id=partner_id,
        attempt=_attempt(body.get("attempt")),
        metadata=_metadata(body.get("metadata")),
        force=force,
    )


def _attempt(value: Any) -> int | None:
    if value is None:
        return None
    # type() rather than isinstance: True is an int to Python, not an attempt number.
    if type(value) is not int or not 1 <= value <= _MAX_ATTEMPT:
        raise InvalidEvent("attempt must be a positive integer", field="attempt")
    return value


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidEvent("metadata must be an object of strings", field="metadata")
    if len(value) > _MAX_METADATA:
        raise InvalidEvent(f"metadata holds at most {_MAX_METADATA} entries", field="metadata")
    for key, item in value.items():
        where = f"metadata.{key[:_MAX_METADATA_KEY]}"
        if not key or len(key) > _MAX_METADATA_KEY or not key.isprintable():
            raise InvalidEvent(
                f"metadata keys are 1-{_MAX_METADATA_KEY} printable characters", field=where
            )
        if not isinstance(item, str) or len(item) > _MAX_METADATA_VALUE:
            raise InvalidEvent(
                f"{where} must be a string of at most {_MAX_METADATA_VALUE} characters",
                field=where,
            )
    return dict(value)


def deliver_record(
    request: DeliverRequest,
    *,
    task_id: str,
    reply_to: str,
    correlation_id: str,
    now_ms: int,
    version: int,
) -> dict[str, Any]:
    """The ``LeadDeliveryCommand`` for ``request``."""
    return {
        "eventId": task_id,
        "eventType": DELIVER_EVENT_TYPE,
        "version": version,
        "occurredAt": now_ms,
        "correlationId": correlation_id,
        "source": SOURCE,
        "leadId": request.lead_id,
        "partnerId": request.partner_id,
        "attempt": request.attempt,
        "force": request.force,
        "metadata": dict(request.metadata),
        "taskId": task_id,
        "replyTo": reply_to,
    }


def lead_body(lead: StoredLead) -> dict[str, Any]:
    """The JSON of ``GET /internal/v1/leads/{leadId}``."""
    return {
        "leadId": lead.lead_id,
        "partnerId": lead.partner_id,
        "externalLeadId": lead.external_lead_id,
        "name": lead.name,
        "email": lead.email,
        "phone": lead.phone,
        "listingId": lead.listing_id,
        "message": lead.message,
        "payload": lead.payload,
        "status": lead.status,
        "attempts": lead.attempts,
        "lastError": lead.last_error,
        "receivedAt": iso_time(lead.received_at),
        "deliveredAt": None if lead.delivered_at is None else iso_time(lead.delivered_at),
        "updatedAt": iso_time(lead.updated_at),
        "deliveryAttempts": [
            {
                "attempt": attempt.attempt,
                "httpStatus": attempt.http_status,
                "error": attempt.error,
                "latencyMs": attempt.latency_ms,
                "trigger": attempt.trigger,
                "attemptedAt": iso_time(attempt.attempted_at),
            }
            for attempt in lead.delivery_attempts
        ],
    }


# -- handlers ----------------------------------------------------------------------------


class LeadSource(Protocol):
    """Where leads are read from (``connectors.lead_status.LeadStatusStore``)."""

    async def lead(self, lead_id: str) -> StoredLead | None: ...

    async def close(self) -> None: ...


def lead_deliver_handler(
    *,
    sender: CommandSender,
    partners: PartnerRegistry,
    clock: Clock,
    max_body_bytes: int,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    # The subject's latest version, read without the codec (no registry call at build).
    version = sender.codec.resolver.catalog.latest_version(LEAD_DELIVERY_COMMAND_SUBJECT)

    async def handle(request: web.Request) -> web.Response:
        raw_body = await read_json_body(request, max_body_bytes)
        deliver = parse_deliver(parse_json(raw_body), partners)
        record = deliver_record(
            deliver,
            task_id=str(uuid.uuid4()),
            reply_to=sender.reply_topic,
            correlation_id=correlation_id(request),
            now_ms=int(clock.time() * 1000),
            version=version,
        )
        return await sender.send(
            DELIVER_COMMAND_TOPIC, deliver.lead_id, record, traceparent=traceparent_of(request)
        )

    return handle


def lead_status_handler(
    store: LeadSource | None,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        # First: a bad id (a NUL, which PostgreSQL refuses too) is a 400, never a 503.
        lead_id = check_identifier(request.match_info["leadId"], "leadId")
        if store is None:
            raise Unavailable("leads are unavailable: this ingress has no DATABASE_URL")
        try:
            lead = await store.lead(lead_id)
        except TransientError as exc:
            log.warning("leads unavailable", extra={"error": str(exc)})
            raise Unavailable(
                "leads are unavailable: the database cannot be reached; retry later"
            ) from exc
        if lead is None:
            raise NotFound(f"no lead {lead_id[:128]!r}")
        return json_response(lead_body(lead))

    return handle
