"""What each route takes and answers, by route name: the input of the OpenAPI documents.

One :class:`RouteDoc` per route ``name=`` of ``ingress/app.py`` (both listeners).
``ingress.openapi`` walks the aiohttp routers and looks each route up here, so the
*paths and methods* of the documents always are the route table; this module adds what
the table cannot say: summary, parameters, bodies, statuses. ``tests/test_openapi.py``
fails when a route has no line here or a line has no route.

What the generator adds by itself, so a line here does not repeat it:

- on a path that needs a token (``ingress.auth.is_protected``): the ``internalToken``
  security requirement with the route's scope (``ingress.scopes.ROUTE_SCOPES``), 401
  and 403;
- on a route with a JSON ``body``: 400, 408, 413 and 415;
- on the rate-limited routes (``schemas.runtime_keys.RATE_LIMITED_ROUTES``: the public
  webhooks, the token routes and the admin routes): 429 with ``Retry-After``;
- on every answer: the ``X-Correlation-Id`` header; on every 503: ``Retry-After``.

**Adding a route's description**: add ``"<route name>": RouteDoc(...)`` to
:data:`ROUTE_DOCS`, with the statuses its handler answers (``ok(...)``,
``error(...)``); the bodies' JSON Schemas go inline or into :data:`SCHEMAS` (referenced
as ``ref("Name")``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from ingress.domain_events import EVENT_ROUTES, MAX_AMOUNT_MINOR
from ingress.schema_registry import REGISTRY_CONTENT_TYPE
from schemas.notifications import Channel
from schemas.statuses import WebhookStatus

__all__ = [
    "ROUTE_DOCS",
    "SCHEMAS",
    "Param",
    "Reply",
    "RouteDoc",
    "error",
    "ok",
    "ref",
]

Schema = Mapping[str, Any]


def ref(name: str) -> Schema:
    """A reference to ``components/schemas/<name>`` (:data:`SCHEMAS`)."""
    return {"$ref": f"#/components/schemas/{name}"}


@dataclass(frozen=True)
class Param:
    """A query or header parameter."""

    name: str
    description: str
    schema: Schema = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Reply:
    """One status's answer: a body of ``schema`` (``None``: any JSON) in ``media``, or
    in one of the ``alternatives`` (media type → schema), as the request asks;
    ``media=None``: no body at all (a redirect)."""

    description: str
    schema: Schema | None = None
    media: str | None = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)  # name → description
    alternatives: Mapping[str, Schema] = field(default_factory=dict)


def ok(description: str, schema: Schema | None = None, **kwargs: Any) -> Reply:
    return Reply(description, schema, **kwargs)


def error(description: str) -> Reply:
    """An ingress error answer ``{"error", "detail", "field"?, "scope"?}``."""
    return Reply(description, ref("Error"))


def registry_error(description: str) -> Reply:
    return Reply(description, ref("RegistryError"), media=REGISTRY_CONTENT_TYPE)


@dataclass(frozen=True)
class RouteDoc:
    """One route's description (module docstring).

    :param path_params: JSON Schema of each ``{name}`` of the path (string otherwise).
    :param body: JSON Schema of the request body, for routes that read one.
    :param body_media: the body's media type (JSON unless said).
    :param security: the public routes' own schemes (``components/securitySchemes``),
        any one of them accepted; token routes get theirs from the generator.
    """

    summary: str
    responses: Mapping[int, Reply]
    tag: str
    description: str = ""
    path_params: Mapping[str, Schema] = field(default_factory=dict)
    query: Sequence[Param] = ()
    headers: Sequence[Param] = ()
    body: Schema | None = None
    body_media: str = "application/json"
    security: Sequence[str] = ()


_ID: Final[Schema] = {"type": "string", "minLength": 1, "maxLength": 256}
_TIME: Final[Schema] = {"type": "string", "format": "date-time"}
_NULLABLE_TIME: Final[Schema] = {"type": ["string", "null"], "format": "date-time"}
_NULLABLE_STRING: Final[Schema] = {"type": ["string", "null"]}
_WEBHOOK_STATUSES: Final = [str(status) for status in WebhookStatus]
_SHORT_TEXT: Final[Schema] = {"type": "string", "minLength": 1, "maxLength": 256}


def _object(required: Sequence[str], properties: Mapping[str, Any], **more: Any) -> Schema:
    return {"type": "object", "required": list(required), "properties": dict(properties), **more}


SCHEMAS: Final[Mapping[str, Schema]] = MappingProxyType(
    {
        "Error": _object(
            ["error"],
            {
                "error": {"type": "string", "description": "a stable code: invalid, ..."},
                "detail": {"type": "string", "description": "for people"},
                "field": {"type": "string", "description": "the field or parameter at fault"},
                "scope": {"type": "string", "description": "the scope the token lacks"},
            },
        ),
        "RegistryError": _object(
            ["error_code", "message"],
            {"error_code": {"type": "integer"}, "message": {"type": "string"}},
        ),
        "Accepted": _object(
            ["accepted", "taskId"],
            {"accepted": {"const": True}, "taskId": {"type": "string", "format": "uuid"}},
            description="No reply within SLUICE_REPLY_TIMEOUT: the command is durable and "
            "will still be carried out.",
        ),
        "Readiness": _object(
            ["ready", "kafka"], {"ready": {"type": "boolean"}, "kafka": {"type": "boolean"}}
        ),
        "ConfigEntry": _object(
            ["key", "value", "version", "updatedAt", "updatedBy", "type", "live"],
            {
                "key": {"type": "string"},
                "value": {},
                "version": {"type": "integer", "minimum": 0},
                "updatedAt": _NULLABLE_TIME,
                "updatedBy": _NULLABLE_STRING,
                "type": {"type": "string"},
                "live": {"type": "boolean"},
            },
        ),
        "WebhookLogEntry": _object(
            [
                "provider",
                "eventId",
                "eventType",
                "status",
                "reason",
                "correlationId",
                "contentType",
                "receivedAt",
                "processedAt",
                "bodyBytes",
                "signed",
            ],
            {
                "provider": {"type": "string"},
                "eventId": {"type": "string"},
                "eventType": {"type": "string"},
                "status": {"enum": _WEBHOOK_STATUSES},
                "reason": _NULLABLE_STRING,
                "correlationId": _NULLABLE_STRING,
                "contentType": {"type": "string"},
                "receivedAt": _TIME,
                "processedAt": _NULLABLE_TIME,
                "bodyBytes": {"type": "integer", "minimum": 0},
                "signed": {"type": "boolean"},
            },
        ),
    }
)

_IDEMPOTENCY_KEY = Param(
    "Idempotency-Key",
    "1-255 printable ASCII characters; a retried call with the same key is one call.",
    {"type": "string", "pattern": "^[!-~]{1,255}$"},
)
_WEBHOOK_OK = ok("Stored durably in Kafka", _object(["received"], {"received": {"const": True}}))
_JSON_OBJECT: Final[Schema] = {"type": "object"}
_REPLY_BODY = "the worker's reply"
_PAYMENT_REPLIES: Final[Mapping[int, Reply]] = {
    202: ok("No reply in time; the command is durable", ref("Accepted")),
    404: error("No such order (" + _REPLY_BODY + ")"),
    409: error("The order cannot be paid or refunded now (" + _REPLY_BODY + ")"),
    502: error("Stripe refused the call, or the worker's reply was unusable"),
    503: error("Kafka did not make the command durable"),
}


ROUTE_DOCS: Final[Mapping[str, RouteDoc]] = MappingProxyType(
    {
        # -- public listener ------------------------------------------------------------
        "webhook.stripe": RouteDoc(
            "Receive a Stripe webhook",
            {
                200: _WEBHOOK_OK,
                400: error("The authentic body is not a Stripe event"),
                401: error("Missing, malformed, stale or wrong Stripe-Signature"),
                503: error("Kafka did not make the record durable; Stripe retries"),
            },
            tag="webhooks",
            description="The raw body is verified against every STRIPE_WEBHOOK_SECRET "
            "(tolerance 300 s) and stored as received on webhooks.stripe.",
            body=_JSON_OBJECT,
            security=("stripeSignature",),
        ),
        "webhook.razorpay": RouteDoc(
            "Receive a Razorpay webhook",
            {
                200: _WEBHOOK_OK,
                400: error("The authentic body is not a Razorpay event"),
                401: error("Missing or wrong X-Razorpay-Signature"),
                503: error("Kafka did not make the record durable"),
            },
            tag="webhooks",
            description="X-Razorpay-Signature is the hex HMAC-SHA256 of the raw body.",
            headers=(Param("X-Razorpay-Event-Id", "Razorpay's event id"),),
            body=_JSON_OBJECT,
            security=("razorpaySignature",),
        ),
        "webhook.partner.leads": RouteDoc(
            "Receive a partner lead",
            {
                202: ok(
                    "Stored durably; the id is the same for every copy of the lead",
                    _object(
                        ["accepted", "id"],
                        {"accepted": {"const": True}, "id": {"type": "string"}},
                    ),
                ),
                401: error("Unknown partner, or its credentials are missing or wrong"),
                403: error("A bearer token of another partner, or the partner is disabled"),
                503: error("Kafka did not make the record durable"),
            },
            tag="webhooks",
            description="Authenticated per partner: X-Partner-Signature (hex HMAC-SHA256 "
            "of the raw body), a bearer token, or Standard Webhooks (webhook-id, "
            "webhook-timestamp within 5 minutes, webhook-signature).",
            headers=(
                _IDEMPOTENCY_KEY,
                Param("webhook-id", "Standard Webhooks message id"),
                Param("webhook-timestamp", "Standard Webhooks timestamp (seconds)"),
            ),
            body=_object(
                ["partnerId", "externalLeadId", "payload"],
                {"partnerId": _ID, "externalLeadId": _ID, "payload": _JSON_OBJECT},
                additionalProperties=False,
            ),
            security=("partnerSignature", "partnerBearer", "standardWebhooks"),
        ),
        # -- internal listener: open ----------------------------------------------------
        "healthz": RouteDoc(
            "Liveness",
            {200: ok("Alive", _object(["status"], {"status": {"const": "ok"}}))},
            tag="operations",
        ),
        "readyz": RouteDoc(
            "Readiness: Kafka reachable",
            {
                200: ok("Ready", ref("Readiness")),
                503: ok("Kafka is unreachable", ref("Readiness")),
            },
            tag="operations",
        ),
        "metrics": RouteDoc(
            "Prometheus metrics",
            {200: ok("The Prometheus text format", {"type": "string"}, media="text/plain")},
            tag="operations",
        ),
        "openapi.internal": RouteDoc(
            "This document: the internal listener's OpenAPI 3.1 description",
            {200: ok("OpenAPI 3.1", _JSON_OBJECT)},
            tag="operations",
        ),
        "openapi.public": RouteDoc(
            "The public listener's OpenAPI 3.1 description",
            {200: ok("OpenAPI 3.1", _JSON_OBJECT)},
            tag="operations",
        ),
        "registry.schema": RouteDoc(
            "Schema by id (Confluent Schema Registry API)",
            {
                200: ok(
                    "The Avro schema as JSON text",
                    _object(["schema"], {"schema": {"type": "string"}}),
                    media=REGISTRY_CONTENT_TYPE,
                ),
                404: registry_error("40403: no schema of that id"),
            },
            tag="schema registry",
            description="Ids from schemas/ids.json, as written in byte 1-4 of our values.",
            path_params={"id": {"type": "string", "examples": ["1001"]}},
            query=(
                Param("subject", "accepted and ignored (ids are global)"),
                Param("format", "accepted and ignored"),
            ),
        ),
        "registry.subjects": RouteDoc(
            "Registry subjects: <topic>-value for every topic with a schema",
            {
                200: ok(
                    "Subject names",
                    {"type": "array", "items": {"type": "string"}},
                    media=REGISTRY_CONTENT_TYPE,
                )
            },
            tag="schema registry",
            query=(Param("subjectPrefix", "only the subjects starting with it"),),
        ),
        "registry.versions": RouteDoc(
            "A subject's versions",
            {
                200: ok(
                    "Versions, ascending",
                    {"type": "array", "items": {"type": "integer", "minimum": 1}},
                    media=REGISTRY_CONTENT_TYPE,
                ),
                404: registry_error("40401: no such subject"),
            },
            tag="schema registry",
            path_params={"subject": {"type": "string", "examples": ["orders-value"]}},
        ),
        "registry.version": RouteDoc(
            "One version of a subject (a number, latest or -1)",
            {
                200: ok(
                    "The version",
                    _object(
                        ["subject", "version", "id", "schema"],
                        {
                            "subject": {"type": "string"},
                            "version": {"type": "integer", "minimum": 1},
                            "id": {"type": "integer"},
                            "schema": {"type": "string"},
                        },
                    ),
                    media=REGISTRY_CONTENT_TYPE,
                ),
                404: registry_error("40401: no such subject; 40402: no such version"),
                422: registry_error("42202: not a version number nor latest"),
            },
            tag="schema registry",
            path_params={
                "subject": {"type": "string", "examples": ["config.runtime-value"]},
                "version": {"type": "string", "examples": ["latest", "1"]},
            },
        ),
        # -- internal listener: token ---------------------------------------------------
        "internal.events": RouteDoc(
            "Publish a domain event",
            {
                202: ok(
                    "Stored durably",
                    _object(
                        ["accepted", "eventId"],
                        {"accepted": {"const": True}, "eventId": {"type": "string"}},
                    ),
                ),
                503: error("Kafka did not make the event durable"),
            },
            tag="events",
            description="The envelope of DESIGN §4; data is checked against the event "
            "type's Avro schema and the field rules (ids, amounts up to "
            f"{MAX_AMOUNT_MINOR} minor units, currencies, contacts).",
            body=_object(
                ["eventType", "source", "data"],
                {
                    "eventType": {"enum": sorted(EVENT_ROUTES)},
                    "eventId": _ID,
                    "version": {"type": "integer", "minimum": 1},
                    "occurredAt": {"type": ["integer", "string"]},
                    "correlationId": _ID,
                    "source": _ID,
                    "data": _JSON_OBJECT,
                },
                additionalProperties=False,
                examples=[
                    {
                        "eventType": "order.created",
                        "source": "checkout-service",
                        "data": {
                            "orderId": "ord_openapi_example",
                            "userId": "usr_openapi_example",
                            "amount": 4999,
                            "currency": "usd",
                            "items": [{"productId": "sku_tee_m", "quantity": 2}],
                        },
                    }
                ],
            ),
        ),
        "internal.payments.intents": RouteDoc(
            "Create (or return) the order's PaymentIntent",
            {200: ok("The intent (" + _REPLY_BODY + ")", _JSON_OBJECT), **_PAYMENT_REPLIES},
            tag="payments",
            headers=(_IDEMPOTENCY_KEY,),
            body=_object(["orderId"], {"orderId": _ID}, additionalProperties=False),
        ),
        "internal.payments.checkout-sessions": RouteDoc(
            "Create a Checkout Session for the order",
            {201: ok("The session (" + _REPLY_BODY + ")", _JSON_OBJECT), **_PAYMENT_REPLIES},
            tag="payments",
            headers=(_IDEMPOTENCY_KEY,),
            body=_object(
                ["orderId", "successUrl", "cancelUrl"],
                {
                    "orderId": _ID,
                    "successUrl": {"type": "string", "format": "uri", "maxLength": 2048},
                    "cancelUrl": {"type": "string", "format": "uri", "maxLength": 2048},
                },
                additionalProperties=False,
            ),
        ),
        "internal.payments.refunds": RouteDoc(
            "Refund an order, wholly or partly",
            {201: ok("The refund (" + _REPLY_BODY + ")", _JSON_OBJECT), **_PAYMENT_REPLIES},
            tag="payments",
            headers=(_IDEMPOTENCY_KEY,),
            body=_object(
                ["orderId"],
                {
                    "orderId": _ID,
                    "amount": {"type": "integer", "minimum": 1, "maximum": MAX_AMOUNT_MINOR},
                    "reason": {"type": "string", "maxLength": 500},
                },
                additionalProperties=False,
            ),
        ),
        "internal.payments.status": RouteDoc(
            "An order's payment status (Postgres projection)",
            {
                200: ok("The order and its payments", _object(["orderId", "status"], {})),
                400: error("Not an order id"),
                404: error("No such order"),
                503: error("No DATABASE_URL, or Postgres is unreachable"),
            },
            tag="payments",
            path_params={"orderId": _ID},
        ),
        "internal.leads.deliver": RouteDoc(
            "Deliver a lead now (request/reply)",
            {
                200: ok(
                    "Delivered, or not (" + _REPLY_BODY + ")",
                    _object(["delivered", "attempt"], {}),
                ),
                202: ok("No reply in time; the command is durable", ref("Accepted")),
                404: error("No such lead (" + _REPLY_BODY + ")"),
                409: error("The lead belongs to another partner (" + _REPLY_BODY + ")"),
                502: error("The worker's reply was unusable"),
                503: error("Kafka did not make the command durable"),
            },
            tag="leads",
            body=_object(
                ["leadId", "partnerId"],
                {
                    "leadId": _ID,
                    "partnerId": _ID,
                    "attempt": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                    "metadata": {
                        "type": "object",
                        "maxProperties": 50,
                        "additionalProperties": {"type": "string", "maxLength": 1024},
                    },
                    "force": {"type": "boolean"},
                },
                additionalProperties=False,
            ),
        ),
        "internal.leads.status": RouteDoc(
            "A lead and its delivery attempts",
            {
                200: ok("The lead", _object(["leadId", "status", "deliveryAttempts"], {})),
                400: error("Not a lead id"),
                404: error("No such lead"),
                503: error("No DATABASE_URL, or Postgres is unreachable"),
            },
            tag="leads",
            path_params={"leadId": _ID},
        ),
        "internal.cache.invalidate": RouteDoc(
            "Drop cache keys and prefixed patterns (request/reply)",
            {
                200: ok(
                    "Keys removed (" + _REPLY_BODY + ")",
                    _object(["invalidated"], {"invalidated": {"type": "integer"}}),
                ),
                202: ok("No reply in time; the command is durable", ref("Accepted")),
                502: error("The worker's reply was unusable"),
                503: error("Kafka did not make the command durable"),
            },
            tag="cache",
            body=_object(
                [],
                {
                    "keys": {"type": "array", "maxItems": 1000, "items": {"type": "string"}},
                    "patterns": {"type": "array", "maxItems": 20, "items": {"type": "string"}},
                },
                additionalProperties=False,
                minProperties=1,
            ),
        ),
        "internal.notifications.send": RouteDoc(
            "Enqueue a templated notification",
            {
                202: ok(
                    "Stored durably",
                    _object(
                        ["enqueued", "id"],
                        {"enqueued": {"const": True}, "id": {"type": "string"}},
                    ),
                ),
                503: error("Kafka did not make the request durable"),
            },
            tag="notifications",
            headers=(_IDEMPOTENCY_KEY,),
            body=_object(
                ["to", "channel", "template", "data"],
                {
                    "to": {"type": "string"},
                    "channel": {"enum": [str(channel) for channel in Channel]},
                    "template": {"type": "string", "pattern": "^[A-Za-z0-9_]{1,64}$"},
                    "data": _JSON_OBJECT,
                },
                additionalProperties=False,
            ),
        ),
        "internal.notifications.status": RouteDoc(
            "A notification's outcome",
            {
                200: ok("The notification", _object(["id", "status"], {})),
                400: error("Not a notification id (a UUID)"),
                404: error("No such notification"),
                503: error("No DATABASE_URL, or Postgres is unreachable"),
            },
            tag="notifications",
            path_params={"id": {"type": "string", "format": "uuid"}},
        ),
        "internal.search.index": RouteDoc(
            "Upsert or delete one search document",
            {
                202: ok(
                    "Stored durably",
                    _object(
                        ["accepted", "taskId", "version"],
                        {
                            "accepted": {"const": True},
                            "taskId": {"type": "string"},
                            "version": {"type": "integer"},
                        },
                    ),
                ),
                503: error("Kafka did not make the command durable"),
            },
            tag="search",
            body=_object(
                ["index", "id", "op"],
                {
                    "index": {"type": "string"},
                    "id": _ID,
                    "op": {"enum": ["upsert", "delete"]},
                    "doc": _JSON_OBJECT,
                    "version": {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
                },
                additionalProperties=False,
            ),
        ),
        "internal.search.query": RouteDoc(
            "Search an index on the allow-list",
            {
                200: ok(
                    "A page of hits",
                    _object(
                        ["index", "total", "totalExact", "hits", "next"],
                        {"hits": {"type": "array"}, "next": _NULLABLE_STRING},
                    ),
                ),
                400: error("A bad or unknown parameter (field names it)"),
                404: error("No such index on the allow-list"),
                503: error("No ELASTICSEARCH_URL, or Elasticsearch is unreachable"),
            },
            tag="search",
            description="Besides these: <keyword field>=value, <numeric field>_min/_max, "
            "<date field>_from/_to of the index's mapping; any other parameter is a 400.",
            query=(
                Param("q", "full text", {"type": "string", "minLength": 1, "maxLength": 1000}),
                Param("sort", "a field; -field for descending"),
                Param("size", "1-100", {"type": "integer", "minimum": 1, "maximum": 100}),
                Param("from", "offset", {"type": "integer", "minimum": 0}),
                Param("search_after", "the next cursor of the previous page"),
                Param("lat", "latitude", {"type": "number", "minimum": -90, "maximum": 90}),
                Param("lon", "longitude", {"type": "number", "minimum": -180, "maximum": 180}),
                Param("distance", "5km, 800m, 3mi", {"type": "string"}),
            ),
        ),
        "internal.config.get": RouteDoc(
            "Read runtime configuration (one key, or all)",
            {
                200: ok(
                    "The key (ETag: its version), or every key as entries",
                    {
                        "oneOf": [
                            ref("ConfigEntry"),
                            _object(["entries"], {"entries": {"items": ref("ConfigEntry")}}),
                        ]
                    },
                    headers={"ETag": 'the version, "<n>" (with key only)'},
                ),
                404: error("Undeclared key"),
            },
            tag="config",
            query=(Param("key", "a declared key"),),
        ),
        "internal.config.set": RouteDoc(
            "Change one runtime configuration key",
            {
                200: ok(
                    "Written and applied here",
                    _object(["key", "value", "version"], {"version": {"type": "integer"}}),
                    headers={"ETag": 'the new version, "<n>"'},
                ),
                409: error("If-Match is not the key's current version (version: current)"),
                428: error("No If-Match"),
                503: error("Kafka is unreachable or did not make the entry durable"),
            },
            tag="config",
            headers=(
                Param(
                    "If-Match",
                    "the version last read (0: never set); 428 without it",
                    required=True,
                ),
            ),
            body=_object(
                ["key", "value"],
                {"key": {"type": "string"}, "value": {}},
                additionalProperties=False,
            ),
        ),
        # -- admin API (/v1/admin) and the dashboard (/admin), admin scope ---------------
        "admin.webhooks.logs": RouteDoc(
            "The webhook log, newest first (keyset pages)",
            {
                200: ok(
                    "A page of stored webhooks",
                    _object(
                        ["items", "next"],
                        {
                            "items": {"type": "array", "items": ref("WebhookLogEntry")},
                            "next": _NULLABLE_STRING,
                        },
                    ),
                ),
                400: error("A bad or unknown parameter (field names it)"),
                503: error("No DATABASE_URL, or Postgres is unreachable"),
            },
            tag="admin",
            query=(
                Param("provider", "stripe or razorpay", {"enum": ["stripe", "razorpay"]}),
                Param("eventType", "the provider's event type", _SHORT_TEXT),
                Param("status", "the row's status", {"enum": _WEBHOOK_STATUSES}),
                Param("eventId", "one event id", _SHORT_TEXT),
                Param("since", "received at or after (ISO 8601 with offset)", _TIME),
                Param("until", "received before (ISO 8601 with offset)", _TIME),
                Param("limit", "1-200, default 50", {"type": "integer", "minimum": 1}),
                Param("cursor", "the next of the previous page"),
            ),
        ),
        "admin.webhooks.replay": RouteDoc(
            "Re-publish stored webhooks (by event ids, or a time range)",
            {
                202: ok(
                    "Published again",
                    _object(
                        ["accepted", "replayId", "count"],
                        {
                            "accepted": {"const": True},
                            "replayId": {"type": "string"},
                            "count": {"type": "integer", "minimum": 0},
                        },
                    ),
                ),
                404: error("An event id without a stored webhook; nothing was published"),
                503: error("No DATABASE_URL, Postgres is unreachable, or Kafka did not take it"),
            },
            tag="admin",
            description="{provider, eventIds} or {provider, since, until}; at most "
            "SLUICE_REPLAY_MAX_EVENTS webhooks per call (more: 400, nothing published).",
            body=_object(
                ["provider"],
                {
                    "provider": {"enum": ["stripe", "razorpay"]},
                    "eventIds": {"type": "array", "minItems": 1, "items": _SHORT_TEXT},
                    "since": _TIME,
                    "until": _TIME,
                },
                additionalProperties=False,
            ),
        ),
        "admin.dlq.list": RouteDoc(
            "Dead letters, oldest first (pages)",
            {
                200: ok(
                    "A page of dead letters (without their values)",
                    _object(
                        ["items", "next"],
                        {"items": {"type": "array"}, "next": _NULLABLE_STRING},
                    ),
                ),
                400: error("A bad or unknown parameter (field names it)"),
                503: error("Kafka could not be read"),
            },
            tag="admin",
            query=(
                Param("originTopic", "the topic the record failed on", _SHORT_TEXT),
                Param("reason", "a case-insensitive part of the reason", _SHORT_TEXT),
                Param("since", "failed at or after (ISO 8601 with offset)", _TIME),
                Param("until", "failed before (ISO 8601 with offset)", _TIME),
                Param("limit", "1-200, default 50", {"type": "integer", "minimum": 1}),
                Param("cursor", "the next of the previous page (<partition>:<offset>)"),
            ),
        ),
        "admin.dlq.show": RouteDoc(
            "One dead letter by its eventId, its original decoded when it can be",
            {
                200: ok("The dead letter", _JSON_OBJECT),
                400: error("An id over 256 characters"),
                404: error("No dead letter of that id"),
                503: error("Kafka could not be read"),
            },
            tag="admin",
        ),
        "admin.dlq.replay": RouteDoc(
            "Re-produce dead letters to their origin topics",
            {
                202: ok(
                    "Replayed (oldest first, at most SLUICE_REPLAY_MAX_EVENTS)",
                    _object(
                        ["accepted", "replayId", "count", "eventIds"],
                        {
                            "accepted": {"const": True},
                            "replayId": {"type": "string"},
                            "count": {"type": "integer", "minimum": 0},
                            "eventIds": {"type": "array", "items": {"type": "string"}},
                        },
                    ),
                ),
                503: error("Kafka could not be read or did not take the records in time"),
            },
            tag="admin",
            description="eventIds, a filter (originTopic, reason, since, until), or "
            '{"all": true}; call again for more than SLUICE_REPLAY_MAX_EVENTS.',
            body=_object(
                [],
                {
                    "eventIds": {"type": "array", "minItems": 1, "items": _SHORT_TEXT},
                    "originTopic": _SHORT_TEXT,
                    "reason": _SHORT_TEXT,
                    "since": _TIME,
                    "until": _TIME,
                    "all": {"type": "boolean"},
                },
                additionalProperties=False,
            ),
        ),
        "admin.dashboard": RouteDoc(
            "The on-call dashboard (HTML)",
            {
                200: ok("page", {"type": "string"}, media="text/html"),
                401: Reply(
                    "No token, or one that is not listed; a browser (Accept: text/html) "
                    "gets the login form",
                    ref("Error"),
                    alternatives={"text/html": {"type": "string"}},
                ),
            },
            tag="admin",
            description="The token comes from X-Internal-Token or the sluice_admin cookie "
            "(POST /admin/login).",
        ),
        "admin.dashboard.data": RouteDoc(
            "What the dashboard shows, as JSON (each source may be down on its own)",
            {
                200: ok(
                    "Lag per agent, dead letters, Postgres counts; sources says which failed",
                    _object(["generatedAt", "group", "sources", "agents"], {}),
                ),
            },
            tag="admin",
        ),
        "admin.dashboard.login": RouteDoc(
            "Log in to the dashboard: the form's token into the sluice_admin cookie",
            {
                303: ok(
                    "To /admin, with the cookie set (no body)",
                    media=None,
                    headers={"Location": "/admin", "Set-Cookie": "sluice_admin (HttpOnly)"},
                ),
                400: error("Not the login form, or no token field"),
                401: Reply(
                    "The token is not listed; a browser (Accept: text/html) gets the "
                    "login form again",
                    ref("Error"),
                    alternatives={"text/html": {"type": "string"}},
                ),
            },
            tag="admin",
            body=_object(["token"], {"token": {"type": "string", "minLength": 1}}),
            body_media="application/x-www-form-urlencoded",
        ),
        "admin.dashboard.replay": RouteDoc(
            "Replay one dead letter from the dashboard",
            {
                200: ok(
                    "Re-produced to its origin topic",
                    _object(
                        ["replayed", "topics"],
                        {
                            "replayed": {"type": "array", "items": {"type": "string"}},
                            "topics": {"type": "array", "items": {"type": "string"}},
                        },
                    ),
                ),
                404: error("No dead letter of that id"),
                503: error("Kafka could not be read"),
            },
            tag="admin",
            description="Authenticated by the cookie, it also needs X-Sluice-CSRF (403 without).",
            body=_object(["eventId"], {"eventId": _ID}, additionalProperties=False),
        ),
    }
)
