"""Orders and payments end to end: internal API → join → Stripe → webhooks → projections.

Everything real: the ingress, the broker, `sluice worker` as a process, PostgreSQL,
Elasticsearch, and localstripe as the Stripe API. Each scenario runs on its own order
id; each runs once plainly and once with every input sent twice (the same order event
posted twice, every webhook delivered twice, and every billing record the join read
produced again), and must end in the same state with the same events, none extra.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from devstack.stripe import LocalStripeServer
from schemas.catalog import PAYMENT_TOPICS
from schemas.codec import make_codec
from tests.fixtures.ingress import ingress_settings, post_razorpay, post_stripe, started_ingress
from tests.fixtures.kafka import key_of, read_topic, value_of
from tests.fixtures.worker import Pipeline, wait_until
from tests.payloads.razorpay import razorpay_event
from tests.payloads.stripe import stripe_event

pytestmark = pytest.mark.integration

PIPELINE_SERVICES = ("search", "stripe")
PIPELINE_ENV = {"SLUICE_ORPHAN_HOLD": "2s", "SLUICE_ORPHAN_CHECK_EVERY": "1s"}
INTERNAL_TOKEN = "tok_current"
CODEC = make_codec(None)
TIMES = pytest.mark.parametrize("times", [1, 2], ids=["once", "twice"])


def _uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


class Orders:
    """What a scenario does and reads, on one pipeline."""

    def __init__(self, pipeline: Pipeline, times: int) -> None:
        self.p = pipeline
        self.times = times

    @property
    def http(self) -> aiohttp.ClientSession:
        return self.p.ingress.http

    async def create(
        self, order_id: str, amount: int, *, provider: str | None = None, currency: str = "usd"
    ) -> None:
        data = {
            "orderId": order_id,
            "userId": "user_42",
            "amount": amount,
            "currency": currency,
            "items": [{"productId": "sku_1", "quantity": 2}, {"productId": "sku_2", "quantity": 1}],
            "paymentProvider": provider,
        }
        await self.event("order.created", data, event_id=f"evt-created-{order_id}")

    async def event(self, event_type: str, data: dict[str, Any], *, event_id: str) -> None:
        body = {"eventId": event_id, "eventType": event_type, "source": "shop", "data": data}
        for _ in range(self.times):
            async with self.http.post(
                f"{self.p.ingress.internal}/internal/v1/events",
                json=body,
                headers={"X-Internal-Token": INTERNAL_TOKEN},
            ) as response:
                assert response.status == 202, await response.text()

    async def webhook(self, event_type: str, order_id: str, **fields: Any) -> None:
        event = stripe_event(event_type, event_id=_uid("evt"), order_id=order_id, **fields)
        for _ in range(self.times):
            assert await post_stripe(self.p.ingress, event) == 200

    def row(self, order_id: str) -> tuple[Any, ...] | None:
        rows = self.p.query(
            "SELECT status, payment_intent_id, refunded_minor, revision FROM orders"
            " WHERE order_id = %s",
            order_id,
        )
        return rows[0] if rows else None

    def status(self, order_id: str) -> str | None:
        row = self.row(order_id)
        return str(row[0]) if row else None

    async def until_status(self, order_id: str, status: str) -> None:
        await self.p.wait_for(f"order {order_id} {status}", lambda: self.status(order_id) == status)

    def lifecycle(self, order_id: str) -> list[str]:
        return [
            str(CODEC.decode(value_of(m), topic="orders.lifecycle").record["eventType"])
            for m in read_topic(self.p.bootstrap, "orders.lifecycle", key=order_id)
        ]

    def releases(self, order_id: str) -> int:
        return len(read_topic(self.p.bootstrap, "commands.inventory.release", key=order_id))

    async def search_doc(self, order_id: str) -> dict[str, Any] | None:
        url = f"{self.p.env['ELASTICSEARCH_URL']}/{self.p.env['SLUICE_SEARCH_INDEX_PREFIX']}orders"
        async with self.http.get(f"{url}/_doc/{order_id}") as response:
            if response.status == 404:
                return None
            body: dict[str, Any] = await response.json()
            return body

    async def until_search_status(self, order_id: str, status: str) -> dict[str, Any]:
        found: dict[str, Any] = {}

        async def check() -> bool:
            doc = await self.search_doc(order_id)
            if doc and doc.get("_source", {}).get("status") == status:
                found.update(doc)
                return True
            return False

        await _wait_async(f"search doc {order_id} {status}", check, self.p)
        return found

    async def settle(self, order_id: str) -> None:
        """With ``times == 2``, produce again every payment record the join read for
        the order (a redelivery after a crash), then wait until the worker consumed
        everything it had been given."""
        if self.times == 2:
            producer = Producer(
                {"bootstrap.servers": self.p.bootstrap, "partitioner": "murmur2_random"}
            )
            for topic in PAYMENT_TOPICS:
                for message in read_topic(self.p.bootstrap, topic, key=order_id):
                    producer.produce(
                        topic,
                        key=key_of(message),
                        value=value_of(message),
                        headers=message.headers() or [],
                    )
            assert producer.flush(10) == 0
        await _until_consumed(self.p)


async def _wait_async(what: str, check: Callable[[], Awaitable[bool]], p: Pipeline) -> None:
    import time

    deadline = time.monotonic() + 90
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{p.worker.log_tail()}")
        await asyncio.sleep(0.25)


async def _until_consumed(p: Pipeline) -> None:
    """Until the worker's group has committed the end of every topic the join reads."""
    from schemas.catalog import JOIN_TOPICS
    from tests.fixtures.kafka import end_offsets

    group = p.env["SLUICE_APP_ID"]
    topics = [t for t in JOIN_TOPICS if t != "join.ticks"]
    wanted = {
        (topic, partition): offset
        for topic in topics
        for partition, offset in end_offsets(p.bootstrap, topic).items()
    }
    consumer = Consumer({"bootstrap.servers": p.bootstrap, "group.id": group})
    try:

        def done() -> bool:
            committed = consumer.committed(
                [TopicPartition(t, part) for t, part in wanted], timeout=10
            )
            return all(
                tp.offset >= wanted[(tp.topic, tp.partition)]
                for tp in committed
                if wanted[(tp.topic, tp.partition)] > 0
            )

        await wait_until("the join to consume everything", done, 90, on_timeout=p.worker.log_tail)
    finally:
        consumer.close()


