"""Named, scoped internal API tokens: configuration, and every internal route of the real
ingress (broker included) refusing what it must.

The route tests are parametrised over the internal application's router as
``create_apps`` builds it, so a route added later under ``/internal/`` is checked
without anyone listing it here: no token 401, a token with every scope but the route's
403 naming it, the route's scope alone lets the request through; every POST route
answers a malformed body 400 naming the field and an oversize one 413, and publishes
nothing on any topic.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from confluent_kafka import Consumer

from base.clock import SystemClock
from base.errors import ConfigError
from base.logs import JsonFormatter
from base.metrics import INGRESS_METRICS, Metrics
from base.settings import Settings, load_settings
from connectors.kafka_reader import high_watermarks
from ingress.app import create_apps
from ingress.auth import PROTECTED_PATHS, PROTECTED_PREFIXES, internal_token_middleware
from ingress.listener import ListenerLimits, listen
from ingress.middleware import METRICS_KEY, outcome_middleware
from ingress.publisher import KafkaPublisher
from ingress.scopes import ADMIN_SCOPE, ROUTE_SCOPES, SCOPES, caller_name
from ingress.server import running_ingress
from ingress.tokens import INTERNAL_TOKEN_SCOPES, load_tokens, token_digest, tokens_from
from schemas.catalog import all_topics
from schemas.codec import make_codec
from tests.fixtures.ingress import (
    INTERNAL_TOKEN,
    MAX_BODY,
    IngressUnderTest,
    ingress_settings,
    started_ingress,
)

# --- the tokens the scoped ingress accepts -------------------------------------------------

ADMIN_TOKEN = "adm_scoped_test_0123456789"
ROUTE_SCOPE_SET = sorted(set(ROUTE_SCOPES.values()))


def _slug(scope: str) -> str:
    return scope.replace(":", "-")


def _secret(name: str) -> str:
    return f"tok-{name}-0123456789abcdef"


def _named_tokens() -> dict[str, dict[str, Any]]:
    """Per route scope: ``only-<scope>`` (that scope alone, given as a digest) and
    ``all-but-<scope>`` (every other scope, admin excepted, given in clear)."""
    tokens: dict[str, dict[str, Any]] = {}
    for scope in ROUTE_SCOPE_SET:
        only, all_but = f"only-{_slug(scope)}", f"all-but-{_slug(scope)}"
        tokens[only] = {
            "digest": "sha256:" + token_digest(_secret(only)).hex(),
            "scopes": [scope],
        }
        tokens[all_but] = {
            "token": _secret(all_but),
            "scopes": sorted(SCOPES - {scope, ADMIN_SCOPE}),
        }
    return tokens


SCOPED_ENV = {
    "SLUICE_API_TOKENS": json.dumps(_named_tokens()),
    "INTERNAL_API_TOKEN": INTERNAL_TOKEN,
    "ADMIN_API_TOKEN": ADMIN_TOKEN,
}


def _headers(token: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Internal-Token"] = token
    return headers


# --- the internal routes, read from the router ------------------------------------------


class _NeverPublishes:
    """Stands in for the publisher while the router is only read at collection time;
    no request ever reaches it (the routes are exercised on a real ingress)."""

    async def publish(self, topic: str, key: str, value: bytes, headers: Sequence[Any]) -> None:
        raise AssertionError("only the router is read")

    async def ready(self) -> bool:
        raise AssertionError("only the router is read")


def _internal_routes() -> list[tuple[str, str, str]]:
    """(method, route name, path to request) of every token-protected route: under
    ``/internal/``, ``/v1/admin/`` and ``/admin/``, and ``/admin`` itself."""
    settings = ingress_settings("127.0.0.1:9", SCOPED_ENV)
    apps = create_apps(
        settings, publisher=_NeverPublishes(), codec=make_codec(None), clock=SystemClock()
    )
    routes: list[tuple[str, str, str]] = []
    for route in apps.internal.router.routes():
        resource = route.resource
        # HEAD is aiohttp's twin of each GET route (same name, same handler).
        if resource is None or route.method == "HEAD":
            continue
        canonical = resource.canonical
        if not (canonical in PROTECTED_PATHS or canonical.startswith(PROTECTED_PREFIXES)):
            continue
        path = re.sub(r"\{[^}]+\}", "probe-1", resource.canonical)
        routes.append((route.method, route.name or "unnamed", path))
    return sorted(routes)


INTERNAL_ROUTES = _internal_routes()
ROUTE_IDS = [f"{method} {name}" for method, name, _ in INTERNAL_ROUTES]
POST_ROUTES = [route for route in INTERNAL_ROUTES if route[0] == "POST"]
POST_IDS = [f"{method} {name}" for method, name, _ in POST_ROUTES]


def test_the_router_has_the_routes_we_know() -> None:
    names = {name for _, name, _ in INTERNAL_ROUTES}
    assert {"internal.events", "internal.payments.status", "internal.leads.deliver"} <= names


def test_every_internal_route_has_a_scope() -> None:
    """A route without one would be refused to everyone (fail closed): caught here first."""
    missing = sorted(name for _, name, _ in INTERNAL_ROUTES if name not in ROUTE_SCOPES)
    assert missing == []


# --- the scoped ingress ------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def scoped(catalog_topics: str) -> AsyncIterator[IngressUnderTest]:
    async with started_ingress(ingress_settings(catalog_topics, SCOPED_ENV)) as running:
        yield running


def _topic_offsets(bootstrap: str) -> dict[str, dict[int, int]]:
    """The end offset of every partition of every catalog topic: equal before and after
    a request means it published nothing anywhere."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "scoped-tokens-offsets"})
    try:
        return {spec.name: high_watermarks(consumer, spec.name) for spec in all_topics()}
    finally:
        consumer.close()


