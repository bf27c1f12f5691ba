"""The OpenAPI 3.1 documents of both listeners, generated from their route tables.

``GET /openapi.json`` (internal listener, no token) is the internal listener's document,
``GET /openapi/public.json`` the public one's. Each is built from the aiohttp router of
its application (every route but the automatic ``HEAD`` twins of ``GET`` routes), so a
path or method exists in a document exactly when it exists on the listener; what each
route takes and answers is its :class:`ingress.api_docs.RouteDoc`, looked up by route
name. A route without one still appears, marked ``x-undocumented`` (and logged once),
so the document never hides a route; ``tests/test_openapi.py`` fails on it.

Built on the first request, after every route is registered (the routers are frozen
once the listener serves), and kept.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

from aiohttp import web

from ingress.api_docs import ROUTE_DOCS, SCHEMAS, Param, Reply, RouteDoc
from ingress.auth import INTERNAL_TOKEN_HEADER, PROTECTED_PATHS, PROTECTED_PREFIXES
from ingress.middleware import CORRELATION_HEADER
from ingress.responses import json_bytes
from ingress.scopes import scope_of
from schemas.runtime_keys import RATE_LIMITED_ROUTES

__all__ = [
    "DocumentedRoute",
    "add_openapi_routes",
    "documented_routes",
    "openapi_document",
    "undocumented_routes",
]

log = logging.getLogger(__name__)

INTERNAL_PATH: Final = "/openapi.json"
PUBLIC_PATH: Final = "/openapi/public.json"
_PATH_PARAM: Final = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")

_SECURITY_SCHEMES: Final[Mapping[str, Any]] = {
    "internalToken": {
        "type": "apiKey",
        "in": "header",
        "name": INTERNAL_TOKEN_HEADER,
        "description": "A named internal API token; the requirement lists the scope the "
        "route needs (a token holding admin holds every scope).",
    },
    "stripeSignature": {
        "type": "apiKey",
        "in": "header",
        "name": "Stripe-Signature",
        "description": "t=<unix time>,v1=<hex HMAC-SHA256 of t.body> (STRIPE_WEBHOOK_SECRET)",
    },
    "razorpaySignature": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Razorpay-Signature",
        "description": "hex HMAC-SHA256 of the raw body (RAZORPAY_WEBHOOK_SECRET)",
    },
    "partnerSignature": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Partner-Signature",
        "description": "hex HMAC-SHA256 of the raw body with the partner's secret",
    },
    "partnerBearer": {"type": "http", "scheme": "bearer", "description": "the partner's token"},
    "standardWebhooks": {
        "type": "apiKey",
        "in": "header",
        "name": "webhook-signature",
        "description": "Standard Webhooks: v1,<base64 HMAC-SHA256 of id.timestamp.body>, "
        "with the webhook-id and webhook-timestamp headers",
    },
}

_HEADERS: Final[Mapping[str, Any]] = {
    "CorrelationId": {
        "description": "The request's correlation id: the caller's when short and plain, "
        "else a generated one",
        "required": True,
        "schema": {"type": "string"},
    },
    "RetryAfter": {"description": "Seconds to wait before retrying", "schema": {"type": "string"}},
}

_COMMON_PARAMS: Final = (
    Param(CORRELATION_HEADER, "Echoed when 1-128 of [A-Za-z0-9._:-]; else one is generated"),
    Param("traceparent", "W3C trace context, continued into Kafka headers when well-formed"),
)
_ERROR_REF: Final[Mapping[str, str]] = {"$ref": "#/components/schemas/Error"}
_TOKEN_REPLIES: Final[Mapping[int, Reply]] = {
    401: Reply("No token, or one that is not listed", _ERROR_REF),
    403: Reply(
        "The token lacks the route's scope (scope names it)",
        _ERROR_REF,
    ),
}
_BODY_REPLIES: Final[Mapping[int, Reply]] = {
    400: Reply("Malformed JSON or a bad field (field names it)", _ERROR_REF),
    408: Reply("The body did not arrive within SLUICE_BODY_TIMEOUT", _ERROR_REF),
    413: Reply("The body is over SLUICE_MAX_BODY_BYTES", _ERROR_REF),
    415: Reply("Content-Type is not application/json", _ERROR_REF),
}
_RATE_LIMIT_REPLY: Final = Reply("Over the rate limit; nothing was published", _ERROR_REF)


class DocumentedRoute:
    """One (method, path, name) of a router."""

    def __init__(self, method: str, path: str, name: str | None) -> None:
        self.method = method
        self.path = path
        self.name = name

    def __repr__(self) -> str:
        return f"{self.method} {self.path} ({self.name})"


def documented_routes(app: web.Application) -> list[DocumentedRoute]:
    """The routes a document of ``app`` describes: all but ``HEAD`` twins and catch-alls."""
    routes = []
    for route in app.router.routes():
        if route.method in ("HEAD", "*") or route.resource is None:
            continue
        routes.append(DocumentedRoute(route.method, route.resource.canonical, route.name))
    return routes


def undocumented_routes(app: web.Application) -> list[DocumentedRoute]:
    """Routes of ``app`` without a :data:`ROUTE_DOCS` line."""
    return [route for route in documented_routes(app) if route.name not in ROUTE_DOCS]


def openapi_document(app: web.Application, *, listener: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app`` (``listener``: public or internal)."""
    paths: dict[str, dict[str, Any]] = {}
    tags: set[str] = set()
    for route in documented_routes(app):
        doc = ROUTE_DOCS.get(route.name or "")
        if doc is None:
            log.error(
                "route without an OpenAPI description: add it to ingress/api_docs.py",
                extra={"route": route.name or "unnamed", "path": route.path},
            )
            operation: dict[str, Any] = {
                "operationId": route.name or f"{route.method} {route.path}",
                "summary": "undocumented",
                "x-undocumented": True,
                "responses": {"default": {"description": "undocumented"}},
            }
        else:
            operation = _operation(route, doc)
            tags.add(doc.tag)
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"Sluice ingress: {listener} listener",
            "version": _version(),
            "description": "Generated from the listener's route table (ingress/openapi.py) "
            "and the route descriptions (ingress/api_docs.py). Every JSON answer is "
            "compact with sorted keys; every answer carries X-Correlation-Id.",
        },
        "tags": [{"name": tag} for tag in sorted(tags)],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(SCHEMAS),
            "securitySchemes": _SECURITY_SCHEMES,
            "headers": _HEADERS,
        },
    }