@TIMES
async def test_happy_path_pays_the_order_through_a_real_payment_intent(
    pipeline: Pipeline, local_stripe: LocalStripeServer, times: int
) -> None:
    orders, order_id = Orders(pipeline, times), _uid("ord")
    await orders.create(order_id, 4200, provider="stripe")
    await pipeline.wait_for(
        "the PaymentIntent", lambda: (orders.row(order_id) or (None, None))[1] is not None
    )
    row = orders.row(order_id)
    assert row is not None
    intent_id = str(row[1])
    intent = local_stripe.get(f"/v1/payment_intents/{intent_id}")
    assert (intent["amount"], intent["currency"]) == (4200, "usd")
    assert intent["metadata"] == {"orderId": order_id, "userId": "user_42"}

    await orders.webhook("payment_intent.succeeded", order_id, object_id=intent_id, amount=4200)
    await orders.until_status(order_id, "PAID")
    doc = await orders.until_search_status(order_id, "PAID")
    await orders.settle(order_id)
    assert orders.lifecycle(order_id) == ["order.pending_payment", "order.updated", "order.paid"]
    assert doc["_source"]["paymentIntentId"] == intent_id
    assert doc["_version"] == orders.row(order_id)[3] == 3  # type: ignore[index]
    assert "clientSecret" not in doc["_source"]
    assert local_stripe.count_payment_intents(order_id) == 1


@TIMES
async def test_payment_before_its_order_pays_the_order_when_it_arrives(
    pipeline: Pipeline, times: int
) -> None:
    orders, order_id = Orders(pipeline, times), _uid("ord")
    await orders.webhook("payment_intent.succeeded", order_id, amount=1500)
    await pipeline.wait_for(
        "the payment row",
        lambda: pipeline.scalar("SELECT count(*) FROM payments WHERE order_id = %s", order_id) == 1,
    )
    await _until_consumed(pipeline)
    assert orders.status(order_id) is None
    await orders.create(order_id, 1500)
    await orders.until_status(order_id, "PAID")
    await orders.settle(order_id)
    events = [e for e in orders.lifecycle(order_id) if e != "order.payment_orphaned"]
    assert events == ["order.pending_payment", "order.paid"]


@TIMES
async def test_amount_or_currency_mismatch_never_pays(pipeline: Pipeline, times: int) -> None:
    orders = Orders(pipeline, times)
    short, foreign = _uid("ord"), _uid("ord")
    await orders.create(short, 5000)
    await orders.create(foreign, 5000)
    await orders.webhook("payment_intent.succeeded", short, amount=4999)
    await orders.webhook("payment_intent.succeeded", foreign, amount=5000, currency="eur")
    await orders.until_status(short, "PAYMENT_MISMATCH")
    await orders.until_status(foreign, "PAYMENT_MISMATCH")
    await orders.settle(short)
    await orders.settle(foreign)
    for order_id in (short, foreign):
        assert orders.lifecycle(order_id) == ["order.pending_payment", "order.payment_mismatch"]
        assert orders.status(order_id) == "PAYMENT_MISMATCH"