async def _call(
    ingress: IngressUnderTest, method: str, path: str, token: str | None, body: bytes = b"{}"
) -> tuple[int, Any]:
    data = body if method == "POST" else None
    async with ingress.http.request(
        method, f"{ingress.internal}{path}", data=data, headers=_headers(token)
    ) as response:
        # Refusals are always JSON (the probe does not ask for HTML); a success may be a
        # page (GET /admin), kept as text so a refusal check on it still fails.
        if response.status < 300 and response.content_type != "application/json":
            return response.status, await response.text()
        return response.status, await response.json(content_type=None)


@pytest.mark.integration
@pytest.mark.parametrize(("method", "name", "path"), INTERNAL_ROUTES, ids=ROUTE_IDS)
async def test_no_token_is_401(scoped: IngressUnderTest, method: str, name: str, path: str) -> None:
    status, body = await _call(scoped, method, path, None)
    assert status == 401, body
    assert body["error"] == "unauthorized"


@pytest.mark.integration
@pytest.mark.parametrize(("method", "name", "path"), INTERNAL_ROUTES, ids=ROUTE_IDS)
async def test_an_unknown_token_is_401(
    scoped: IngressUnderTest, method: str, name: str, path: str
) -> None:
    status, body = await _call(scoped, method, path, _secret("nobody"))
    assert status == 401, body


@pytest.mark.integration
@pytest.mark.parametrize(("method", "name", "path"), INTERNAL_ROUTES, ids=ROUTE_IDS)
async def test_every_scope_but_the_routes_is_403_naming_it(
    scoped: IngressUnderTest, method: str, name: str, path: str
) -> None:
    scope = ROUTE_SCOPES[name]
    before = _topic_offsets(scoped.bootstrap)
    status, body = await _call(scoped, method, path, _secret(f"all-but-{_slug(scope)}"))
    assert status == 403, body
    assert body["error"] == "forbidden"
    assert body["scope"] == scope
    assert scope in body["detail"]
    assert _topic_offsets(scoped.bootstrap) == before


@pytest.mark.integration
@pytest.mark.parametrize(("method", "name", "path"), INTERNAL_ROUTES, ids=ROUTE_IDS)
async def test_the_routes_scope_lets_the_request_through(
    scoped: IngressUnderTest, method: str, name: str, path: str
) -> None:
    scope = ROUTE_SCOPES[name]
    # A body no route accepts: the route is reached, and does nothing.
    probe = json.dumps({"probeUnknownField": True}).encode()
    for token in (_secret(f"only-{_slug(scope)}"), ADMIN_TOKEN):
        status, body = await _call(scoped, method, path, token, probe)
        assert status not in (401, 403), body


@pytest.mark.integration
@pytest.mark.parametrize(("method", "name", "path"), INTERNAL_ROUTES, ids=ROUTE_IDS)
async def test_an_internal_api_token_holds_every_scope_but_config_write_and_admin(
    scoped: IngressUnderTest, method: str, name: str, path: str
) -> None:
    scope = ROUTE_SCOPES[name]
    probe = json.dumps({"probeUnknownField": True}).encode()
    status, body = await _call(scoped, method, path, INTERNAL_TOKEN, probe)
    if scope in INTERNAL_TOKEN_SCOPES:
        assert status not in (401, 403), body
    else:
        assert (status, body["scope"]) == (403, scope)


