"""The join's no-loss claims proven with faults: the worker SIGKILLed while orders and
payments flow, Elasticsearch stopped mid-stream.

Every order must end PAID exactly once: one row in Postgres, one document in
Elasticsearch, and on ``orders.lifecycle`` exactly one ``order.paid`` id per order (a
record may be written twice across a crash, but always with the same derived id).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from devstack import ElasticsearchServer
from tests.fixtures.orders import lifecycle_ids, paid, send_orders
from tests.fixtures.worker import Pipeline

pytestmark = pytest.mark.integration

PIPELINE_SERVICES = ("search",)


def _paid(pipeline: Pipeline, batch: str) -> int:
    return paid(pipeline, f"ord_{batch}_")


def _lifecycle_ids(pipeline: Pipeline, batch: str) -> dict[str, dict[str, set[str]]]:
    return lifecycle_ids(pipeline, f"ord_{batch}_")


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
    sending = asyncio.create_task(send_orders(pipeline, first, pause_s=0.5))
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
    await send_orders(pipeline, second, pause_s=0.1)
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
    await send_orders(pipeline, before, pause_s=0)
    await _until_searchable(pipeline, batch, len(before))

    await asyncio.to_thread(elasticsearch_server.stop)
    try:
        await send_orders(pipeline, during, pause_s=0)
        await pipeline.wait_for(
            "Postgres to have every order paid",
            lambda: _paid(pipeline, batch) == 80,
            timeout_s=180,
        )
        await asyncio.sleep(5)  # the search writes are now in the retry topics
    finally:
        await asyncio.to_thread(elasticsearch_server.start)
    await _until_searchable(pipeline, batch, 80)
