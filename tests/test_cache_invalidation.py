"""Cache invalidation end to end: ``POST /internal/v1/cache/invalidate`` → Kafka
(``commands.cache.invalidate``) → ``sluice worker`` (a real process) → Redis ``UNLINK``,
answered through ``replies``; and an order paid through the orders flow invalidating its
``SLUICE_CACHE_KEYS`` keys after the Postgres commit.

The module runs a Redis of its own (a second ``RedisServer``, not the session's), because
the outage test stops it; every test here uses it. The ingress is the module's own, with
a reply timeout long enough for a loaded machine to answer in time.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import pytest_asyncio
import redis

from connectors.migrate import apply_migrations
from devstack import PostgresServer, RedisServer
from schemas.codec import make_codec
from tests.fixtures.ingress import (
    INTERNAL_TOKEN,
    IngressUnderTest,
    ingress_settings,
    internal_headers,
    post_stripe,
    started_ingress,
)
from tests.fixtures.kafka import end_offsets, read_topic, value_of
from tests.fixtures.worker import (
    TEST_RETRY_DELAYS,
    TEST_RETRY_MAX_ATTEMPTS,
    WorkerProcess,
    start_group_at_end,
    wait_until,
)
from tests.payloads.stripe import stripe_event

pytestmark = pytest.mark.integration

CODEC = make_codec(None)
COMMANDS = "commands.cache.invalidate"
REPLY_TIMEOUT_S = 8.0
CACHE_KEYS = "orders=order:{orderId},payments:{orderId}"


@pytest.fixture(scope="module")
def cache_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("cache-redis")) as server:
        yield server


@dataclass
class CacheStack:
    ingress: IngressUnderTest
    worker: WorkerProcess
    redis_server: RedisServer
    database_url: str

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_server.url)

    async def wait_for(self, what: str, check: Any, timeout_s: float = 90.0) -> None:
        await wait_until(what, check, timeout_s, on_timeout=self.worker.log_tail)

    async def invalidate(self, body: Any) -> tuple[int, Any]:
        async with self.ingress.http.post(
            f"{self.ingress.internal}/internal/v1/cache/invalidate",
            data=body if isinstance(body, bytes) else json.dumps(body).encode(),
            headers=internal_headers(**{"Content-Type": "application/json"}),
        ) as response:
            return response.status, await response.json(content_type=None)

    def replies(self, task_id: str) -> list[dict[str, Any]]:
        return [
            dict(CODEC.decode(value_of(m), topic="replies").record)
            for m in read_topic(self.ingress.bootstrap, "replies", key=task_id, timeout_s=5)
        ]

    def order_status(self, order_id: str) -> str | None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT status FROM orders WHERE order_id = %s", (order_id,)
            ).fetchone()
        return None if row is None else str(row[0])


@pytest_asyncio.fixture(scope="module")
async def cache(
    catalog_topics: str,
    postgres_server: PostgresServer,
    cache_redis: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[CacheStack]:
    name = f"sluice_cache_{uuid.uuid4().hex[:6]}"
    database_url = postgres_server.create_database(name)
    apply_migrations(database_url)
    state = tmp_path_factory.mktemp("cache-worker")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "PARTNER_"))}
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": catalog_topics,
        "DATABASE_URL": database_url,
        "REDIS_URL": cache_redis.url,
        "SLUICE_CACHE_KEYS": CACHE_KEYS,
        "SLUICE_APP_ID": name.replace("_", "-"),
        "SLUICE_STATE_DIR": str(state / "state"),
        "SLUICE_RETRY_DELAYS": TEST_RETRY_DELAYS,
        "SLUICE_RETRY_MAX_ATTEMPTS": TEST_RETRY_MAX_ATTEMPTS,
        "SLUICE_LOG_LEVEL": "INFO",
        "SLUICE_NOTIFY_ON": "",
    }
    start_group_at_end(env)
    worker = WorkerProcess(env, state / "worker.log")
    worker.start()
    settings = ingress_settings(catalog_topics, {"SLUICE_REPLY_TIMEOUT": f"{REPLY_TIMEOUT_S:g}s"})
    try:
        async with started_ingress(settings) as ingress:
            stack = CacheStack(ingress, worker, cache_redis, database_url)
            # Partitions assigned: a command published now is answered in time.
            await stack.wait_for(
                "the worker ready", lambda: "worker ready" in worker.log_tail(400), 120
            )
            yield stack
    finally:
        worker.stop()


# --- the route ---------------------------------------------------------------------------


async def test_a_pattern_removes_exactly_its_keys_and_answers_the_count(
    cache: CacheStack,
) -> None:
    with cache.client() as client:
        pipe = client.pipeline(transaction=False)
        for i in range(10_000):
            pipe.set(f"listing:{i}", "x")
        for i in range(10):
            pipe.set(f"user:{i}", "y")
        pipe.execute()
        assert client.dbsize() >= 10_010

        status, body = await cache.invalidate({"patterns": ["listing:*"]})

        assert (status, body) == (200, {"invalidated": 10_000}), cache.worker.log_tail()
        assert list(client.scan_iter(match="listing:*", count=1000)) == []
        assert sorted(client.scan_iter(match="user:*")) == [f"user:{i}".encode() for i in range(10)]


async def test_keys_and_patterns_together_count_what_existed(cache: CacheStack) -> None:
    tag = uuid.uuid4().hex[:8]
    with cache.client() as client:
        client.mset({f"k:{tag}:a": 1, f"k:{tag}:b": 1, f"p:{tag}:1": 1, f"p:{tag}:2": 1})
        status, body = await cache.invalidate(
            {
                # k:…:missing never existed; p:…:1 is named and matched: counted once.
                "keys": [f"k:{tag}:a", f"k:{tag}:b", f"k:{tag}:missing", f"p:{tag}:1"],
                "patterns": [f"p:{tag}:*"],
            }
        )
        assert (status, body) == (200, {"invalidated": 4})
        assert client.exists(f"k:{tag}:a", f"p:{tag}:2") == 0


async def test_a_bare_star_is_400_and_nothing_is_published(cache: CacheStack) -> None:
    before = end_offsets(cache.ingress.bootstrap, COMMANDS)
    status, body = await cache.invalidate({"patterns": ["*"]})
    assert status == 400
    assert (body["error"], body["field"]) == ("invalid", "patterns[0]")
    assert "'*'" in body["detail"]
    assert end_offsets(cache.ingress.bootstrap, COMMANDS) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "keys"),
        ({"keys": "order:1"}, "keys"),
        ({"keys": ["order:1", ""]}, "keys[1]"),
        ({"keys": ["bad\u0007key"]}, "keys[0]"),
        ({"keys": [f"k{i}" for i in range(1001)]}, "keys"),
        ({"patterns": ["*foo"]}, "patterns[0]"),
        ({"patterns": ["listing:*", "ab*"]}, "patterns[1]"),
        ({"patterns": [f"pat{i:02}:*" for i in range(21)]}, "patterns"),
        ({"keys": ["a"], "ttl": 5}, "ttl"),
        (b'{"keys": [', None),
        (b"[]", None),
    ],
    ids=[
        "empty",
        "keys not a list",
        "empty key",
        "unprintable key",
        "too many keys",
        "no prefix",
        "short prefix",
        "too many patterns",
        "unknown field",
        "malformed",
        "not an object",
    ],
)
async def test_bad_bodies_are_400_naming_the_field(
    cache: CacheStack, body: Any, field: str | None
) -> None:
    before = end_offsets(cache.ingress.bootstrap, COMMANDS)
    status, answer = await cache.invalidate(body)
    assert status == 400, answer
    assert answer["error"] == "invalid"
    assert answer.get("field") == field
    assert end_offsets(cache.ingress.bootstrap, COMMANDS) == before


async def test_the_route_needs_the_token(cache: CacheStack) -> None:
    before = end_offsets(cache.ingress.bootstrap, COMMANDS)
    async with cache.ingress.http.post(
        f"{cache.ingress.internal}/internal/v1/cache/invalidate",
        json={"keys": ["order:1"]},
    ) as response:
        assert response.status == 401
    assert end_offsets(cache.ingress.bootstrap, COMMANDS) == before


# --- invalidation on change --------------------------------------------------------------


async def _post_order(cache: CacheStack, order_id: str, amount: int) -> None:
    body = {
        "eventId": f"evt-created-{uuid.uuid4().hex[:12]}",
        "eventType": "order.created",
        "source": "shop",
        "data": {
            "orderId": order_id,
            "userId": f"user_{uuid.uuid4().hex[:8]}",
            "amount": amount,
            "currency": "eur",
            "items": [{"productId": "sku_c", "quantity": 1}],
        },
    }
    async with cache.ingress.http.post(
        f"{cache.ingress.internal}/internal/v1/events",
        json=body,
        headers={"X-Internal-Token": INTERNAL_TOKEN},
    ) as response:
        assert response.status == 202, await response.text()


async def test_a_paid_order_invalidates_its_keys_after_postgres_commits(
    cache: CacheStack,
) -> None:
    order_id = f"ord_{uuid.uuid4().hex[:12]}"
    other = f"ord_{uuid.uuid4().hex[:12]}"
    keys = [f"order:{order_id}", f"payments:{order_id}"]
    with cache.client() as client:
        client.mset({keys[0]: "pending", keys[1]: "[]", f"order:{other}": "kept"})
        # The order's creation is a change too: its keys go once it is projected.
        await _post_order(cache, order_id, 2750)
        await cache.wait_for("the created order's keys dropped", lambda: not client.exists(*keys))
        assert cache.order_status(order_id) == "PENDING_PAYMENT"

        # Cached again (a reader filled the cache), then the order is paid.
        client.mset({keys[0]: "pending", keys[1]: "[]"})
        payment = stripe_event(
            "payment_intent.succeeded",
            event_id=f"evt_{uuid.uuid4().hex[:16]}",
            order_id=order_id,
            object_id=f"pi_{uuid.uuid4().hex[:16]}",
            amount=2750,
            currency="eur",
        )
        assert await post_stripe(cache.ingress, payment) == 200
        seen: list[str | None] = []

        def dropped() -> bool:
            if client.exists(*keys):
                return False
            # Read right after the keys went: Postgres must already say PAID.
            seen.append(cache.order_status(order_id))
            return True

        await cache.wait_for("the paid order's keys dropped", dropped)
        assert seen == ["PAID"]
        assert client.get(f"order:{other}") == b"kept"


# --- Redis down (last: it stops this module's Redis) --------------------------------------


async def test_redis_down_is_retried_and_the_keys_go_once_it_is_back(
    cache: CacheStack,
) -> None:
    tag = uuid.uuid4().hex[:8]
    with cache.client() as client:
        client.mset({f"down:{tag}:{i}": i for i in range(50)})
    cache.redis_server.stop()
    try:
        started = time.monotonic()
        status, body = await cache.invalidate({"patterns": [f"down:{tag}:*"]})
        # Nobody answers while Redis is down: the caller gets the task id.
        assert status == 202, body
        assert time.monotonic() - started >= REPLY_TIMEOUT_S * 0.9
        task_id = body["taskId"]
        await cache.wait_for(
            "the command on a delay topic", lambda: _retries(cache, task_id) >= 1, 60
        )
        assert cache.replies(task_id) == []
    finally:
        cache.redis_server.start()

    with cache.client() as client:
        assert client.exists(*[f"down:{tag}:{i}" for i in range(50)]) == 50  # kept (AOF)
        await cache.wait_for(
            "the keys gone once Redis is back",
            lambda: not list(client.scan_iter(match=f"down:{tag}:*")),
            90,
        )
    await cache.wait_for("the late reply", lambda: bool(cache.replies(task_id)), 30)
    [reply] = cache.replies(task_id)
    assert reply["status"] == 200
    assert json.loads(reply["body"]) == {"invalidated": 50}


def _retries(cache: CacheStack, task_id: str) -> int:
    """Records keyed ``task_id`` on the test's delay topics."""
    return sum(
        len(read_topic(cache.ingress.bootstrap, f"retry.{delay}", key=task_id, timeout_s=5))
        for delay in TEST_RETRY_DELAYS.split(",")
    )