@pytest.mark.integration
@pytest.mark.parametrize(("method", "name", "path"), POST_ROUTES, ids=POST_IDS)
@pytest.mark.parametrize(
    "body",
    [{"probeUnknownField": True}, {}],
    ids=["unknown-field", "empty-object"],
)
async def test_a_malformed_body_is_400_naming_the_field_and_publishes_nothing(
    scoped: IngressUnderTest, method: str, name: str, path: str, body: dict[str, Any]
) -> None:
    token = _secret(f"only-{_slug(ROUTE_SCOPES[name])}")
    before = _topic_offsets(scoped.bootstrap)
    status, answer = await _call(scoped, method, path, token, json.dumps(body).encode())
    assert status == 400, answer
    assert answer["error"] == "invalid"
    assert answer.get("field"), answer
    assert _topic_offsets(scoped.bootstrap) == before


@pytest.mark.integration
@pytest.mark.parametrize(("method", "name", "path"), POST_ROUTES, ids=POST_IDS)
async def test_an_oversize_body_is_413_and_publishes_nothing(
    scoped: IngressUnderTest, method: str, name: str, path: str
) -> None:
    token = _secret(f"only-{_slug(ROUTE_SCOPES[name])}")
    oversize = b'{"pad":"' + b"x" * MAX_BODY + b'"}'
    before = _topic_offsets(scoped.bootstrap)
    status, answer = await _call(scoped, method, path, token, oversize)
    assert status == 413, answer
    assert answer["error"] == "too_large"
    assert _topic_offsets(scoped.bootstrap) == before


@pytest.mark.integration
async def test_with_a_token_unknown_routes_are_still_404_and_405(scoped: IngressUnderTest) -> None:
    status, _ = await _call(scoped, "GET", "/internal/v1/nothing-here", ADMIN_TOKEN)
    assert status == 404
    status, _ = await _call(scoped, "GET", "/internal/v1/events", ADMIN_TOKEN)
    assert status == 405
    # Without one, nothing is said about routes or methods.
    status, _ = await _call(scoped, "GET", "/internal/v1/nothing-here", None)
    assert status == 401


# --- a route missing from ROUTE_SCOPES, the caller on the request ----------------------------


UNSCOPED = [("POST", "/internal/v1/dummy"), ("GET", "/internal/v1/unnamed")]


async def _dummy(request: web.Request) -> web.Response:
    return web.json_response({"caller": caller_name(request)})


@pytest.mark.integration
async def test_a_route_missing_from_route_scopes_is_refused_to_every_token(
    catalog_topics: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = ingress_settings(catalog_topics, SCOPED_ENV)
    publisher = KafkaPublisher(catalog_topics)
    try:
        apps = create_apps(
            settings, publisher=publisher, codec=make_codec(None), clock=SystemClock()
        )
        apps.internal.router.add_post("/internal/v1/dummy", _dummy, name="internal.dummy")
        apps.internal.router.add_get("/internal/v1/unnamed", _dummy)
        listener = await listen(apps.internal, "127.0.0.1", 0, ListenerLimits(10.0, 100))
        base = f"http://127.0.0.1:{listener.port}"
        every_token = [ADMIN_TOKEN, INTERNAL_TOKEN] + [_secret(name) for name in _named_tokens()]
        try:
            async with aiohttp.ClientSession() as http:
                for method, path in (
                    ("POST", "/internal/v1/dummy"),
                    ("GET", "/internal/v1/unnamed"),
                ):
                    for token in every_token:
                        async with http.request(
                            method, base + path, json={}, headers={"X-Internal-Token": token}
                        ) as response:
                            body = await response.json()
                            assert response.status == 403, body
                            assert "no scope" in body["detail"]
                    async with http.request(method, base + path, json={}) as response:
                        assert response.status == 401
        finally:
            await listener.close()
    finally:
        await publisher.close()
    said = [r for r in caplog.records if "without a scope" in r.getMessage()]
    assert {getattr(r, "route", None) for r in said} == {"internal.dummy", "unnamed"}


@pytest.mark.integration
async def test_the_token_name_is_left_on_the_request() -> None:
    registry, problems = tokens_from(
        {"orders-service": {"token": _secret("orders-service"), "scopes": ["events:write"]}}
    )
    assert problems == []
    app = web.Application(middlewares=[outcome_middleware, internal_token_middleware(registry)])
    app[METRICS_KEY] = Metrics(INGRESS_METRICS)
    app.router.add_post("/internal/v1/events", _dummy, name="internal.events")
    listener = await listen(app, "127.0.0.1", 0, ListenerLimits(10.0, 100))
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{listener.port}/internal/v1/events",
                headers={"X-Internal-Token": _secret("orders-service")},
            ) as response,
        ):
            assert response.status == 200
            assert await response.json() == {"caller": "orders-service"}
    finally:
        await listener.close()


