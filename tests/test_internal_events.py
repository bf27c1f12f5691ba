"""POST /internal/v1/events through the real ingress into the real broker."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from multidict import CIMultiDict

from schemas.codec import make_codec
from tests.fixtures.ingress import MAX_BODY, IngressUnderTest, internal_headers
from tests.fixtures.kafka import end_offsets, header_map, key_of, read_topic, value_of

pytestmark = pytest.mark.integration

CODEC = make_codec(None)
ROUTE = "/internal/v1/events"


def _order_id() -> str:
    return f"ord_{uuid.uuid4().hex[:16]}"


def _created(order_id: str | None = None, **data: Any) -> dict[str, Any]:
    return {
        "eventType": "order.created",
        "source": "shop",
        "data": {
            "orderId": order_id or _order_id(),
            "userId": "user_42",
            "amount": 1999,
            "currency": "usd",
            "items": [{"productId": "sku_1", "quantity": 2}, {"productId": "sku_2", "quantity": 1}],
            "paymentProvider": "stripe",
            **data,
        },
    }


async def _post(
    ingress: IngressUnderTest,
    body: bytes,
    headers: dict[str, str],
    *,
    method: str = "POST",
) -> tuple[int, dict[str, Any], CIMultiDict[str]]:
    async with ingress.http.request(
        method, f"{ingress.internal}{ROUTE}", data=body, headers=headers
    ) as response:
        payload = await response.json(content_type=None)
        return response.status, payload, CIMultiDict(response.headers)


def _json_headers(**more: str) -> dict[str, str]:
    return internal_headers(**{"Content-Type": "application/json", **more})


# --- accepted ----------------------------------------------------------------------------


async def test_order_created_lands_on_orders_keyed_by_order_id(ingress: IngressUnderTest) -> None:
    body = _created()
    order_id = body["data"]["orderId"]
    traceparent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"

    status, payload, response_headers = await _post(
        ingress, json.dumps(body).encode(), _json_headers(traceparent=traceparent)
    )

    assert status == 202
    assert payload["accepted"] is True
    [message] = read_topic(ingress.bootstrap, "orders", key=order_id)
    assert key_of(message) == order_id
    decoded = CODEC.decode(value_of(message), topic="orders")
    record = decoded.record
    assert record["eventId"] == payload["eventId"]
    assert record["eventType"] == "order.created"
    assert record["version"] == decoded.version
    assert record["source"] == "shop"
    assert record["correlationId"] == response_headers["X-Correlation-Id"]
    assert record["data"] == body["data"]
    kafka_headers = header_map(message)
    assert kafka_headers == {
        "event-type": "order.created",
        "event-id": payload["eventId"],
        "correlation-id": response_headers["X-Correlation-Id"],
        "traceparent": traceparent,
        "content-type": "application/vnd.sluice.order-event+avro",
    }


async def test_order_cancelled_lands_with_the_callers_ids(ingress: IngressUnderTest) -> None:
    order_id = _order_id()
    body = {
        "eventId": f"evt-cancel-{order_id}",
        "eventType": "order.cancelled",
        "version": 1,
        "occurredAt": "2024-05-01T12:00:00Z",
        "correlationId": "checkout-7",
        "source": "shop",
        "data": {"orderId": order_id, "reason": "out of stock"},
    }

    status, payload, response_headers = await _post(
        ingress, json.dumps(body).encode(), _json_headers()
    )

    assert (status, payload) == (202, {"accepted": True, "eventId": f"evt-cancel-{order_id}"})
    [message] = read_topic(ingress.bootstrap, "orders", key=order_id)
    record = CODEC.decode(value_of(message), topic="orders").record
    assert record["data"] == {"orderId": order_id, "reason": "out of stock"}
    assert record["eventId"] == f"evt-cancel-{order_id}"
    assert record["occurredAt"] == 1_714_564_800_000
    assert record["correlationId"] == "checkout-7"
    headers = header_map(message)
    assert headers["event-type"] == "order.cancelled"
    assert headers["correlation-id"] == "checkout-7"
    assert headers["traceparent"].startswith("00-")  # generated: none was sent
    assert response_headers["X-Correlation-Id"]


async def test_normalised_values_are_published(ingress: IngressUnderTest) -> None:
    body = _created(currency="EUR", paymentProvider=None)
    order_id = body["data"]["orderId"]
    del body["data"]["paymentProvider"]

    status, _, _ = await _post(ingress, json.dumps(body).encode(), _json_headers())

    assert status == 202
    [message] = read_topic(ingress.bootstrap, "orders", key=order_id)
    data = CODEC.decode(value_of(message)).record["data"]
    assert data["currency"] == "eur"
    assert data["paymentProvider"] is None


async def test_content_type_with_charset_is_accepted(ingress: IngressUnderTest) -> None:
    headers = _json_headers(**{"Content-Type": "application/json; charset=utf-8"})
    status, _, _ = await _post(ingress, json.dumps(_created()).encode(), headers)
    assert status == 202


# --- refused: a clear 4xx, and nothing published ------------------------------------------


def _with(mutate: Callable[[dict[str, Any]], object]) -> bytes:
    body = _created()
    mutate(body)
    return json.dumps(body).encode()


def _data(name: str, value: Any) -> bytes:
    return _with(lambda body: body["data"].__setitem__(name, value))


BAD_REQUESTS: dict[str, tuple[Callable[[], tuple[bytes, dict[str, str]]], int, str | None]] = {
    "no token": (lambda: (_with(lambda b: None), {"Content-Type": "application/json"}), 401, None),
    "wrong token": (
        lambda: (
            _with(lambda b: None),
            {"Content-Type": "application/json", "X-Internal-Token": "tok_nope"},
        ),
        401,
        None,
    ),
    "unknown event type": (
        lambda: (_with(lambda b: b.__setitem__("eventType", "order.shipped")), _json_headers()),
        400,
        "eventType",
    ),
    "missing field": (
        lambda: (_with(lambda b: b["data"].pop("userId")), _json_headers()),
        400,
        "data.userId",
    ),
    "wrong type": (lambda: (_data("userId", 42), _json_headers()), 400, "data.userId"),
    "negative amount": (lambda: (_data("amount", -100), _json_headers()), 400, "data.amount"),
    "float amount": (lambda: (_data("amount", 19.99), _json_headers()), 400, "data.amount"),
    "string amount": (lambda: (_data("amount", "1999"), _json_headers()), 400, "data.amount"),
    "bad currency": (lambda: (_data("currency", "dollars"), _json_headers()), 400, "data.currency"),
    "empty items": (lambda: (_data("items", []), _json_headers()), 400, "data.items"),
    "zero quantity": (
        lambda: (_data("items", [{"productId": "p", "quantity": 0}]), _json_headers()),
        400,
        "data.items[0].quantity",
    ),
    "unknown provider": (
        lambda: (_data("paymentProvider", "paypal"), _json_headers()),
        400,
        "data.paymentProvider",
    ),
    "unknown data field": (lambda: (_data("discount", 5), _json_headers()), 400, "data.discount"),
    "unknown envelope field": (
        lambda: (_with(lambda b: b.__setitem__("priority", "high")), _json_headers()),
        400,
        "priority",
    ),
    "missing source": (lambda: (_with(lambda b: b.pop("source")), _json_headers()), 400, "source"),
    "malformed JSON": (lambda: (b'{"eventType": "order.created", ', _json_headers()), 400, None),
    "not an object": (lambda: (b"[]", _json_headers()), 400, None),
    "empty body": (lambda: (b"", _json_headers()), 400, None),
    "oversize body": (
        lambda: (_data("userId", "u" * (MAX_BODY + 1)), _json_headers()),
        413,
        None,
    ),
    "wrong content type": (
        lambda: (_with(lambda b: None), internal_headers(**{"Content-Type": "text/plain"})),
        415,
        None,
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=list(BAD_REQUESTS))
async def test_bad_request_is_refused_and_nothing_published(
    ingress: IngressUnderTest, case: str
) -> None:
    build, expected_status, field = BAD_REQUESTS[case]
    body, headers = build()
    before = end_offsets(ingress.bootstrap, "orders")

    status, payload, response_headers = await _post(ingress, body, headers)

    assert status == expected_status, payload
    assert payload["error"]
    assert payload["detail"]
    if field is not None:
        assert payload["field"] == field
        assert field in payload["detail"]
    assert response_headers["X-Correlation-Id"]
    assert end_offsets(ingress.bootstrap, "orders") == before


async def test_get_on_the_route_is_405(ingress: IngressUnderTest) -> None:
    status, payload, response_headers = await _post(ingress, b"", internal_headers(), method="GET")

    assert status == 405
    assert payload["error"] == "method_not_allowed"
    assert "POST" in response_headers["Allow"]


async def test_chunked_body_over_the_limit_is_refused(ingress: IngressUnderTest) -> None:
    body = _data("userId", "u" * (MAX_BODY + 1))
    before = end_offsets(ingress.bootstrap, "orders")

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    async with ingress.http.post(
        f"{ingress.internal}{ROUTE}", data=chunks(), headers=_json_headers()
    ) as response:
        assert response.status == 413
    assert end_offsets(ingress.bootstrap, "orders") == before
