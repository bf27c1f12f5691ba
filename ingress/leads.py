"""``POST /v1/webhooks/partner/leads``: partner leads onto ``leads.received``.

Body ``{partnerId, externalLeadId, payload}``. The handler's steps, and what answers
each bad input (nothing is published for any of them):

1. content type and size (``ingress.requests.read_json_body``): 415, 413;
2. the body as JSON (``ingress.domain_events.parse_json``): 400 when malformed. It must
   be parsed before it is authentic, since it names the partner; nothing in it is
   trusted yet but ``partnerId``, which only selects the secrets to check with;
3. ``partnerId`` (:func:`partner_id_of`): 400 when missing or not an id, 401
   ``unknown partner`` when the registry has no such partner; then the partner's rate
   limit (``ingress/ratelimit.py``): 429 with ``Retry-After`` past it. Before the
   credentials, so limiting needs no secret;
4. the partner's credentials over the raw bytes (``ingress.verify.partner``): 401 for
   a missing, malformed or wrong signature or token, or a Standard Webhooks timestamp
   more than 5 minutes away; 403 for a bearer token of another partner;
5. ``enabled = false``, or ``partners.<id>.enabled`` false in the runtime config: 403
   ``partner disabled``. Checked after the credentials, so only the partner itself
   learns it is switched off;
6. the ``Idempotency-Key`` header, when sent: 1-255 printable ASCII characters, else 400;
7. the lead (:func:`parse_lead`): 400 naming the field for an unknown top-level field,
   a missing or unprintable ``externalLeadId`` (at most 256 characters), a ``payload``
   that is not an object, a mapped field that is neither a string nor a number, or a
   lead with neither email nor phone;
8. encode and publish to ``leads.received`` keyed by the lead id; the publisher returns
   only once the record is durable (503 otherwise), then 202
   ``{"accepted": true, "id": "<leadId>"}``.

The lead id is ``schemas.leads.lead_id(partnerId, externalLeadId)``: a partner's retry,
a duplicate post or a replay gets the same id and the same 202. The ingress keeps no
state; the worker stores the lead once (``eventId == leadId`` for its dedupe).

The request checks are plain functions at the top (no aiohttp, no IO); the handler
below them is the glue.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from base.clock import Clock
from base.errors import InvalidEvent
from base.metrics import Metrics
from base.partners import CANONICAL_FIELDS, Partner, PartnerRegistry
from ingress.domain_events import check_identifier, parse_json, reject_unknown_fields
from ingress.events import publish_counted
from ingress.middleware import correlation_id
from ingress.outcomes import Forbidden, Unauthorized
from ingress.payments import IDEMPOTENCY_HEADER, request_id_from
from ingress.publisher import Publisher
from ingress.requests import read_json_body, traceparent_of
from ingress.responses import json_response
from ingress.verify import partner as partner_auth
from schemas.catalog import LEAD_RECEIVED_SUBJECT
from schemas.codec import Codec
from schemas.headers import record_headers
from schemas.leads import lead_id
from schemas.runtime_keys import RuntimeValues, partner_enabled_key

__all__ = [
    "BODY_FIELDS",
    "EVENT_TYPE",
    "LEAD_TOPIC",
    "Lead",
    "PartnerLimit",
    "check_enabled",
    "lead_handler",
    "lead_record",
    "parse_lead",
    "partner_id_of",
    "resolve_partner",
]

LEAD_TOPIC: Final = "leads.received"
EVENT_TYPE: Final = "lead.received"
SOURCE: Final = "ingress"
BODY_FIELDS: Final = ("partnerId", "externalLeadId", "payload")

PartnerLimit = Callable[[web.Request, str], Awaitable[None]]
"""Raises (429) when the named partner is past its rate limit."""


# -- requests (pure) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lead:
    """An authentic, checked lead: who sent it, its id, its canonical fields (``None``
    where the payload has none) and the payload as compact JSON text."""

    partner_id: str
    external_lead_id: str
    lead_id: str
    fields: Mapping[str, str | None]
    payload_json: str


def partner_id_of(body: Any) -> str:
    """The ``partnerId`` a decoded body names (not yet authenticated).

    :raises InvalidEvent: the body is not an object, or ``partnerId`` is not an id.
    """
    if not isinstance(body, dict):
        raise InvalidEvent("the body must be a JSON object")
    return check_identifier(body.get("partnerId"), "partnerId")


def resolve_partner(registry: PartnerRegistry, partner_id: str) -> Partner:
    """The registry's partner of that id.

    :raises Unauthorized: no such partner (401: nobody to authenticate against).
    """
    partner = registry.get(partner_id)
    if partner is None:
        raise Unauthorized("unknown partner")
    return partner


def check_enabled(partner: Partner, runtime: RuntimeValues | None = None) -> None:
    """:raises Forbidden: the partner's new leads are refused: ``enabled = false`` in the
    registry, or ``partners.<id>.enabled`` switched off at runtime (whose default is the
    registry's value)."""
    enabled = partner.enabled if runtime is None else runtime.value(partner_enabled_key(partner.id))
    if not enabled:
        raise Forbidden("partner disabled")


def parse_lead(body: Mapping[str, Any], partner: Partner) -> Lead:
    """The lead in an authentic ``body`` from ``partner``, mapped to the canonical fields.

    Each canonical field is read from the payload at ``partner.path_of(field)`` (a dotted
    path); a string or a number is taken as text, an absent, ``null`` or blank value as
    none.

    :raises InvalidEvent: naming the field (see the module docstring).
    """
    reject_unknown_fields(body, BODY_FIELDS)
    external_id = check_identifier(body.get("externalLeadId"), "externalLeadId")
    payload = body.get("payload")
    if not isinstance(payload, dict):
        raise InvalidEvent("payload must be a JSON object", field="payload")
    fields = {name: _field(payload, name, partner.path_of(name)) for name in CANONICAL_FIELDS}
    if fields["email"] is None and fields["phone"] is None:
        raise InvalidEvent(
            f"a lead needs an email or a phone (payload.{partner.path_of('email')} "
            f"or payload.{partner.path_of('phone')})",
            field="payload",
        )
    return Lead(
        partner_id=partner.id,
        external_lead_id=external_id,
        lead_id=lead_id(partner.id, external_id),
        fields=fields,
        # Compact, key order as received; non-ASCII kept as is (the codec refuses what
        # UTF-8 cannot carry, such as a lone surrogate escape, with a 400).
        payload_json=json.dumps(payload, separators=(",", ":"), ensure_ascii=False),
    )


def lead_record(
    lead: Lead,
    *,
    idempotency_key: str | None,
    correlation_id: str,
    now_ms: int,
    version: int,
) -> dict[str, Any]:
    """The ``sluice.leads.LeadReceived`` record of ``lead``; ``eventId`` is the lead id,
    so every copy of one lead is one event to the worker's dedupe."""
    return {
        "eventId": lead.lead_id,
        "eventType": EVENT_TYPE,
        "version": version,
        "occurredAt": now_ms,
        "correlationId": correlation_id,
        "source": SOURCE,
        "leadId": lead.lead_id,
        "partnerId": lead.partner_id,
        "externalLeadId": lead.external_lead_id,
        **lead.fields,
        "payload": lead.payload_json,
        "idempotencyKey": idempotency_key,
        "receivedAt": now_ms,
    }


def _field(payload: Mapping[str, Any], name: str, path: str) -> str | None:
    value: Any = payload
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if value is None:
        return None
    # bool is an int to Python; true is no phone number.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise InvalidEvent(
            f"payload.{path} ({name}) must be a string or a number", field=f"payload.{path}"
        )
    text = str(value).strip()
    return text or None


