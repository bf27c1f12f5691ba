"""The Stripe API connector against the real local Stripe-compatible server.

Everything Stripe can be asked to do runs against localstripe (``local_stripe``). The
few answers it cannot be made to give (429, 5xx, a server that never answers) come from
small local HTTP servers started here, so the error translation is still exercised
through the real ``stripe`` library and a real socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp
import pytest
from aiohttp import web

from base.errors import PermanentError, TransientError
from connectors.stripe_api import (
    IntentCreated,
    StripeApi,
    checkout_idempotency_key,
    intent_idempotency_key,
    refund_idempotency_key,
)
from devstack.stripe import LocalStripeServer

pytestmark = pytest.mark.integration


def _order() -> str:
    return f"ord_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def api(local_stripe: LocalStripeServer) -> AsyncIterator[StripeApi]:
    async with StripeApi(local_stripe.api_key, local_stripe.url, timeout_s=5.0) as client:
        yield client


def test_idempotency_keys_are_stable() -> None:
    assert intent_idempotency_key("ord_1") == "sluice-pi-ord_1"
    assert checkout_idempotency_key("ord_1") == "sluice-cs-ord_1"
    assert refund_idempotency_key("rr_1") == "sluice-re-rr_1"


# --- payment intents ------------------------------------------------------------------


async def test_creates_payment_intent(api: StripeApi, local_stripe: LocalStripeServer) -> None:
    order = _order()
    created = await api.create_payment_intent(
        order_id=order, user_id="usr_1", amount_minor=4599, currency="USD"
    )

    assert created.intent_id.startswith("pi_")
    assert created.client_secret.startswith(f"{created.intent_id}_secret_")
    assert (created.amount_minor, created.currency) == (4599, "usd")
    assert created.status == "requires_payment_method"
    assert created.client_secret not in repr(created)
    [stored] = local_stripe.payment_intents(order_id=order)
    assert stored["id"] == created.intent_id
    assert stored["metadata"] == {"orderId": order, "userId": "usr_1"}
    assert (stored["amount"], stored["currency"]) == (4599, "usd")


async def test_same_order_twice_gives_the_same_intent(
    api: StripeApi, local_stripe: LocalStripeServer
) -> None:
    order = _order()
    first = await api.create_payment_intent(
        order_id=order, user_id="usr_1", amount_minor=1000, currency="eur"
    )
    second = await api.create_payment_intent(
        order_id=order, user_id="usr_1", amount_minor=1000, currency="eur"
    )
    assert second == first
    assert local_stripe.count_payment_intents(order) == 1


async def test_concurrent_duplicates_never_create_two_intents(
    api: StripeApi, local_stripe: LocalStripeServer
) -> None:
    order = _order()
    results = await asyncio.gather(
        *(
            api.create_payment_intent(
                order_id=order, user_id="usr_1", amount_minor=1000, currency="eur"
            )
            for _ in range(8)
        ),
        return_exceptions=True,
    )
    created = [r for r in results if isinstance(r, IntentCreated)]
    # Any loser of a race is told to retry (409 idempotency_key_in_use), never given a twin.
    assert all(isinstance(r, IntentCreated | TransientError) for r in results), results
    assert created
    assert {r.intent_id for r in created} == {created[0].intent_id}
    assert local_stripe.count_payment_intents(order) == 1


async def test_same_order_with_other_amount_is_permanent(
    api: StripeApi, local_stripe: LocalStripeServer
) -> None:
    order = _order()
    await api.create_payment_intent(
        order_id=order, user_id="usr_1", amount_minor=1000, currency="eur"
    )
    with pytest.raises(PermanentError, match="IdempotencyError") as info:
        await api.create_payment_intent(
            order_id=order, user_id="usr_1", amount_minor=1200, currency="eur"
        )
    assert intent_idempotency_key(order) in str(info.value)
    assert local_stripe.count_payment_intents(order) == 1


@pytest.mark.parametrize(("amount", "currency"), [(-100, "usd"), (0, "usd"), (100, "")])
async def test_invalid_request_is_permanent(
    api: StripeApi, local_stripe: LocalStripeServer, amount: int, currency: str
) -> None:
    order = _order()
    with pytest.raises(PermanentError, match="http 400") as info:
        await api.create_payment_intent(
            order_id=order, user_id="usr_1", amount_minor=amount, currency=currency
        )
    assert "InvalidRequestError" in str(info.value)
    assert local_stripe.api_key not in str(info.value)
    assert local_stripe.count_payment_intents(order) == 0


async def test_refused_key_is_permanent(local_stripe: LocalStripeServer) -> None:
    key = "pk_test_not_a_secret_key"
    async with StripeApi(key, local_stripe.url) as client:
        with pytest.raises(PermanentError, match="http 401") as info:
            await client.create_payment_intent(
                order_id=_order(), user_id="usr_1", amount_minor=100, currency="usd"
            )
    assert key not in str(info.value)


async def test_no_secret_in_logs_even_at_debug(
    api: StripeApi, local_stripe: LocalStripeServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        created = await api.create_payment_intent(
            order_id=_order(), user_id="usr_1", amount_minor=100, currency="usd"
        )
    assert any(r.name == "stripe" for r in caplog.records)  # the library did log
    assert created.client_secret not in caplog.text
    assert local_stripe.api_key not in caplog.text


# --- checkout sessions ----------------------------------------------------------------


async def test_creates_checkout_session(api: StripeApi, local_stripe: LocalStripeServer) -> None:
    order = _order()
    created = await api.create_checkout_session(
        order_id=order,
        user_id="usr_2",
        amount_minor=3150,
        currency="gbp",
        success_url="http://shop.test/ok?s={CHECKOUT_SESSION_ID}",
        cancel_url="http://shop.test/cancel",
    )
    assert created.session_id.startswith("cs_test_")
    assert created.url.startswith(local_stripe.url)
    assert created.payment_intent_id is None  # created when the customer pays

    session = local_stripe.get(f"/v1/checkout/sessions/{created.session_id}")
    assert session["url"] == created.url
    assert (session["amount_total"], session["currency"]) == (3150, "gbp")
    assert session["metadata"] == {"orderId": order, "userId": "usr_2"}
    assert session["client_reference_id"] == order
    assert (session["status"], session["payment_status"]) == ("open", "unpaid")
    async with aiohttp.ClientSession() as http, http.get(created.url) as page:
        assert page.status == 200

    again = await api.create_checkout_session(
        order_id=order,
        user_id="usr_2",
        amount_minor=3150,
        currency="gbp",
        success_url="http://shop.test/ok?s={CHECKOUT_SESSION_ID}",
        cancel_url="http://shop.test/cancel",
    )
    assert again == created

    # Paying it creates the intent, with the order in its metadata for the webhooks.
    paid = local_stripe.complete_checkout_session(created.session_id)
    [intent] = local_stripe.payment_intents(order_id=order)
    assert paid["payment_intent"] == intent["id"]
    assert intent["metadata"] == {"orderId": order, "userId": "usr_2"}
    assert intent["amount"] == 3150


# --- refunds --------------------------------------------------------------------------


async def _paid_intent(
    api: StripeApi, local_stripe: LocalStripeServer, amount: int = 2000
) -> tuple[str, str]:
    order = _order()
    created = await api.create_payment_intent(
        order_id=order, user_id="usr_3", amount_minor=amount, currency="usd"
    )
    assert local_stripe.pay_payment_intent(created.intent_id)["status"] == "succeeded"
    return order, created.intent_id


async def test_full_refund(api: StripeApi, local_stripe: LocalStripeServer) -> None:
    order, intent_id = await _paid_intent(api, local_stripe)
    refund = await api.create_refund(
        payment_intent_id=intent_id,
        order_id=order,
        amount_minor=None,
        request_id="rr_full_" + order,
    )
    assert refund.refund_id.startswith("re_")
    assert (refund.payment_intent_id, refund.amount_minor, refund.currency) == (
        intent_id,
        2000,
        "usd",
    )
    assert refund.status == "succeeded"
    stored = local_stripe.get(f"/v1/refunds/{refund.refund_id}")
    assert stored["metadata"] == {"orderId": order, "requestId": "rr_full_" + order}

    # The same request again (a retried record) is the same refund, not a second one.
    again = await api.create_refund(
        payment_intent_id=intent_id,
        order_id=order,
        amount_minor=None,
        request_id="rr_full_" + order,
    )
    assert again == refund


async def test_partial_refunds(api: StripeApi, local_stripe: LocalStripeServer) -> None:
    order, intent_id = await _paid_intent(api, local_stripe)
    first = await api.create_refund(
        payment_intent_id=intent_id, order_id=order, amount_minor=500, request_id=f"{order}-1"
    )
    second = await api.create_refund(
        payment_intent_id=intent_id, order_id=order, amount_minor=700, request_id=f"{order}-2"
    )
    assert (first.amount_minor, second.amount_minor) == (500, 700)
    assert first.refund_id != second.refund_id

    with pytest.raises(PermanentError, match="amount_too_large") as refused:
        await api.create_refund(
            payment_intent_id=intent_id, order_id=order, amount_minor=801, request_id=f"{order}-3"
        )
    # Stripe's code travels on the error: the setup_failed event's errorCode.
    assert getattr(refused.value, "code", None) == "amount_too_large"
    rest = await api.create_refund(
        payment_intent_id=intent_id, order_id=order, amount_minor=None, request_id=f"{order}-4"
    )
    assert rest.amount_minor == 800


async def test_refund_of_unpaid_intent_is_permanent(api: StripeApi) -> None:
    order = _order()
    created = await api.create_payment_intent(
        order_id=order, user_id="usr_3", amount_minor=900, currency="usd"
    )
    with pytest.raises(PermanentError, match="http 400"):
        await api.create_refund(
            payment_intent_id=created.intent_id,
            order_id=order,
            amount_minor=None,
            request_id=f"{order}-r",
        )


# --- outages and transient answers ----------------------------------------------------


async def test_server_down_is_transient_and_retry_after_restart_does_not_double(
    api: StripeApi, local_stripe: LocalStripeServer
) -> None:
    order = _order()
    before = await api.create_payment_intent(
        order_id=order, user_id="usr_4", amount_minor=1500, currency="usd"
    )
    await asyncio.to_thread(local_stripe.stop)
    try:
        with pytest.raises(TransientError, match="APIConnectionError"):
            await api.create_payment_intent(
                order_id=order, user_id="usr_4", amount_minor=1500, currency="usd"
            )
    finally:
        await asyncio.to_thread(local_stripe.start)

    after = await api.create_payment_intent(
        order_id=order, user_id="usr_4", amount_minor=1500, currency="usd"
    )
    assert after == before
    assert local_stripe.count_payment_intents(order) == 1


Responder = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def fake_answers() -> AsyncIterator[Callable[[Responder], Awaitable[str]]]:
    """Start local HTTP servers answering with ``responder``; yields a starter -> base URL."""
    runners: list[web.AppRunner] = []

    async def start(responder: Responder) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", responder)
        runner = web.AppRunner(app, shutdown_timeout=0.5)  # do not wait for hung handlers
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


def _stripe_error(
    status: int, headers: Mapping[str, str] | None = None, *, code: str | None = None
) -> Responder:
    body = {"error": {"type": "api_error", "message": f"answer {status}", "code": code}}

    async def respond(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(
            text=json.dumps(body),
            status=status,
            content_type="application/json",
            headers={"Request-Id": "req_test", **(headers or {})},
        )

    return respond


@pytest.mark.parametrize(
    ("status", "headers", "transient", "retry_after"),
    [
        (429, {"Retry-After": "7"}, True, 7.0),
        (429, {}, True, None),
        (500, {}, True, None),
        (502, {}, True, None),
        (503, {"Retry-After": "2"}, True, 2.0),
        (409, {}, True, None),  # idempotency_key_in_use: the other request is still running
        (500, {"Stripe-Should-Retry": "false"}, False, None),  # a replay would repeat it
        (400, {"Stripe-Should-Retry": "true"}, True, None),  # e.g. a lock timeout
        (402, {}, False, None),
        (403, {}, False, None),
        (404, {}, False, None),
    ],
)
async def test_error_answers_are_classified(
    fake_answers: Callable[[Responder], Awaitable[str]],
    status: int,
    headers: dict[str, str],
    transient: bool,
    retry_after: float | None,
) -> None:
    base = await fake_answers(_stripe_error(status, headers))
    async with StripeApi("sk_test_fake", base, timeout_s=5.0) as client:
        with pytest.raises(TransientError if transient else PermanentError) as info:
            await client.create_payment_intent(
                order_id=_order(), user_id="usr_5", amount_minor=100, currency="usd"
            )
    assert f"http {status}" in str(info.value)
    assert "request req_test" in str(info.value)
    if isinstance(info.value, TransientError):
        assert info.value.retry_after == retry_after


async def test_non_json_error_page_is_classified_by_status(
    fake_answers: Callable[[Responder], Awaitable[str]],
) -> None:
    async def gateway(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>bad gateway</html>", status=502)

    async def missing(request: web.Request) -> web.StreamResponse:
        return web.Response(text="404: Not Found", status=404)

    for responder, expected in ((gateway, TransientError), (missing, PermanentError)):
        base = await fake_answers(responder)
        async with StripeApi("sk_test_fake", base) as client:
            with pytest.raises(expected):
                await client.create_refund(
                    payment_intent_id="pi_x", order_id="ord_x", amount_minor=None, request_id="r"
                )


async def test_timeout_is_transient(fake_answers: Callable[[Responder], Awaitable[str]]) -> None:
    async def never(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.Response()

    base = await fake_answers(never)
    async with StripeApi("sk_test_fake", base, timeout_s=0.3) as client:
        with pytest.raises(TransientError):
            await client.create_checkout_session(
                order_id=_order(),
                user_id="usr_6",
                amount_minor=100,
                currency="usd",
                success_url="http://shop.test/ok",
                cancel_url="http://shop.test/no",
            )


async def test_stall_while_reading_the_body_is_transient(
    fake_answers: Callable[[Responder], Awaitable[str]],
) -> None:
    async def stall(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"id": "pi_')
        await asyncio.sleep(30)
        return response

    base = await fake_answers(stall)
    async with StripeApi("sk_test_fake", base, timeout_s=0.3) as client:
        with pytest.raises(TransientError):
            await client.create_payment_intent(
                order_id=_order(), user_id="usr_7", amount_minor=100, currency="usd"
            )


async def test_the_library_never_retries_by_itself(
    fake_answers: Callable[[Responder], Awaitable[str]],
) -> None:
    seen: list[str | None] = []
    answer = _stripe_error(503, {"Stripe-Should-Retry": "true"})

    async def counting(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Idempotency-Key"))
        return await answer(request)

    base = await fake_answers(counting)
    async with StripeApi("sk_test_fake", base) as client:
        with pytest.raises(TransientError):
            await client.create_refund(
                payment_intent_id="pi_x", order_id="ord_x", amount_minor=100, request_id="rq_1"
            )
    assert seen == ["sluice-re-rq_1"]  # one attempt; our retry topics do the rest