@TIMES
async def test_failure_releases_stock_and_a_later_success_pays(
    pipeline: Pipeline, times: int
) -> None:
    orders, order_id = Orders(pipeline, times), _uid("ord")
    await orders.create(order_id, 2500)
    await orders.webhook("payment_intent.payment_failed", order_id, amount=2500)
    await orders.until_status(order_id, "PAYMENT_FAILED")
    await pipeline.wait_for("inventory.release", lambda: orders.releases(order_id) == 1)
    [release] = read_topic(pipeline.bootstrap, "commands.inventory.release", key=order_id)
    decoded = CODEC.decode(value_of(release), topic="commands.inventory.release").record
    assert decoded["items"] == [
        {"productId": "sku_1", "quantity": 2},
        {"productId": "sku_2", "quantity": 1},
    ]
    await orders.webhook("payment_intent.succeeded", order_id, amount=2500)
    await orders.until_status(order_id, "PAID")
    await orders.settle(order_id)
    assert orders.lifecycle(order_id) == [
        "order.pending_payment",
        "order.payment_failed",
        "order.paid",
    ]
    assert orders.releases(order_id) == 1


@TIMES
async def test_expired_checkout_cancels_and_releases_stock(pipeline: Pipeline, times: int) -> None:
    orders, order_id = Orders(pipeline, times), _uid("ord")
    await orders.create(order_id, 3000)
    await orders.webhook("checkout.session.expired", order_id, amount=3000)
    await orders.until_status(order_id, "CANCELLED")
    await orders.until_search_status(order_id, "CANCELLED")
    await pipeline.wait_for("inventory.release", lambda: orders.releases(order_id) == 1)
    await orders.settle(order_id)
    assert orders.lifecycle(order_id) == ["order.pending_payment", "order.cancelled"]
    assert orders.releases(order_id) == 1


@TIMES
async def test_partial_then_full_refund(pipeline: Pipeline, times: int) -> None:
    orders, order_id = Orders(pipeline, times), _uid("ord")
    await orders.create(order_id, 4200)
    await orders.webhook("payment_intent.succeeded", order_id, amount=4200)
    await orders.until_status(order_id, "PAID")
    await orders.webhook(
        "refund.created", order_id, amount=4200, refund_amount=1000, object_id=_uid("re")
    )
    await orders.until_status(order_id, "PARTIALLY_REFUNDED")
    await orders.webhook(
        "refund.created", order_id, amount=4200, refund_amount=3200, object_id=_uid("re")
    )
    await orders.until_status(order_id, "REFUNDED")
    await orders.until_search_status(order_id, "REFUNDED")
    await orders.settle(order_id)
    assert orders.lifecycle(order_id) == [
        "order.pending_payment",
        "order.paid",
        "order.refunded",
        "order.refunded",
    ]
    row = orders.row(order_id)
    assert row is not None
    assert row[2] == 4200


@TIMES
async def test_payment_without_an_order_is_reported_orphaned_once(
    pipeline: Pipeline, times: int
) -> None:
    orders, order_id = Orders(pipeline, times), _uid("ord")
    await orders.webhook("payment_intent.succeeded", order_id, amount=700)
    await pipeline.wait_for(
        "order.payment_orphaned",
        lambda: orders.lifecycle(order_id) == ["order.payment_orphaned"],
        timeout_s=60,
    )
    [message] = read_topic(pipeline.bootstrap, "orders.lifecycle", key=order_id)
    record = CODEC.decode(value_of(message), topic="orders.lifecycle").record
    assert record["paymentAmountMinor"] == 700
    assert record["status"] is None
    await orders.settle(order_id)
    await asyncio.sleep(3)  # more sweeps (every 1 s) find it reported already
    assert orders.lifecycle(order_id) == ["order.payment_orphaned"]  # reported once


async def test_intents_are_created_once_the_stripe_api_is_back(
    pipeline: Pipeline, local_stripe: LocalStripeServer
) -> None:
    orders = Orders(pipeline, 1)
    order_ids = [_uid("ord") for _ in range(3)]
    local_stripe.stop()
    try:
        for order_id in order_ids:
            await orders.create(order_id, 1999, provider="stripe")
        await pipeline.wait_for(
            "retries of the intent calls",
            lambda: any(read_topic(pipeline.bootstrap, "retry.1s", key=o) for o in order_ids),
        )
    finally:
        local_stripe.start()

    def every_order_has_its_intent() -> bool:
        return all((orders.row(o) or (None, None))[1] is not None for o in order_ids)

    await pipeline.wait_for("the intents", every_order_has_its_intent)
    for order_id in order_ids:
        intents = local_stripe.payment_intents(order_id=order_id)
        assert len(intents) == 1, intents
        assert intents[0]["amount"] == 1999
        assert orders.status(order_id) == "PENDING_PAYMENT"