# -- handler -----------------------------------------------------------------------------


def lead_handler(
    *,
    registry: PartnerRegistry,
    publisher: Publisher,
    runtime: RuntimeValues | None = None,
    codec: Codec,
    clock: Clock,
    metrics: Metrics,
    max_body_bytes: int,
    limit: PartnerLimit | None = None,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """:param limit: the partner rate limit (``RateLimiter.check_partner``); ``None``: none."""
    # The version the codec writes with (the subject's latest), read once.
    version = codec.resolver.catalog.latest_version(LEAD_RECEIVED_SUBJECT)

    async def handle(request: web.Request) -> web.Response:
        raw_body = await read_json_body(request, max_body_bytes)
        body = parse_json(raw_body)
        partner = resolve_partner(registry, partner_id_of(body))
        if limit is not None:
            await limit(request, partner.id)
        partner_auth.verify(raw_body, request.headers, partner, registry, clock.time())
        check_enabled(partner, runtime)
        idempotency_key = request_id_from(request.headers.get(IDEMPOTENCY_HEADER))
        lead = parse_lead(body, partner)
        record = lead_record(
            lead,
            idempotency_key=idempotency_key,
            correlation_id=correlation_id(request),
            now_ms=int(clock.time() * 1000),
            version=version,
        )
        value = codec.encode(LEAD_TOPIC, record)
        headers = record_headers(LEAD_TOPIC, record, traceparent=traceparent_of(request))
        await publish_counted(publisher, metrics, LEAD_TOPIC, lead.lead_id, value, headers)
        return json_response({"accepted": True, "id": lead.lead_id}, status=202)

    return handle
