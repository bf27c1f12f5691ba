"""The payments API and request/reply, through the real ingress, broker and PostgreSQL.

The worker side (the join, the Stripe agent) is played by the test itself, over the real
broker: ``tests.fixtures.replies.PlayedWorker`` reads the command from
``commands.payments`` and writes a ``sluice.commands.Reply`` with the command's task id,
as they do.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from typing import Any

import psycopg
import pytest
from multidict import CIMultiDict

from base.errors import InvalidEvent
from devstack import free_port
from ingress.payments import (
    parse_checkout,
    parse_intent,
    parse_refund,
    request_id_from,
)
from ingress.replies import ReplyWaiter
from schemas.codec import make_codec
from tests.fixtures.ingress import (
    REPLY_TIMEOUT_S,
    IngressUnderTest,
    ingress_settings,
    internal_headers,
    started_ingress,
)
from tests.fixtures.kafka import end_offsets, read_topic, value_of
from tests.fixtures.replies import played_worker, produce, reply_value

CODEC = make_codec(None)
COMMANDS = "commands.payments"


def _order_id() -> str:
    return f"ord_{uuid.uuid4().hex[:16]}"


async def _post(
    ingress: IngressUnderTest, path: str, body: Any, **headers: str
) -> tuple[int, Any, CIMultiDict[str]]:
    async with ingress.http.post(
        f"{ingress.internal}/internal/v1/payments/{path}",
        data=body if isinstance(body, bytes) else json.dumps(body).encode(),
        headers=internal_headers(**{"Content-Type": "application/json", **headers}),
    ) as response:
        return (
            response.status,
            await response.json(content_type=None),
            CIMultiDict(response.headers),
        )


# --- request checks (pure) ----------------------------------------------------------------


def test_intent_takes_only_the_order_id() -> None:
    request = parse_intent({"orderId": "ord_1"})
    assert (request.event_type, request.order_id, request.amount_minor) == (
        "payments.intent.create",
        "ord_1",
        None,
    )


@pytest.mark.parametrize("field", ["amount", "amountMinor", "currency"])
def test_a_client_amount_is_refused_for_intents_and_sessions(field: str) -> None:
    for parse, body in (
        (parse_intent, {"orderId": "o"}),
        (parse_checkout, {"orderId": "o", "successUrl": "https://a/s", "cancelUrl": "https://a/c"}),
    ):
        with pytest.raises(InvalidEvent, match="order's own amount") as caught:
            parse(body | {field: 100})
        assert caught.value.field == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "orderId"),
        ({"orderId": ""}, "orderId"),
        ({"orderId": "o", "successUrl": "https://a/s"}, "cancelUrl"),
        ({"orderId": "o", "successUrl": "/relative", "cancelUrl": "https://a/c"}, "successUrl"),
        ({"orderId": "o", "successUrl": "ftp://a/s", "cancelUrl": "https://a/c"}, "successUrl"),
        ({"orderId": "o", "successUrl": 5, "cancelUrl": "https://a/c"}, "successUrl"),
        ({"orderId": "o", "successUrl": "https://[", "cancelUrl": "https://a/c"}, "successUrl"),
    ],
)
def test_checkout_needs_absolute_urls(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_checkout(body)
    assert caught.value.field == field


@pytest.mark.parametrize("amount", [0, -1, 1.5, 100.0, "100", True, None, 100_000_000, 2**63 - 1])
def test_refund_amount_must_be_a_positive_integer(amount: Any) -> None:
    if amount is None:
        assert parse_refund({"orderId": "o", "amount": None}).amount_minor is None
        return
    with pytest.raises(InvalidEvent) as caught:
        parse_refund({"orderId": "o", "amount": amount})
    assert caught.value.field == "amount"


@pytest.mark.parametrize("parse", [parse_intent, parse_refund])
@pytest.mark.parametrize(
    "order_id", ["ord\x00x", "ord\x1bx", "ord\nx", "o" * 257, "\u2028"], ids=repr
)
def test_order_ids_are_printable_and_bounded(parse: Any, order_id: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse({"orderId": order_id})
    assert caught.value.field == "orderId"


def test_refund_fields() -> None:
    request = parse_refund({"orderId": "o", "amount": 250, "reason": "damaged"})
    assert (request.amount_minor, request.reason) == (250, "damaged")
    with pytest.raises(InvalidEvent, match="refundAmount"):
        parse_refund({"orderId": "o", "refundAmount": 250})


@pytest.mark.parametrize("key", ["", "k" * 256, "with space", "naïve"])
def test_bad_idempotency_keys(key: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        request_id_from(key)
    assert caught.value.field == "Idempotency-Key"


# --- the reply waiter against the real broker ---------------------------------------------


@pytest.mark.integration
async def test_reply_waiter_delivers_ignores_strangers_and_times_out(catalog_topics: str) -> None:
    waiter = ReplyWaiter(catalog_topics, CODEC)
    await waiter.start()
    try:
        assert waiter.assigned
        task, stranger = str(uuid.uuid4()), str(uuid.uuid4())
        with waiter.expect(task) as pending:
            # A reply nobody waits for, garbage under the awaited key, then the real
            # reply and a repeat of it: only the first real one is delivered.
            for key, value in (
                (stranger, CODEC.encode("replies", reply_value(stranger, 200, {"x": 1}))),
                (task, b"\x00garbage"),
                (task, CODEC.encode("replies", reply_value(task, 201, {"n": 1}))),
                (task, CODEC.encode("replies", reply_value(task, 500, {"n": 2}))),
            ):
                await asyncio.to_thread(produce, catalog_topics, "replies", key, value)
            reply = await pending.wait(10)
        assert reply is not None
        assert (reply.task_id, reply.status, json.loads(reply.body)) == (task, 201, {"n": 1})
        assert waiter.waiting == 0

        late = str(uuid.uuid4())
        with waiter.expect(late) as pending:
            assert await pending.wait(0.3) is None
        assert waiter.waiting == 0  # a timed-out task leaves nothing behind
    finally:
        await waiter.stop()


@pytest.mark.integration
async def test_reply_written_before_start_is_not_read(catalog_topics: str) -> None:
    task = str(uuid.uuid4())
    value = CODEC.encode("replies", reply_value(task, 200, {}))
    await asyncio.to_thread(produce, catalog_topics, "replies", task, value)
    waiter = ReplyWaiter(catalog_topics, CODEC)
    await waiter.start()
    try:
        with waiter.expect(task) as pending:
            assert await pending.wait(1.0) is None
    finally:
        await waiter.stop()


# --- commands: reply path ------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("path", "body", "status", "reply_body", "event_type"),
    [
        (
            "intents",
            {},
            200,
            {"orderId": "?", "paymentIntentId": "pi_1", "clientSecret": "pi_1_secret_x"},
            "payments.intent.create",
        ),
        (
            "checkout-sessions",
            {"successUrl": "https://shop.test/ok", "cancelUrl": "https://shop.test/no"},
            201,
            {"checkoutSessionId": "cs_1", "url": "https://pay.test/cs_1"},
            "payments.checkout.create",
        ),
        (
            "refunds",
            {"amount": 300, "reason": "damaged"},
            201,
            {"refundId": "re_1"},
            "payments.refund.create",
        ),
        (
            "intents",
            {},
            404,
            {"error": "not_found", "detail": "no order"},
            "payments.intent.create",
        ),
        ("intents", {}, 409, {"error": "not_payable", "detail": "paid"}, "payments.intent.create"),
        ("refunds", {}, 502, {"error": "stripe_refused", "detail": "no"}, "payments.refund.create"),
    ],
    ids=[
        "intent 200",
        "checkout 201",
        "refund 201",
        "unknown order 404",
        "not payable 409",
        "stripe 502",
    ],
)
async def test_the_workers_reply_is_the_answer(
    ingress: IngressUnderTest,
    path: str,
    body: dict[str, Any],
    status: int,
    reply_body: dict[str, Any],
    event_type: str,
) -> None:
    order_id = _order_id()
    with played_worker(ingress.bootstrap, COMMANDS, order_id, status, reply_body) as worker:
        started = time.monotonic()
        got_status, got_body, headers = await _post(ingress, path, {"orderId": order_id, **body})
        elapsed = time.monotonic() - started
        command = await asyncio.to_thread(worker.result)

    assert (got_status, got_body) == (status, reply_body)
    assert elapsed < REPLY_TIMEOUT_S  # answered by the reply, not by the timeout
    assert command["eventType"] == event_type
    assert command["orderId"] == order_id
    assert command["taskId"] == command["eventId"]
    assert command["requestId"] == command["taskId"]
    assert command["replyTo"] == "replies"
    assert command["source"] == "ingress"
    assert command["correlationId"] == headers["X-Correlation-Id"]
    assert command["amountMinor"] == body.get("amount")
    assert command["currency"] is None  # the join fills in the order's
    assert command["successUrl"] == body.get("successUrl")
    assert command["cancelUrl"] == body.get("cancelUrl")
    assert command["reason"] == body.get("reason")


@pytest.mark.integration
async def test_idempotency_key_becomes_the_request_id(ingress: IngressUnderTest) -> None:
    order_id = _order_id()
    with played_worker(ingress.bootstrap, COMMANDS, order_id, 201, {"refundId": "re_9"}) as worker:
        status, _, _ = await _post(
            ingress, "refunds", {"orderId": order_id}, **{"Idempotency-Key": "refund-ord-9-a"}
        )
        command = await asyncio.to_thread(worker.result)

    assert status == 201
    assert command["requestId"] == "refund-ord-9-a"
    assert command["taskId"] != "refund-ord-9-a"
    assert command["amountMinor"] is None  # refund the rest


@pytest.mark.integration
async def test_a_reply_that_is_not_json_is_a_502(ingress: IngressUnderTest) -> None:
    order_id = _order_id()
    with played_worker(ingress.bootstrap, COMMANDS, order_id, 200, "not json {") as worker:
        status, body, _ = await _post(ingress, "intents", {"orderId": order_id})
        await asyncio.to_thread(worker.result)

    assert status == 502
    assert body["error"] == "bad_gateway"


# --- commands: timeout path ----------------------------------------------------------------


@pytest.mark.integration
async def test_no_reply_in_time_is_202_with_the_task_id(ingress: IngressUnderTest) -> None:
    order_id = _order_id()
    started = time.monotonic()

    status, body, _ = await _post(
        ingress,
        "checkout-sessions",
        {"orderId": order_id, "successUrl": "https://s.test/ok", "cancelUrl": "https://s.test/c"},
    )

    assert time.monotonic() - started >= REPLY_TIMEOUT_S * 0.9
    assert status == 202
    assert body == {"accepted": True, "taskId": body["taskId"]}
    [message] = read_topic(ingress.bootstrap, COMMANDS, key=order_id)
    command = CODEC.decode(value_of(message), topic=COMMANDS).record
    assert command["taskId"] == body["taskId"]
    assert command["eventType"] == "payments.checkout.create"
    assert command["successUrl"] == "https://s.test/ok"


# --- commands: refused, nothing published ---------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "field"),
    [
        ("intents", {"amount": 100}, {}, 400, "amount"),
        ("intents", {"currency": "usd"}, {}, 400, "currency"),
        (
            "checkout-sessions",
            {"amount": 1, "successUrl": "https://a/b", "cancelUrl": "https://a/c"},
            {},
            400,
            "amount",
        ),
        ("checkout-sessions", {"successUrl": "https://a/b"}, {}, 400, "cancelUrl"),
        ("refunds", {"amount": -5}, {}, 400, "amount"),
        ("refunds", {"amount": 0}, {}, 400, "amount"),
        ("refunds", {"amount": 12.5}, {}, 400, "amount"),
        ("refunds", {"amount": "12"}, {}, 400, "amount"),
        ("refunds", {"amount": True}, {}, 400, "amount"),
        ("refunds", {"amonut": 5}, {}, 400, "amonut"),
        ("refunds", {}, {"Idempotency-Key": "k" * 300}, 400, "Idempotency-Key"),
        ("intents", {"orderId": ""}, {}, 400, "orderId"),
        ("intents", {"orderId": "ord\x00x"}, {}, 400, "orderId"),
        ("refunds", {"orderId": "ord\x00x"}, {}, 400, "orderId"),
        ("refunds", {"amount": 2**63 - 1}, {}, 400, "amount"),
    ],
)
async def test_bad_payment_request_is_refused_and_nothing_published(
    ingress: IngressUnderTest,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
    status: int,
    field: str,
) -> None:
    before = end_offsets(ingress.bootstrap, COMMANDS)

    got_status, payload, _ = await _post(ingress, path, {"orderId": _order_id(), **body}, **headers)

    assert got_status == status
    assert payload["field"] == field
    assert payload["detail"]
    assert end_offsets(ingress.bootstrap, COMMANDS) == before


@pytest.mark.integration
async def test_malformed_and_mistyped_payment_requests(ingress: IngressUnderTest) -> None:
    before = end_offsets(ingress.bootstrap, COMMANDS)
    assert (await _post(ingress, "intents", b'{"orderId": '))[0] == 400
    assert (await _post(ingress, "intents", b"[]"))[0] == 400
    async with ingress.http.post(
        f"{ingress.internal}/internal/v1/payments/intents",
        data=b'{"orderId": "o"}',
        headers=internal_headers(**{"Content-Type": "text/plain"}),
    ) as response:
        assert response.status == 415
    assert end_offsets(ingress.bootstrap, COMMANDS) == before


# --- GET /internal/v1/payments/{orderId} ---------------------------------------------------


async def _get_status(ingress: IngressUnderTest, order_id: str) -> tuple[int, Any]:
    async with ingress.http.get(
        f"{ingress.internal}/internal/v1/payments/{order_id}", headers=internal_headers()
    ) as response:
        return response.status, await response.json()


@pytest.mark.integration
@pytest.mark.parametrize("order_id", ["ord%00x", "ord%1Bx", "o" * 300], ids=["NUL", "ESC", "long"])
async def test_status_of_an_unusable_order_id_is_400(
    ingress_with_database: IngressUnderTest, order_id: str
) -> None:
    status, body = await _get_status(ingress_with_database, order_id)
    assert status == 400
    assert (body["error"], body["field"]) == ("invalid", "orderId")


@pytest.mark.integration
async def test_status_of_an_unknown_order_is_404(ingress_with_database: IngressUnderTest) -> None:
    status, body = await _get_status(ingress_with_database, _order_id())
    assert status == 404
    assert body["error"] == "not_found"


@pytest.mark.integration
async def test_status_reads_the_order_and_its_payments(
    ingress_with_database: IngressUnderTest, migrated_db: str
) -> None:
    order_id = _order_id()
    updated = dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=dt.UTC)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orders (order_id, user_id, amount_minor, currency, status,"
            " refunded_minor, payment_provider, payment_intent_id, client_secret, revision,"
            " last_event_id, last_event_type, updated_at)"
            " VALUES (%s, 'user_1', 1999, 'usd', 'PARTIALLY_REFUNDED', 500, 'stripe',"
            " 'pi_123', 'pi_123_secret_abc', 4, 'evt_4', 'order.refunded', %s)",
            (order_id, updated),
        )
        conn.execute(
            "INSERT INTO payments (provider, provider_payment_id, order_id, user_id,"
            " amount_minor, currency, status, amount_refunded_minor, last_event_id,"
            " last_event_at, updated_at)"
            " VALUES ('stripe', 'pi_123', %s, 'user_1', 1999, 'usd', 'PARTIALLY_REFUNDED',"
            " 500, 'evt_9', %s, %s)",
            (order_id, updated, updated),
        )
        # Someone else's payment: not listed.
        conn.execute(
            "INSERT INTO payments (provider, provider_payment_id, order_id, status,"
            " last_event_id, last_event_at) VALUES ('stripe', %s, 'ord_other', 'PENDING',"
            " 'evt_x', now())",
            (f"pi_{uuid.uuid4().hex[:8]}",),
        )

    status, body = await _get_status(ingress_with_database, order_id)

    assert status == 200
    assert body == {
        "orderId": order_id,
        "status": "PARTIALLY_REFUNDED",
        "amount": 1999,
        "currency": "usd",
        "refunded": 500,
        "paymentProvider": "stripe",
        "paymentIntentId": "pi_123",
        "clientSecret": "pi_123_secret_abc",
        "updatedAt": "2024-05-01T12:00:00.123Z",
        "payments": [
            {
                "provider": "stripe",
                "providerPaymentId": "pi_123",
                "status": "PARTIALLY_REFUNDED",
                "amount": 1999,
                "currency": "usd",
                "refunded": 500,
                "updatedAt": "2024-05-01T12:00:00.123Z",
            }
        ],
    }


@pytest.mark.integration
async def test_status_without_database_url_is_503(ingress: IngressUnderTest) -> None:
    assert ingress.settings.database_url is None
    status, body = await _get_status(ingress, _order_id())
    assert status == 503
    assert "DATABASE_URL" in body["detail"]


@pytest.mark.integration
async def test_status_with_postgres_unreachable_is_503(catalog_topics: str) -> None:
    unreachable = f"postgresql://sluice@127.0.0.1:{free_port()}/nowhere"
    settings = ingress_settings(catalog_topics, {"DATABASE_URL": unreachable})
    async with started_ingress(settings) as cut_off:
        async with cut_off.http.get(
            f"{cut_off.internal}/internal/v1/payments/ord_1", headers=internal_headers()
        ) as response:
            body = await response.json()
            assert response.status == 503
            assert response.headers["Retry-After"]
        assert "database" in body["detail"]
        assert "127.0.0.1" not in body["detail"]  # no internals in the answer
