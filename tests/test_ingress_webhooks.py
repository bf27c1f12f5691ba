"""Stripe and Razorpay webhooks through the real ingress into the real broker."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from multidict import CIMultiDict

from ingress.verify import razorpay
from schemas.codec import make_codec
from tests.fixtures.ingress import (
    RAZORPAY_SECRET,
    STRIPE_OLD_SECRET,
    STRIPE_SECRET,
    IngressUnderTest,
)
from tests.fixtures.kafka import end_offsets, header_map, read_topic, value_of
from tests.payloads.razorpay import razorpay_event, signed_razorpay_request
from tests.payloads.stripe import STRIPE_EVENT_TYPES, signed_stripe_request, stripe_event

pytestmark = pytest.mark.integration

CODEC = make_codec(None)


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


async def _post(
    ingress: IngressUnderTest, provider: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, object], CIMultiDict[str]]:
    async with ingress.http.post(
        f"{ingress.public}/v1/webhooks/{provider}", data=body, headers=headers
    ) as response:
        payload = await response.json(content_type=None)
        return response.status, payload, CIMultiDict(response.headers)


@pytest.mark.parametrize("event_type", STRIPE_EVENT_TYPES)
async def test_every_normalised_stripe_event_type_lands_once(
    ingress: IngressUnderTest, event_type: str
) -> None:
    event = stripe_event(event_type, event_id=_unique("evt"))
    body, headers = signed_stripe_request(event, STRIPE_SECRET, int(time.time()))

    status, payload, response_headers = await _post(ingress, "stripe", body, headers)

    assert (status, payload) == (200, {"received": True})
    assert response_headers["X-Correlation-Id"]
    [message] = read_topic(ingress.bootstrap, "webhooks.stripe", key=event["id"])
    record = CODEC.decode(value_of(message)).record
    assert record["rawBody"] == body  # byte-identical
    assert record["providerEventId"] == event["id"]
    assert record["eventType"] == event_type
    assert record["signatureHeader"] == headers["Stripe-Signature"]
    kafka_headers = header_map(message)
    assert kafka_headers["event-type"] == event_type
    assert kafka_headers["event-id"] == record["eventId"]
    assert kafka_headers["correlation-id"] == response_headers["X-Correlation-Id"]
    assert kafka_headers["traceparent"].startswith("00-")
    assert kafka_headers["content-type"]


async def test_unknown_stripe_event_type_is_stored_and_acknowledged(
    ingress: IngressUnderTest,
) -> None:
    event = stripe_event("payment_intent.succeeded", event_id=_unique("evt"))
    event["type"] = "customer.tax_id.created"
    body, headers = signed_stripe_request(event, STRIPE_SECRET, int(time.time()))

    status, _, _ = await _post(ingress, "stripe", body, headers)

    assert status == 200
    assert len(read_topic(ingress.bootstrap, "webhooks.stripe", key=event["id"])) == 1


async def test_previous_stripe_secret_of_a_rotation_is_accepted(
    ingress: IngressUnderTest,
) -> None:
    event = stripe_event("payment_intent.succeeded", event_id=_unique("evt"))
    body, headers = signed_stripe_request(event, STRIPE_OLD_SECRET, int(time.time()))

    status, _, _ = await _post(ingress, "stripe", body, headers)

    assert status == 200


async def test_correlation_id_from_the_request_is_echoed_and_carried(
    ingress: IngressUnderTest,
) -> None:
    event = stripe_event("payment_intent.succeeded", event_id=_unique("evt"))
    body, headers = signed_stripe_request(event, STRIPE_SECRET, int(time.time()))
    headers["X-Correlation-Id"] = "req-abc-123"

    status, _, response_headers = await _post(ingress, "stripe", body, headers)

    assert status == 200
    assert response_headers["X-Correlation-Id"] == "req-abc-123"
    [message] = read_topic(ingress.bootstrap, "webhooks.stripe", key=event["id"])
    assert CODEC.decode(value_of(message)).record["correlationId"] == "req-abc-123"


async def test_razorpay_payment_captured_lands_once(ingress: IngressUnderTest) -> None:
    event_id = _unique("rzpevt")
    body, headers = signed_razorpay_request(
        razorpay_event("payment.captured"), RAZORPAY_SECRET, event_id
    )

    status, payload, _ = await _post(ingress, "razorpay", body, headers)

    assert (status, payload) == (200, {"received": True})
    # Keyed by what the signed body is, not by the unsigned event id header, so that a
    # replay under a fresh id lands on the original's partition (and dedupe table).
    content_id = razorpay.verify(body, headers, [RAZORPAY_SECRET], time.time()).content_id
    assert content_id is not None
    assert content_id.startswith("payment.captured@")
    [message] = [
        m
        for m in read_topic(ingress.bootstrap, "webhooks.razorpay", key=content_id)
        if CODEC.decode(value_of(m)).record["providerEventId"] == event_id
    ]
    record = CODEC.decode(value_of(message)).record
    assert record["rawBody"] == body
    assert record["eventType"] == "payment.captured"
    assert record["provider"] == "razorpay"
    assert record["providerEventId"] == event_id


# --- bad input: a clear 4xx and nothing published -------------------------------------


def _stripe_request(*, secret: str = STRIPE_SECRET, age_s: int = 0) -> tuple[bytes, dict[str, str]]:
    event = stripe_event("payment_intent.succeeded", event_id=_unique("evt"))
    return signed_stripe_request(event, secret, int(time.time()) - age_s)


def _missing_signature() -> tuple[bytes, dict[str, str]]:
    body, headers = _stripe_request()
    del headers["Stripe-Signature"]
    return body, headers


def _tampered_body() -> tuple[bytes, dict[str, str]]:
    body, headers = _stripe_request()
    return body.replace(b'"livemode":false', b'"livemode":true '), headers


def _malformed_json_signed() -> tuple[bytes, dict[str, str]]:
    from ingress.verify.stripe import sign

    body = b'{"id": "evt_broken", "type": '
    now = int(time.time())
    return body, {
        "Stripe-Signature": sign(body, STRIPE_SECRET, now),
        "Content-Type": "application/json",
    }


def _wrong_content_type() -> tuple[bytes, dict[str, str]]:
    body, headers = _stripe_request()
    headers["Content-Type"] = "text/plain"
    return body, headers


def _oversize() -> tuple[bytes, dict[str, str]]:
    from ingress.verify.stripe import sign

    body = json.dumps({"id": _unique("evt"), "type": "x", "pad": "a" * 70_000}).encode()
    headers = {"Stripe-Signature": sign(body, STRIPE_SECRET, int(time.time()))}
    headers["Content-Type"] = "application/json"
    return body, headers


BAD_STRIPE_REQUESTS = {
    "missing signature": (_missing_signature, 401),
    "wrong secret": (lambda: _stripe_request(secret="whsec_someone_else"), 401),
    "tampered body": (_tampered_body, 401),
    "stale timestamp": (lambda: _stripe_request(age_s=301), 401),
    "malformed JSON under a valid signature": (_malformed_json_signed, 400),
    "wrong content type": (_wrong_content_type, 415),
    "body over the limit": (_oversize, 413),
}


@pytest.mark.parametrize("case", BAD_STRIPE_REQUESTS, ids=list(BAD_STRIPE_REQUESTS))
async def test_bad_stripe_request_is_refused_and_nothing_published(
    ingress: IngressUnderTest, case: str
) -> None:
    build, expected_status = BAD_STRIPE_REQUESTS[case]
    body, headers = build()
    before = end_offsets(ingress.bootstrap, "webhooks.stripe")

    status, payload, response_headers = await _post(ingress, "stripe", body, headers)

    assert status == expected_status
    assert payload["error"]
    assert payload["detail"]
    assert response_headers["X-Correlation-Id"]
    assert end_offsets(ingress.bootstrap, "webhooks.stripe") == before


async def test_chunked_body_over_the_limit_is_refused(ingress: IngressUnderTest) -> None:
    body, headers = _oversize()
    before = end_offsets(ingress.bootstrap, "webhooks.stripe")

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    async with ingress.http.post(
        f"{ingress.public}/v1/webhooks/stripe", data=chunks(), headers=headers
    ) as response:
        assert response.status == 413
    assert end_offsets(ingress.bootstrap, "webhooks.stripe") == before


@pytest.mark.parametrize(
    ("case", "mutate", "expected_status"),
    [
        ("wrong signature", lambda h: h.update({"X-Razorpay-Signature": "0" * 64}), 401),
        ("missing signature", lambda h: h.pop("X-Razorpay-Signature"), 401),
        ("missing event id", lambda h: h.pop("X-Razorpay-Event-Id"), 400),
    ],
)
async def test_bad_razorpay_request_is_refused_and_nothing_published(
    ingress: IngressUnderTest, case: str, mutate: object, expected_status: int
) -> None:
    body, headers = signed_razorpay_request(
        razorpay_event("payment.captured"), RAZORPAY_SECRET, _unique("rzpevt")
    )
    assert callable(mutate)
    mutate(headers)
    before = end_offsets(ingress.bootstrap, "webhooks.razorpay")

    status, payload, _ = await _post(ingress, "razorpay", body, headers)

    assert status == expected_status, case
    assert payload["error"]
    assert end_offsets(ingress.bootstrap, "webhooks.razorpay") == before


async def test_unknown_route_is_404_json(ingress: IngressUnderTest) -> None:
    async with ingress.http.post(f"{ingress.public}/v1/webhooks/paypal", data=b"{}") as response:
        assert response.status == 404
        assert (await response.json())["error"] == "not_found"
        assert response.headers["X-Correlation-Id"]


async def test_wrong_method_is_405_json(ingress: IngressUnderTest) -> None:
    async with ingress.http.get(f"{ingress.public}/v1/webhooks/stripe") as response:
        assert response.status == 405
        assert (await response.json())["error"] == "method_not_allowed"


async def test_health_and_readiness(ingress: IngressUnderTest) -> None:
    async with ingress.http.get(f"{ingress.internal}/healthz") as response:
        assert response.status == 200
    async with ingress.http.get(f"{ingress.internal}/readyz") as response:
        assert response.status == 200
        assert (await response.json())["ready"] is True
    async with ingress.http.get(f"{ingress.internal}/metrics") as response:
        assert "sluice_http_requests_total" in await response.text()


async def test_internal_routes_are_not_on_the_public_listener(ingress: IngressUnderTest) -> None:
    async with ingress.http.get(f"{ingress.public}/readyz") as response:
        assert response.status == 404
