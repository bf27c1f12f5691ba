"""The OpenAPI documents are the route table: every route described, every description a
route, and both documents served (open) on the internal listener.

Built from ``create_apps`` with the default settings (catalog mode, so the schema
registry routes exist). A route added without its line in ``ingress/api_docs.py``
fails :func:`test_every_route_has_a_description`; a line left behind after its route is
gone fails :func:`test_every_description_has_a_route`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import schemathesis
from schemathesis.core.result import Ok

from base.clock import SystemClock
from ingress.api_docs import ROUTE_DOCS
from ingress.app import IngressApps, create_apps
from ingress.auth import PROTECTED_PATHS, PROTECTED_PREFIXES
from ingress.openapi import documented_routes, openapi_document, undocumented_routes
from ingress.scopes import ROUTE_SCOPES
from schemas.codec import make_codec
from tests.fixtures.ingress import IngressUnderTest, ingress_settings


class _NeverPublishes:
    """Only the routers are read here."""

    async def publish(self, topic: str, key: str, value: bytes, headers: Sequence[Any]) -> None:
        raise AssertionError("only the router is read")

    async def ready(self) -> bool:
        raise AssertionError("only the router is read")


def _apps() -> IngressApps:
    return create_apps(
        ingress_settings("127.0.0.1:9"),
        publisher=_NeverPublishes(),
        codec=make_codec(None),
        clock=SystemClock(),
    )


APPS = _apps()


def test_every_route_has_a_description() -> None:
    missing = [*undocumented_routes(APPS.public), *undocumented_routes(APPS.internal)]
    assert missing == [], "add these routes to ROUTE_DOCS in ingress/api_docs.py"


def test_every_description_has_a_route() -> None:
    routed = {
        route.name for app in (APPS.public, APPS.internal) for route in documented_routes(app)
    }
    assert sorted(set(ROUTE_DOCS) - routed) == []


@pytest.mark.parametrize("listener", ["public", "internal"])
def test_the_document_is_the_route_table(listener: str) -> None:
    app = APPS.public if listener == "public" else APPS.internal
    document = openapi_document(app, listener=listener)
    described = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert described == {(route.method, route.path) for route in documented_routes(app)}
    assert document["openapi"] == "3.1.0"
    # schemathesis reads it: every operation resolves (references, parameters, bodies).
    schema = schemathesis.openapi.from_dict(document)
    results = list(schema.get_all_operations())
    assert [r for r in results if not isinstance(r, Ok)] == []
    assert len(results) == len(described)


def test_token_routes_carry_their_scope_and_refusals() -> None:
    document = openapi_document(APPS.internal, listener="internal")
    seen = 0
    for path, item in document["paths"].items():
        for operation in item.values():
            if not (path in PROTECTED_PATHS or path.startswith(PROTECTED_PREFIXES)):
                assert operation["security"] == [], path
                continue
            seen += 1
            scope = ROUTE_SCOPES[operation["operationId"]]
            assert operation["security"] == [{"internalToken": [scope]}]
            assert {"401", "403", "429"} <= set(operation["responses"])
    assert seen >= 14


def test_json_body_routes_describe_the_body_refusals() -> None:
    for app, listener in ((APPS.public, "public"), (APPS.internal, "internal")):
        for item in openapi_document(app, listener=listener)["paths"].values():
            for operation in item.values():
                if "requestBody" in operation:
                    assert {"400", "408", "413", "415"} <= set(operation["responses"])


def test_headers_are_described() -> None:
    internal = openapi_document(APPS.internal, listener="internal")
    public = openapi_document(APPS.public, listener="public")

    def headers(document: dict[str, Any], path: str, method: str) -> set[str]:
        parameters = document["paths"][path][method]["parameters"]
        return {p["name"] for p in parameters if p["in"] == "header"}

    assert "If-Match" in headers(internal, "/internal/v1/config", "post")
    assert "Idempotency-Key" in headers(internal, "/internal/v1/notifications/send", "post")
    assert "Idempotency-Key" in headers(public, "/v1/webhooks/partner/leads", "post")
    assert "X-Correlation-Id" in headers(internal, "/healthz", "get")
    schemes = public["components"]["securitySchemes"]
    assert schemes["stripeSignature"]["name"] == "Stripe-Signature"
    assert schemes["internalToken"]["name"] == "X-Internal-Token"
    responses = internal["paths"]["/internal/v1/config"]["post"]["responses"]
    assert {"409", "428"} <= set(responses)


@pytest.mark.integration
async def test_both_documents_are_served_without_a_token(ingress: IngressUnderTest) -> None:
    for path, listener in (("/openapi.json", "internal"), ("/openapi/public.json", "public")):
        async with ingress.http.get(f"{ingress.internal}{path}") as response:
            assert response.status == 200
            document = await response.json()
        assert document["info"]["title"].endswith(f"{listener} listener")
    assert "/v1/webhooks/stripe" in document["paths"]
    async with ingress.http.get(f"{ingress.public}/openapi.json") as response:
        assert response.status == 404  # never on the public listener
