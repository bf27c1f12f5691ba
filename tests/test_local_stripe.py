"""The local Stripe-compatible server: lifecycle, and the stand-ins it adds to localstripe.

Raw HTTP (aiohttp) against the real server process, with form bodies encoded the way the
``stripe`` library encodes them (``metadata[orderId]=...``), so these tests pin the wire
behaviour the connector (``tests/test_stripe_api.py``) relies on.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import stripe
from aiohttp import web

from devstack.stripe import LocalStripeApiError, LocalStripeServer

pytestmark = pytest.mark.integration


Form = Mapping[str, str] | Sequence[tuple[str, str]]


def _order() -> str:
    return f"ord_{uuid.uuid4().hex[:12]}"


async def _call(
    server: LocalStripeServer,
    method: str,
    path: str,
    form: Form | None = None,
    *,
    key: str | None = None,
    api_key: str | None = None,
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    headers = {"Authorization": f"Bearer {api_key or server.api_key}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, server.url + path, data=form, headers=headers, allow_redirects=False
        ) as response,
    ):
        text = await response.text()
        body = json.loads(text) if text.strip().startswith("{") else {"text": text}
        return response.status, body, dict(response.headers)


def _intent_form(order_id: str, amount: int = 2000, currency: str = "usd") -> list[tuple[str, str]]:
    return [
        ("amount", str(amount)),
        ("currency", currency),
        ("metadata[orderId]", order_id),
        ("metadata[userId]", "usr_1"),
    ]


def _session_form(order_id: str, **extra: str) -> dict[str, str]:
    return {
        "mode": "payment",
        "line_items[0][price_data][currency]": "eur",
        "line_items[0][price_data][unit_amount]": "1250",
        "line_items[0][price_data][product_data][name]": f"Order {order_id}",
        "line_items[0][quantity]": "2",
        "metadata[orderId]": order_id,
        "payment_intent_data[metadata][orderId]": order_id,
        "payment_intent_data[metadata][userId]": "usr_9",
        "client_reference_id": order_id,
        "success_url": "http://shop.test/paid?session={CHECKOUT_SESSION_ID}",
        "cancel_url": "http://shop.test/cancelled",
        **extra,
    }


# --- basics ---------------------------------------------------------------------------


async def test_answers_any_secret_test_key_and_refuses_none(
    local_stripe: LocalStripeServer,
) -> None:
    assert local_stripe.url == f"http://127.0.0.1:{local_stripe.port}"
    status, body, _ = await _call(local_stripe, "GET", "/v1/payment_intents", api_key="sk_test_x1")
    assert status == 200
    assert body["object"] == "list"
    async with (
        aiohttp.ClientSession() as session,
        session.get(local_stripe.url + "/v1/payment_intents") as response,
    ):
        assert response.status == 401


# --- 1. idempotent requests -----------------------------------------------------------


async def test_same_idempotency_key_replays_the_first_response(
    local_stripe: LocalStripeServer,
) -> None:
    order = _order()
    key = f"test-{order}"
    first = await _call(local_stripe, "POST", "/v1/payment_intents", _intent_form(order), key=key)
    again = await _call(local_stripe, "POST", "/v1/payment_intents", _intent_form(order), key=key)

    assert first[0] == again[0] == 200
    assert again[1] == first[1]
    assert again[2]["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first[2]
    assert again[2]["Idempotency-Key"] == key
    assert local_stripe.count_payment_intents(order) == 1


async def test_same_idempotency_key_with_other_params_is_refused(
    local_stripe: LocalStripeServer,
) -> None:
    order = _order()
    key = f"test-{order}"
    status, _, _ = await _call(
        local_stripe, "POST", "/v1/payment_intents", _intent_form(order), key=key
    )
    assert status == 200

    status, body, _ = await _call(
        local_stripe, "POST", "/v1/payment_intents", _intent_form(order, amount=2001), key=key
    )
    assert status == 400
    assert body["error"]["type"] == "idempotency_error"
    assert key in body["error"]["message"]

    # Another endpoint with the same key is "other parameters" too.
    status, body, _ = await _call(local_stripe, "POST", "/v1/customers", {}, key=key)
    assert status == 400
    assert body["error"]["type"] == "idempotency_error"
    assert local_stripe.count_payment_intents(order) == 1


async def test_idempotency_keys_belong_to_one_api_key(local_stripe: LocalStripeServer) -> None:
    order = _order()
    key = f"test-{order}"
    _, a, _ = await _call(local_stripe, "POST", "/v1/payment_intents", _intent_form(order), key=key)
    _, b, _ = await _call(
        local_stripe,
        "POST",
        "/v1/payment_intents",
        _intent_form(order),
        key=key,
        api_key="sk_test_another_account",
    )
    assert a["id"] != b["id"]


async def test_failed_validation_is_not_saved_under_the_key(
    local_stripe: LocalStripeServer,
) -> None:
    order = _order()
    key = f"test-{order}"
    status, body, _ = await _call(
        local_stripe, "POST", "/v1/payment_intents", _intent_form(order, amount=-5), key=key
    )
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"

    # As on Stripe, the key was not used up: corrected parameters go through.
    status, _, _ = await _call(
        local_stripe, "POST", "/v1/payment_intents", _intent_form(order), key=key
    )
    assert status == 200
    assert local_stripe.count_payment_intents(order) == 1


async def test_posts_without_a_key_create_every_time(local_stripe: LocalStripeServer) -> None:
    order = _order()
    for _ in range(2):
        status, _, _ = await _call(local_stripe, "POST", "/v1/payment_intents", _intent_form(order))
        assert status == 200
    assert local_stripe.count_payment_intents(order) == 2


async def test_an_overlong_key_is_refused(local_stripe: LocalStripeServer) -> None:
    status, body, _ = await _call(
        local_stripe, "POST", "/v1/payment_intents", _intent_form(_order()), key="k" * 256
    )
    assert status == 400
    assert body["error"]["param"] == "Idempotency-Key"


# --- 2. checkout sessions -------------------------------------------------------------


async def test_checkout_session_is_created_retrieved_and_completed(
    local_stripe: LocalStripeServer,
) -> None:
    order = _order()
    status, session, _ = await _call(
        local_stripe, "POST", "/v1/checkout/sessions", _session_form(order)
    )
    assert status == 200, session
    assert session["id"].startswith("cs_test_")
    assert session["object"] == "checkout.session"
    assert session["url"] == f"{local_stripe.url}/checkout/{session['id']}"
    assert session["amount_total"] == 2500
    assert session["currency"] == "eur"
    assert session["metadata"] == {"orderId": order}
    assert session["client_reference_id"] == order
    assert (session["status"], session["payment_status"]) == ("open", "unpaid")
    assert session["payment_intent"] is None

    status, fetched, _ = await _call(local_stripe, "GET", f"/v1/checkout/sessions/{session['id']}")
    assert status == 200
    assert fetched == session

    async with aiohttp.ClientSession() as http, http.get(session["url"]) as page:
        assert page.status == 200  # the hosted page needs no API key, like Stripe's
        assert session["id"] in await page.text()

    completed = local_stripe.complete_checkout_session(session["id"])
    assert (completed["status"], completed["payment_status"]) == ("complete", "paid")
    assert completed["url"] is None
    [intent] = local_stripe.payment_intents(order_id=order)
    assert completed["payment_intent"] == intent["id"]
    assert intent["metadata"] == {"orderId": order, "userId": "usr_9"}
    assert (intent["amount"], intent["currency"], intent["status"]) == (2500, "eur", "succeeded")

    status, body, _ = await _call(
        local_stripe, "POST", f"/v1/checkout/sessions/{session['id']}/expire"
    )
    assert status == 400
    assert "open" in body["error"]["message"]


async def test_checkout_session_expires(local_stripe: LocalStripeServer) -> None:
    _, session, _ = await _call(
        local_stripe, "POST", "/v1/checkout/sessions", _session_form(_order())
    )
    status, expired, _ = await _call(
        local_stripe, "POST", f"/v1/checkout/sessions/{session['id']}/expire"
    )
    assert status == 200
    assert (expired["status"], expired["url"]) == ("expired", None)
    with pytest.raises(LocalStripeApiError) as info:
        local_stripe.complete_checkout_session(session["id"])
    assert info.value.status == 400


async def test_hosted_page_pays_and_redirects_to_success_url(
    local_stripe: LocalStripeServer,
) -> None:
    order = _order()
    _, session, _ = await _call(local_stripe, "POST", "/v1/checkout/sessions", _session_form(order))
    async with (
        aiohttp.ClientSession() as http,
        http.post(session["url"], allow_redirects=False) as response,
    ):
        assert response.status == 303
        assert response.headers["Location"] == f"http://shop.test/paid?session={session['id']}"
    assert local_stripe.get(f"/v1/checkout/sessions/{session['id']}")["payment_status"] == "paid"
    assert local_stripe.count_payment_intents(order) == 1


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"mode": "subscription"}, "mode"),
        ({"discounts[0][coupon]": "x"}, "discounts"),
        (
            {"line_items[0][price_data][unit_amount]": "-1"},
            "line_items[0][price_data][unit_amount]",
        ),
        ({"line_items[0][price_data][currency]": "euro"}, "line_items[0][price_data][currency]"),
        ({"payment_intent_data[capture_method]": "manual"}, "payment_intent_data"),
    ],
)
async def test_checkout_refuses_what_it_does_not_implement(
    local_stripe: LocalStripeServer, change: dict[str, str], param: str
) -> None:
    status, body, _ = await _call(
        local_stripe, "POST", "/v1/checkout/sessions", _session_form(_order(), **change)
    )
    assert status == 400
    assert body["error"]["param"] == param


async def test_checkout_needs_line_items_and_known_ids(local_stripe: LocalStripeServer) -> None:
    status, body, _ = await _call(
        local_stripe, "POST", "/v1/checkout/sessions", {"mode": "payment"}
    )
    assert (status, body["error"]["param"]) == (400, "line_items")
    status, body, _ = await _call(local_stripe, "GET", "/v1/checkout/sessions/cs_test_nope")
    assert (status, body["error"]["code"]) == (404, "resource_missing")


# --- 3. refunds -----------------------------------------------------------------------


async def test_refund_checks(local_stripe: LocalStripeServer) -> None:
    order = _order()
    _, intent, _ = await _call(local_stripe, "POST", "/v1/payment_intents", _intent_form(order))
    refund = {"payment_intent": intent["id"]}

    status, body, _ = await _call(local_stripe, "POST", "/v1/refunds", refund)
    assert status == 400  # not paid yet (localstripe alone answers 500)
    assert "successful charge" in body["error"]["message"]

    assert local_stripe.pay_payment_intent(intent["id"])["status"] == "succeeded"
    status, part, _ = await _call(local_stripe, "POST", "/v1/refunds", {**refund, "amount": "500"})
    assert (status, part["amount"], part["status"]) == (200, 500, "succeeded")

    status, body, _ = await _call(local_stripe, "POST", "/v1/refunds", {**refund, "amount": "1501"})
    assert (status, body["error"]["code"]) == (400, "amount_too_large")

    status, rest, _ = await _call(local_stripe, "POST", "/v1/refunds", refund)
    assert (status, rest["amount"]) == (200, 1500)  # what was left, not the whole charge

    status, body, _ = await _call(local_stripe, "POST", "/v1/refunds", refund)
    assert (status, body["error"]["code"]) == (400, "charge_already_refunded")

    status, body, _ = await _call(local_stripe, "POST", "/v1/refunds", {"payment_intent": "pi_no"})
    assert (status, body["error"]["code"]) == (404, "resource_missing")


# --- webhooks -------------------------------------------------------------------------


@pytest.fixture
async def webhook_sink() -> AsyncIterator[tuple[str, asyncio.Queue[tuple[bytes, str]]]]:
    """A local HTTP endpoint that queues each (body, Stripe-Signature) it receives."""
    received: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()

    async def receive(request: web.Request) -> web.Response:
        await received.put((await request.read(), request.headers.get("Stripe-Signature", "")))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/hook", received
    finally:
        await runner.cleanup()


async def test_completed_checkout_sends_signed_webhook(
    local_stripe: LocalStripeServer,
    webhook_sink: tuple[str, asyncio.Queue[tuple[bytes, str]]],
) -> None:
    url, received = webhook_sink
    secret = "whsec_test_local"
    hook_id = f"test-{uuid.uuid4().hex[:8]}"
    local_stripe.register_webhook(url, secret, ["checkout.session.completed"], webhook_id=hook_id)
    order = _order()
    _, session, _ = await _call(local_stripe, "POST", "/v1/checkout/sessions", _session_form(order))
    local_stripe.complete_checkout_session(session["id"])

    while True:  # other tests' sessions may complete meanwhile: find ours
        body, signature = await asyncio.wait_for(received.get(), timeout=15)
        stripe.WebhookSignature.verify_header(body.decode(), signature, secret, tolerance=600)
        event = json.loads(body)
        if event["data"]["object"]["id"] == session["id"]:
            break
    assert event["type"] == "checkout.session.completed"
    assert event["data"]["object"]["metadata"] == {"orderId": order}
    assert event["data"]["object"]["payment_status"] == "paid"


# --- lifecycle ------------------------------------------------------------------------


def test_state_survives_stop_and_kill_and_stays_in_its_data_dir(
    tmp_path: Path, local_stripe: LocalStripeServer
) -> None:
    with LocalStripeServer(tmp_path / "own") as server:
        port = server.port
        intent = server.post(
            "/v1/payment_intents",
            {"amount": 700, "currency": "usd", "metadata": {"orderId": "ord_lifecycle"}},
        )
        assert (tmp_path / "own" / "localstripe.pickle").is_file()
        # Two servers, two stores (localstripe alone shares one file in /tmp).
        assert local_stripe.count_payment_intents("ord_lifecycle") == 0

        server.stop()
        assert not server.is_running()
        server.start()
        assert server.port == port
        assert [pi["id"] for pi in server.payment_intents(order_id="ord_lifecycle")] == [
            intent["id"]
        ]

        server.kill()
        server.start()
        assert server.port == port
        assert server.count_payment_intents("ord_lifecycle") == 1
    assert not server.is_running()


async def test_saved_idempotent_results_survive_a_restart(tmp_path: Path) -> None:
    with LocalStripeServer(tmp_path / "own") as server:
        order = _order()
        key = f"test-{order}"
        _, first, _ = await _call(
            server, "POST", "/v1/payment_intents", _intent_form(order), key=key
        )
        server.kill()
        server.start()
        _, again, headers = await _call(
            server, "POST", "/v1/payment_intents", _intent_form(order), key=key
        )
        assert again["id"] == first["id"]
        assert headers["Idempotent-Replayed"] == "true"
        assert server.count_payment_intents(order) == 1


async def test_webhooks_are_registered_again_after_a_restart(
    tmp_path: Path, webhook_sink: tuple[str, asyncio.Queue[tuple[bytes, str]]]
) -> None:
    url, received = webhook_sink
    with LocalStripeServer(tmp_path / "own") as server:
        server.register_webhook(url, "whsec_restart", ["checkout.session.completed"])
        server.kill()  # localstripe itself forgets webhook endpoints here
        server.start()
        _, session, _ = await _call(
            server, "POST", "/v1/checkout/sessions", _session_form(_order())
        )
        server.complete_checkout_session(session["id"])
        body, signature = await asyncio.wait_for(received.get(), timeout=15)
        stripe.WebhookSignature.verify_header(body.decode(), signature, "whsec_restart")
        assert json.loads(body)["data"]["object"]["id"] == session["id"]