def _operation(route: DocumentedRoute, doc: RouteDoc) -> dict[str, Any]:
    needs_token = route.path in PROTECTED_PATHS or route.path.startswith(PROTECTED_PREFIXES)
    responses: dict[int, Reply] = dict(doc.responses)
    if needs_token:
        for status, reply in _TOKEN_REPLIES.items():
            responses.setdefault(status, reply)
    if doc.body is not None:
        for status, reply in _BODY_REPLIES.items():
            responses.setdefault(status, reply)
    if route.name in RATE_LIMITED_ROUTES:  # the routes ingress.ratelimit can refuse
        responses.setdefault(429, _RATE_LIMIT_REPLY)
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": doc.summary,
        "tags": [doc.tag],
        "parameters": [
            *(
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": dict(doc.path_params.get(name, {"type": "string"})),
                }
                for name in _PATH_PARAM.findall(route.path)
            ),
            *(_parameter(param, "query") for param in doc.query),
            *(_parameter(param, "header") for param in (*doc.headers, *_COMMON_PARAMS)),
        ],
        "responses": {
            str(status): _response(status, reply) for status, reply in sorted(responses.items())
        },
    }
    if doc.description:
        operation["description"] = doc.description
    if doc.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {doc.body_media: {"schema": dict(doc.body)}},
        }
    if needs_token:
        scope = scope_of(route.name)
        operation["security"] = [{"internalToken": [scope] if scope else []}]
        if scope:
            operation["x-scope"] = scope
    else:
        operation["security"] = [{scheme: []} for scheme in doc.security]
    return operation


def _parameter(param: Param, where: str) -> dict[str, Any]:
    return {
        "name": param.name,
        "in": where,
        "required": param.required,
        "description": param.description,
        "schema": dict(param.schema),
    }


def _response(status: int, reply: Reply) -> dict[str, Any]:
    headers: dict[str, Any] = {CORRELATION_HEADER: {"$ref": "#/components/headers/CorrelationId"}}
    if status in (429, 503):
        headers["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
    for name, description in reply.headers.items():
        headers[name] = {"description": description, "schema": {"type": "string"}}
    answer: dict[str, Any] = {"description": reply.description, "headers": headers}
    if reply.media is None:
        return answer
    content = {reply.media: {"schema": dict(reply.schema)} if reply.schema is not None else {}}
    for media, schema in reply.alternatives.items():
        content[media] = {"schema": dict(schema)}
    return {**answer, "content": content}


def _version() -> str:
    try:
        return version("sluice")
    except PackageNotFoundError:
        return "0"


def add_openapi_routes(internal: web.Application, public: web.Application) -> None:
    """Serve both documents on ``internal`` (route names ``openapi.internal``/``.public``)."""
    internal.router.add_get(
        INTERNAL_PATH,
        _serving(lambda: openapi_document(internal, listener="internal")),
        name="openapi.internal",
    )
    internal.router.add_get(
        PUBLIC_PATH,
        _serving(lambda: openapi_document(public, listener="public")),
        name="openapi.public",
    )


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _serving(build: Callable[[], dict[str, Any]]) -> Handler:
    built: list[bytes] = []

    async def handle(_request: web.Request) -> web.Response:
        if not built:
            built.append(json_bytes(build()))
        return web.Response(body=built[0], content_type="application/json")

    return handle
