"""The join's no-loss claims proven with faults: the worker SIGKILLed while orders and
payments flow, Elasticsearch stopped mid-stream.

Every order must end PAID exactly once: one row in Postgres, one document in
Elasticsearch, and on ``orders.lifecycle`` exactly one ``order.paid`` id per order (a
record may be written twice across a crash, but always with the same derived id).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from typing import Any

import pytest

from connectors.embedded import ElasticsearchServer
from schemas.codec import make_codec
from tests.fixtures.ingress import INTERNAL_TOKEN, post_stripe
from tests.fixtures.kafka import key_of, read_topic, value_of
from tests.fixtures.worker import Pipeline
from tests.payloads.stripe import stripe_event

pytestmark = pytest.mark.integration

PIPELINE_SERVICES = ("search",)
CODEC = make_codec(None)


async def _create(pipeline: Pipeline, order_id: str, amount: int) -> None:
    body = {
        "eventId": f"evt-created-{order_id}",
        "eventType": "order.created",
        "source": "shop",
        "data": {
            "orderId": order_id,
            "userId": "user_7",
            "amount": amount,
            "currency": "usd",
            "items": [{"productId": "sku_9", "quantity": 1}],
        },
    }
    async with pipeline.ingress.http.post(
        f"{pipeline.ingress.internal}/internal/v1/events",
        json=body,
        headers={"X-Internal-Token": INTERNAL_TOKEN},
    ) as response:
        assert response.status == 202, await response.text()


async def _pay(pipeline: Pipeline, order_id: str, amount: int) -> None:
    event = stripe_event(
        "payment_intent.succeeded",
        event_id=f"evt_{order_id}",
        order_id=order_id,
        object_id=f"pi_{order_id}",
        amount=amount,
    )
    assert await post_stripe(pipeline.ingress, event) == 200


async def _order_and_payment(pipeline: Pipeline, order_id: str, amount: int, n: int) -> None:
    # Every third payment arrives before its order.
    if n % 3 == 0:
        await _pay(pipeline, order_id, amount)
        await _create(pipeline, order_id, amount)
    else:
        await _create(pipeline, order_id, amount)
        await _pay(pipeline, order_id, amount)


async def _send(pipeline: Pipeline, orders: list[str], *, pause_s: float) -> None:
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for n, order_id in enumerate(orders):
        queue.put_nowait((n, order_id))

    async def sender() -> None:
        while not queue.empty():
            n, order_id = queue.get_nowait()
            await _order_and_payment(pipeline, order_id, 1000 + n, n)
            await asyncio.sleep(pause_s)

    await asyncio.gather(*(sender() for _ in range(4)))


def _paid(pipeline: Pipeline, batch: str) -> int:
    count: int = pipeline.scalar(
        "SELECT count(*) FROM orders WHERE order_id LIKE %s AND status = 'PAID'", f"ord_{batch}_%"
    )
    return count


def _lifecycle_ids(pipeline: Pipeline, batch: str) -> dict[str, dict[str, set[str]]]:
    """order id → event type → the distinct event ids seen on orders.lifecycle."""
    ids: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for message in read_topic(pipeline.bootstrap, "orders.lifecycle"):
        order_id = key_of(message)
        if order_id.startswith(f"ord_{batch}_"):
            record = CODEC.decode(value_of(message), topic="orders.lifecycle").record
            ids[order_id][str(record["eventType"])].add(str(record["eventId"]))
    return ids


async def _search_count(pipeline: Pipeline, batch: str, status: str) -> int:
    url = f"{pipeline.env['ELASTICSEARCH_URL']}/{pipeline.env['SLUICE_SEARCH_INDEX_PREFIX']}orders"
    query = {
        "query": {
            "bool": {
                "filter": [
                    {"prefix": {"orderId": f"ord_{batch}_"}},
                    {"term": {"status": status}},
                ]
            }
        }
    }
    async with pipeline.ingress.http.post(f"{url}/_count", json=query) as response:
        if response.status != 200:
            return -1
        body: dict[str, Any] = await response.json()
        return int(body["count"])


async def _until_searchable(pipeline: Pipeline, batch: str, expected: int) -> None:
    for _ in range(360):
        if await _search_count(pipeline, batch, "PAID") == expected:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(
        f"search never showed {expected} PAID orders\n{pipeline.worker.log_tail()}"
    )


async def test_sigkill_twice_while_orders_flow_pays_each_order_exactly_once(
    pipeline: Pipeline,
) -> None:
    batch = uuid.uuid4().hex[:8]
    orders = [f"ord_{batch}_{n}" for n in range(240)]
    kills_at: list[int] = []

    async def kill_and_restart() -> None:
        pipeline.worker.kill()
        kills_at.append(_paid(pipeline, batch))
        pipeline.worker.start()

    # The first half is paced (about 8 orders/s); the first SIGKILL lands once 40 of its
    # orders are paid, while the rest are still being sent. The second lands as soon as
    # the restarted worker has made progress, in the middle of its backlog. The second
    # half is sent only then, so both kills are mid-stream by construction (a restarted
    # worker may drain a backlog in one batch, so "after N paid" alone cannot promise it).
    first, second = orders[:120], orders[120:]
    sending = asyncio.create_task(_send(pipeline, first, pause_s=0.5))
    await pipeline.wait_for(
        "40 paid orders before the first kill", lambda: _paid(pipeline, batch) >= 40
    )
    await kill_and_restart()
    await pipeline.wait_for(
        "the restarted worker to make progress",
        lambda: _paid(pipeline, batch) > kills_at[0],
        timeout_s=180,
    )
    await kill_and_restart()
    await sending
    await _send(pipeline, second, pause_s=0.1)
    assert 0 < kills_at[0] < kills_at[1] < len(orders), kills_at

    await pipeline.wait_for(
        "every order paid", lambda: _paid(pipeline, batch) == len(orders), timeout_s=240
    )
    await _until_searchable(pipeline, batch, len(orders))
    lifecycle = _lifecycle_ids(pipeline, batch)
    assert set(lifecycle) == set(orders)
    for order_id, by_type in lifecycle.items():
        events = {t: len(ids) for t, ids in by_type.items() if t != "order.payment_orphaned"}
        assert events == {"order.pending_payment": 1, "order.paid": 1}, (order_id, by_type)
    revisions = pipeline.query(
        "SELECT DISTINCT revision FROM orders WHERE order_id LIKE %s", f"ord_{batch}_%"
    )
    assert revisions == [(2,)]


async def test_elasticsearch_stopped_mid_stream_catches_up(
    pipeline: Pipeline, elasticsearch_server: ElasticsearchServer
) -> None:
    batch = uuid.uuid4().hex[:8]
    before = [f"ord_{batch}_{n}" for n in range(20)]
    during = [f"ord_{batch}_{n}" for n in range(20, 80)]
    await _send(pipeline, before, pause_s=0)
    await _until_searchable(pipeline, batch, len(before))

    await asyncio.to_thread(elasticsearch_server.stop)
    try:
        await _send(pipeline, during, pause_s=0)
        await pipeline.wait_for(
            "Postgres to have every order paid",
            lambda: _paid(pipeline, batch) == 80,
            timeout_s=180,
        )
        await asyncio.sleep(5)  # the search writes are now in the retry topics
    finally:
        await asyncio.to_thread(elasticsearch_server.start)
    await _until_searchable(pipeline, batch, 80)