def _order_created() -> dict[str, Any]:
    return {
        "eventType": "order.created",
        "source": "scoped-tokens-test",
        "data": {
            "orderId": f"ord_{uuid.uuid4().hex[:12]}",
            "userId": "user_1",
            "amount": 500,
            "currency": "usd",
            "items": [{"productId": "sku_1", "quantity": 1}],
        },
    }


@pytest.mark.integration
async def test_logs_name_the_caller_never_the_token(
    scoped: IngressUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"{scoped.internal}/internal/v1/events"
    calls = [
        (_secret("only-events-write"), 202),
        (_secret("all-but-events-write"), 403),
        (_secret("nobody"), 401),
        (INTERNAL_TOKEN, 202),
    ]
    for token, expected in calls:
        async with scoped.http.post(
            url, json=_order_created(), headers=_headers(token)
        ) as response:
            assert response.status == expected

    lines = [
        (r.getMessage(), getattr(r, "status", None), getattr(r, "caller", None))
        for r in caplog.records
        if r.name == "ingress.middleware"
    ]
    assert ("internal request", 202, "only-events-write") in lines
    assert ("request refused", 403, "all-but-events-write") in lines
    assert ("request refused", 401, "anonymous") in lines
    assert ("internal request", 202, "internal-1") in lines
    formatter = JsonFormatter()
    logged = "\n".join(formatter.format(record) for record in caplog.records)
    for token, _ in calls:
        assert token not in logged
    assert token_digest(_secret("only-events-write")).hex() not in logged


# --- configuration (pure) ------------------------------------------------------------------


def _settings(
    tmp_path: Path, file_text: str | None = None, suffix: str = ".toml", **env: str
) -> Settings:
    values = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9", **env}
    if file_text is not None:
        path = tmp_path / f"tokens{suffix}"
        path.write_text(file_text, encoding="utf-8")
        values["SLUICE_API_TOKENS_FILE"] = str(path)
    return load_settings(values)


ORDERS_SECRET = "orders-service-secret-0123456789"
ORDERS_DIGEST = "sha256:" + token_digest(ORDERS_SECRET).hex()


def test_named_tokens_from_a_toml_file_the_environment_and_the_older_lists(
    tmp_path: Path,
) -> None:
    settings = _settings(
        tmp_path,
        f"""
[tokens.orders-service]
digest = "{ORDERS_DIGEST}"
scopes = ["events:write", "payments:write"]
""",
        SLUICE_API_TOKENS=json.dumps(
            {"support": {"token": "support-secret-0123456789", "scopes": ["leads:read"]}}
        ),
        INTERNAL_API_TOKEN="old-a,old-b",
        ADMIN_API_TOKEN="adm",
    )
    registry = load_tokens(settings)
    by_name = {token.name: token for token in registry}
    assert sorted(by_name) == ["admin-1", "internal-1", "internal-2", "orders-service", "support"]
    assert by_name["orders-service"].scopes == {"events:write", "payments:write"}
    assert by_name["internal-1"].scopes == SCOPES - {"config:write", ADMIN_SCOPE}
    assert by_name["admin-1"].allows("config:write")
    assert not by_name["internal-2"].allows("config:write")
    assert not by_name["support"].allows("leads:write")

    def name_of(token: str) -> str | None:
        found = registry.identify(token)
        return found.name if found else None

    assert name_of(ORDERS_SECRET) == "orders-service"
    assert name_of("support-secret-0123456789") == "support"
    assert name_of("old-b") == "internal-2"
    assert name_of("adm") == "admin-1"
    assert name_of(ORDERS_DIGEST) is None  # the digest is not a token
    assert ORDERS_SECRET not in repr(registry)
    assert "support-secret" not in repr(registry)


def test_the_older_lists_accept_a_repeated_token_once_with_the_broader_rights() -> None:
    registry, problems = tokens_from({}, internal=["a", "b", "a", "c"], admin=["c", "c"])
    assert problems == []
    assert [(token.name, ADMIN_SCOPE in token.scopes) for token in registry] == [
        ("internal-1", False),
        ("internal-2", False),
        ("admin-1", True),
    ]


def test_a_json_tokens_file(tmp_path: Path) -> None:
    text = json.dumps(
        {"tokens": {"orders-service": {"digest": ORDERS_DIGEST, "scopes": ["events:write"]}}}
    )
    registry = load_tokens(_settings(tmp_path, text, suffix=".json"))
    assert [token.name for token in registry] == ["orders-service"]


def _problems(tmp_path: Path, file_text: str, suffix: str = ".toml", **env: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_tokens(_settings(tmp_path, file_text, suffix, **env))
    return str(raised.value).splitlines()


def test_every_bad_entry_is_one_line_naming_it_and_no_secret(tmp_path: Path) -> None:
    secret = "a-secret-that-must-not-show-0123"
    lines = _problems(
        tmp_path,
        f"""
[tokens.good]
token = "{secret}"
scopes = ["events:write"]

[tokens.unknown-scope]
digest = "{ORDERS_DIGEST}"
scopes = ["events:write", "everything"]

[tokens.no-secret]
scopes = ["events:write"]

[tokens.both]
token = "{secret}x"
digest = "{ORDERS_DIGEST}"
scopes = ["events:write"]

[tokens.bad-digest]
digest = "sha256:{secret}"
scopes = ["events:write"]

[tokens.short]
token = "short"
scopes = ["events:write"]

[tokens.no-scopes]
token = "{secret}y"
scopes = []

[tokens.typo]
token = "{secret}z"
scope = ["events:write"]

[tokens.internal-1]
token = "{secret}w"
scopes = ["events:write"]

[tokens.copy]
token = "{secret}"
scopes = ["events:write"]
""",
        SLUICE_API_TOKENS=json.dumps(
            {"good": {"digest": ORDERS_DIGEST, "scopes": ["events:write"]}}
        ),
        INTERNAL_API_TOKEN=secret,
    )
    assert sorted(lines) == sorted(
        [
            "token good: given in both SLUICE_API_TOKENS_FILE and SLUICE_API_TOKENS",
            "token unknown-scope: scopes: unknown scope 'everything' (known: "
            + ", ".join(sorted(SCOPES))
            + ")",
            "token no-secret: no token: give token or digest",
            "token both: give token or digest, not both",
            "token bad-digest: digest: must be sha256: and 64 hex digits",
            "token short: token: must be a string of at least 16 characters",
            "token no-scopes: scopes: must be a non-empty list of scopes",
            "token typo: unknown field 'scope'",
            "token typo: scopes: must be a non-empty list of scopes",
            "token internal-1: internal-N and admin-N name INTERNAL_API_TOKEN and"
            " ADMIN_API_TOKEN tokens",
            # The environment's "good" replaced the file's; "copy" is the file's token again,
            # and so is INTERNAL_API_TOKEN's.
            "token internal-1: the same token as copy",
        ]
    )
    assert not any(secret in line or ORDERS_DIGEST[7:] in line for line in lines)


def test_a_name_given_twice_in_a_json_file_is_refused(tmp_path: Path) -> None:
    entry = json.dumps({"digest": ORDERS_DIGEST, "scopes": ["events:write"]})
    text = f'{{"tokens": {{"a": {entry}, "a": {entry}}}}}'
    (line,) = _problems(tmp_path, text, suffix=".json")
    assert "'a' is given twice" in line
    assert line.startswith("SLUICE_API_TOKENS_FILE ")


@pytest.mark.parametrize(
    "value",
    ["not json", "[]", '{"a": 1}'],
)
def test_a_malformed_environment_form_is_one_line(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_tokens(_settings(tmp_path, SLUICE_API_TOKENS=value))
    (line,) = str(raised.value).splitlines()
    assert "SLUICE_API_TOKENS" in line or line.startswith("token a:")


def test_an_unreadable_tokens_file_is_one_line(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "SLUICE_API_TOKENS_FILE": str(tmp_path / "missing.toml"),
        }
    )
    with pytest.raises(ConfigError, match=r"^SLUICE_API_TOKENS_FILE .*missing\.toml"):
        load_tokens(settings)


def test_the_environment_form_is_redacted(tmp_path: Path) -> None:
    settings = _settings(tmp_path, SLUICE_API_TOKENS=json.dumps({"a": {"token": "x" * 20}}))
    assert settings.redacted()["api_tokens"] == "***"
    assert "x" * 20 not in repr(settings)


async def test_bad_tokens_stop_the_ingress_before_it_connects(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "[tokens.x]\nscopes = ['nope']\n")
    with pytest.raises(ConfigError, match="token x: no token"):
        async with running_ingress(settings):
            pass
