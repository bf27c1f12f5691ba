"""The ingress at the HTTP level: one response format, client aborts, malformed HTTP,
read timeouts and the connection cap (raw sockets where a client would refuse to
misbehave)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
import uvloop
from aiohttp import web

from base.metrics import MetricName
from ingress.commands import reply_response
from ingress.listener import ListenerLimits, listen
from ingress.replies import Reply
from tests.fixtures.ingress import (
    STRIPE_SECRET,
    IngressUnderTest,
    ingress_settings,
    internal_headers,
    started_ingress,
)
from tests.payloads.stripe import signed_stripe_request, stripe_event

pytestmark = pytest.mark.integration


def _canonical(text: str) -> str:
    """The one format every JSON answer has: compact, keys sorted."""
    return json.dumps(json.loads(text), separators=(",", ":"), sort_keys=True)


def _order(order_id: str) -> dict[str, Any]:
    return {
        "eventType": "order.created",
        "source": "shop",
        "data": {
            "orderId": order_id,
            "userId": "user_1",
            "amount": 1999,
            "currency": "usd",
            "items": [{"productId": "sku_1", "quantity": 1}],
        },
    }


# --- one response format -----------------------------------------------------------------


async def test_every_route_answers_json_in_one_format(ingress: IngressUnderTest) -> None:
    event = stripe_event("payment_intent.succeeded", event_id=f"evt_{uuid.uuid4().hex}")
    webhook_body, webhook_headers = signed_stripe_request(event, STRIPE_SECRET, int(time.time()))
    json_headers = internal_headers(**{"Content-Type": "application/json"})
    calls: list[tuple[str, str, bytes | None, dict[str, str], int]] = [
        ("POST", f"{ingress.public}/v1/webhooks/stripe", webhook_body, webhook_headers, 200),
        (
            "POST",
            f"{ingress.public}/v1/webhooks/stripe",
            webhook_body,
            {"Content-Type": "application/json"},
            401,
        ),
        ("POST", f"{ingress.public}/v1/webhooks/nope", b"{}", {}, 404),
        ("GET", f"{ingress.public}/v1/webhooks/stripe", None, {}, 405),
        (
            "POST",
            f"{ingress.internal}/internal/v1/events",
            json.dumps(_order(f"ord_{uuid.uuid4().hex[:12]}")).encode(),
            json_headers,
            202,
        ),
        ("POST", f"{ingress.internal}/internal/v1/events", b"{}", json_headers, 400),
        ("POST", f"{ingress.internal}/internal/v1/payments/intents", b"[]", json_headers, 400),
        ("GET", f"{ingress.internal}/internal/v1/payments/ord_1", None, internal_headers(), 503),
        ("GET", f"{ingress.internal}/healthz", None, {}, 200),
        ("GET", f"{ingress.internal}/readyz", None, {}, 200),
    ]
    for method, url, body, headers, status in calls:
        async with ingress.http.request(method, url, data=body, headers=headers) as response:
            text = await response.text()
            assert response.status == status, (url, text)
            assert response.content_type == "application/json", url
            assert text == _canonical(text), (url, text)


def test_a_workers_reply_is_answered_in_the_same_format() -> None:
    reply = Reply("t1", 201, '{"refundId": "re_1",  "amount": 5}', "e1", "c1")

    response = reply_response(reply)

    assert response.status == 201
    assert response.content_type == "application/json"
    assert response.text == '{"amount":5,"refundId":"re_1"}'


# --- raw sockets ---------------------------------------------------------------------------


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


async def _connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*_address(url))


async def _answer(
    reader: asyncio.StreamReader, timeout_s: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """Read one whole response (the server closes after it): status, headers, body."""
    raw = await asyncio.wait_for(reader.read(), timeout_s)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


async def _closed(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """Everything the server sends until it closes; fails if it stays open."""
    return await asyncio.wait_for(reader.read(), timeout_s)


def _webhook_head(length: int, **extra: str) -> bytes:
    lines = [
        "POST /v1/webhooks/stripe HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *(f"{name}: {value}" for name, value in extra.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_a_client_that_leaves_mid_body_is_no_server_error(
    ingress: IngressUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = ingress.running.apps.metrics
    aborted_before = metrics.value(MetricName.HTTP_REQUESTS, route="webhook.stripe", status="499")
    errors_before = metrics.value(MetricName.HTTP_REQUESTS, route="webhook.stripe", status="500")
    caplog.set_level(logging.DEBUG)

    _, writer = await _connect(ingress.public)
    writer.write(_webhook_head(1000) + b'{"id": "evt_')
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    async def counted() -> None:
        while (
            metrics.value(MetricName.HTTP_REQUESTS, route="webhook.stripe", status="499")
            == aborted_before
        ):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(counted(), 10)
    assert (
        metrics.value(MetricName.HTTP_REQUESTS, route="webhook.stripe", status="500")
        == errors_before
    )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert not [r for r in caplog.records if r.exc_info], caplog.text


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz?pad=" + b"SECRETPAD" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"SECRETPAD" * 2000 + b"\r\n\r\n",
        _webhook_head(2, **{"Content-Length": "2"}) + b"{}",
        b"NOT-HTTP \x00\x01SECRETPAD\r\n\r\n",
    ],
    ids=["long URL", "long header", "two Content-Lengths", "garbage"],
)
async def test_malformed_http_is_a_quiet_json_400(
    ingress: IngressUnderTest, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    caplog.set_level(logging.DEBUG)
    reader, writer = await _connect(ingress.public)
    writer.write(request_bytes)
    await writer.drain()

    status, headers, body = await _answer(reader)
    writer.close()

    assert 400 <= status < 500
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]
    assert "SECRETPAD" not in body.decode("latin-1")
    assert "SECRETPAD" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


# --- read timeouts and the connection cap ----------------------------------------------------

HEADER_TIMEOUT_S = 0.5
BODY_TIMEOUT_S = 0.5
MAX_CONNECTIONS = 4


@pytest_asyncio.fixture(scope="module")
async def strict_ingress(catalog_topics: str) -> AsyncIterator[IngressUnderTest]:
    settings = ingress_settings(
        catalog_topics,
        {
            "SLUICE_HEADER_TIMEOUT": f"{HEADER_TIMEOUT_S}s",
            "SLUICE_BODY_TIMEOUT": f"{BODY_TIMEOUT_S}s",
            "SLUICE_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        },
    )
    async with started_ingress(settings) as running:
        yield running


async def _healthy(ingress: IngressUnderTest) -> None:
    async with ingress.http.get(f"{ingress.internal}/healthz") as response:
        assert response.status == 200


async def test_stalled_connections_are_closed_while_others_are_served(
    strict_ingress: IngressUnderTest,
) -> None:
    url = strict_ingress.public
    # Headers begun, never finished.
    partial_head, w1 = await _connect(url)
    w1.write(b"POST /v1/webhooks/stripe HTTP/1.1\r\nHost: x\r\n")
    # Headers done, body promised, never sent in full.
    partial_body, w2 = await _connect(url)
    w2.write(_webhook_head(100) + b'{"id":')
    # Connected, nothing sent.
    silent, w3 = await _connect(url)
    started = time.monotonic()

    async with strict_ingress.http.get(f"{strict_ingress.internal}/healthz") as response:
        assert response.status == 200

    assert await _closed(partial_head, 5) == b""
    body_answer = await _closed(partial_body, 5)
    assert await _closed(silent, 5) == b""
    elapsed = time.monotonic() - started
    assert elapsed < HEADER_TIMEOUT_S + BODY_TIMEOUT_S + 3
    # The stalled body gets its answer (408, JSON) before the connection closes.
    assert body_answer.startswith(b"HTTP/1.1 408"), body_answer[:200]
    assert b'"error":"timeout"' in body_answer
    for writer in (w1, w2, w3):
        writer.close()


async def test_connections_over_the_cap_are_refused_and_later_ones_served(
    strict_ingress: IngressUnderTest,
) -> None:
    url = strict_ingress.public
    held = [await _connect(url) for _ in range(MAX_CONNECTIONS)]
    # Let the server see them all (they are accepted one event-loop turn later).
    await asyncio.sleep(0.1)

    reader, writer = await _connect(url)
    writer.write(b"GET /v1/webhooks/stripe HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await _answer(reader)
    writer.close()

    assert status == 503
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == "unavailable"
    # The cap is per listener: the internal one still answers.
    await _healthy(strict_ingress)

    for _, held_writer in held:
        held_writer.close()
        await held_writer.wait_closed()

    async def served() -> None:
        while True:
            reader, writer = await _connect(url)
            writer.write(
                b"GET /v1/webhooks/stripe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            status, _, _ = await _answer(reader)
            writer.close()
            if status == 405:
                return
            await asyncio.sleep(0.05)

    await asyncio.wait_for(served(), 5)


def test_the_listener_holds_its_limits_on_uvloop() -> None:
    """``sluice ingress`` runs on uvloop, whose transports are not asyncio's classes:
    the same limits on a bare application, a kept-alive connection's second head too."""

    async def ok(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def scenario() -> None:
        app = web.Application()
        app.router.add_get("/", ok)
        listener = await listen(app, "127.0.0.1", 0, ListenerLimits(0.3, max_connections=2))
        url = f"http://127.0.0.1:{listener.port}"
        try:
            kept, kept_writer = await _connect(url)
            kept_writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await asyncio.wait_for(kept.readuntil(b"}"), 5)).endswith(b'{"ok": true}')
            silent, _ = await _connect(url)
            await asyncio.sleep(0.05)
            over, over_writer = await _connect(url)
            over_writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = await _answer(over)
            assert (status, json.loads(body)["error"]) == (503, "unavailable")

            started = time.monotonic()
            kept_writer.write(b"GET / HT")  # a second head, never finished
            assert await _closed(kept, 5) == b""
            assert await _closed(silent, 5) == b""
            assert time.monotonic() - started < 3
        finally:
            await listener.close()

    uvloop.run(scenario())