async def _command(
    orders: Orders, path: str, body: dict[str, Any], **headers: str
) -> tuple[int, dict[str, Any]]:
    """POST a payment command; the reply's status and body, whether it came within the
    ingress's reply timeout (200/201/4xx) or later (202, then read from ``replies``)."""
    async with orders.http.post(
        f"{orders.p.ingress.internal}/internal/v1/payments/{path}",
        json=body,
        headers={"X-Internal-Token": INTERNAL_TOKEN, **headers},
    ) as response:
        status, answer = response.status, await response.json()
    if status != 202:
        return status, answer
    task_id = str(answer["taskId"])

    def replied() -> bool:
        return bool(read_topic(orders.p.bootstrap, "replies", key=task_id))

    await orders.p.wait_for(f"the reply to {task_id}", replied)
    [message] = read_topic(orders.p.bootstrap, "replies", key=task_id)
    reply = CODEC.decode(value_of(message), topic="replies").record
    return int(reply["status"]), json.loads(reply["body"])


async def test_payment_commands_answer_through_request_reply(
    pipeline: Pipeline, local_stripe: LocalStripeServer
) -> None:
    orders, order_id = Orders(pipeline, 1), _uid("ord")
    status, body = await _command(orders, "intents", {"orderId": order_id})
    assert status == 404, body

    await orders.create(order_id, 5000)
    await orders.until_status(order_id, "PENDING_PAYMENT")
    status, body = await _command(orders, "intents", {"orderId": order_id})
    assert status == 200, body
    intent_id = str(body["paymentIntentId"])
    assert body["clientSecret"].startswith(f"{intent_id}_secret_")
    # The order's amount, never the caller's.
    assert local_stripe.get(f"/v1/payment_intents/{intent_id}")["amount"] == 5000
    status, again = await _command(orders, "intents", {"orderId": order_id})
    assert (status, again["paymentIntentId"]) == (200, intent_id)

    success = {"successUrl": "https://shop.test/ok", "cancelUrl": "https://shop.test/cancel"}
    status, body = await _command(orders, "checkout-sessions", {"orderId": order_id, **success})
    assert status == 201, body
    assert str(body["url"]).startswith("http")

    local_stripe.pay_payment_intent(intent_id)
    await orders.webhook("payment_intent.succeeded", order_id, object_id=intent_id, amount=5000)
    await orders.until_status(order_id, "PAID")
    status, body = await _command(orders, "intents", {"orderId": order_id})
    assert status == 409, body

    refund = {"orderId": order_id, "amount": 2000}
    status, first = await _command(orders, "refunds", refund, **{"Idempotency-Key": "rf-1"})
    assert status == 201, first
    status, repeat = await _command(orders, "refunds", refund, **{"Idempotency-Key": "rf-1"})
    assert (status, repeat["refundId"]) == (201, first["refundId"])
    status, body = await _command(orders, "refunds", {"orderId": order_id, "amount": 9000})
    assert status == 400, body
    await orders.webhook(
        "refund.created", order_id, amount=5000, refund_amount=2000, object_id=first["refundId"]
    )
    await orders.until_status(order_id, "PARTIALLY_REFUNDED")

    settings = ingress_settings(pipeline.bootstrap, {"DATABASE_URL": pipeline.database_url})
    async with (
        started_ingress(settings) as reader,
        reader.http.get(
            f"{reader.internal}/internal/v1/payments/{order_id}",
            headers={"X-Internal-Token": INTERNAL_TOKEN},
        ) as response,
    ):
        assert response.status == 200
        view = await response.json()
    assert (view["status"], view["amount"], view["refunded"]) == ("PARTIALLY_REFUNDED", 5000, 2000)
    assert view["paymentIntentId"] == intent_id
    assert view["clientSecret"].startswith(intent_id)
    assert intent_id in {p["providerPaymentId"] for p in view["payments"]}


@TIMES
async def test_razorpay_payment_and_refund_move_the_order_too(
    pipeline: Pipeline, times: int
) -> None:
    """The join is provider-neutral: a Razorpay capture pays, its refund refunds."""
    orders, order_id = Orders(pipeline, times), _uid("ord")
    await orders.create(order_id, 49_900, currency="INR")
    captured = razorpay_event("payment.captured", order_id=order_id, amount=49_900)
    refunded = razorpay_event(
        "refund.processed", order_id=order_id, amount=49_900, refund_amount=49_900
    )
    for event in (captured, refunded):
        event_id = _uid("rzp_evt")
        for _ in range(times):
            assert await post_razorpay(pipeline.ingress, event, event_id) == 200
        if event is captured:
            await orders.until_status(order_id, "PAID")
    await orders.until_status(order_id, "REFUNDED")
    await orders.settle(order_id)
    assert orders.lifecycle(order_id) == [
        "order.pending_payment",
        "order.paid",
        "order.refunded",
    ]
