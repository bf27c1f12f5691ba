"""Rate limits through the real ingress, the real broker and a real Redis (DESIGN §3: 429
with ``Retry-After``, nothing published).

The module runs two ingresses of its own, each with a frozen clock (the buckets' time),
so a bucket refills only when a test advances it and every count is exact:

- ``limited``: the session's Redis (a database of its own, flushed before each test) and
  a runtime config topic of its own; every limit here is set through
  ``POST /internal/v1/config`` on the running ingress, never by a restart;
- ``fragile``: a Redis of its own that the tests stop and pause, a short Redis timeout,
  and its limit from the settings (``SLUICE_RATE_LIMITS``): it must fail open.

Topics are the session's; each test compares end offsets before and after, and nothing
else writes to them while a test runs.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import redis

from base.clock import FrozenClock
from base.metrics import MetricName
from base.settings import Settings
from connectors.kafka_admin import create_topics
from connectors.runtime_config import config_topic_spec
from devstack import RedisServer
from ingress.server import running_ingress
from ingress.verify.partner import sign_hmac
from schemas.runtime_keys import ratelimit_key, ratelimit_partner_key, ratelimit_source_key
from tests.fixtures.ingress import (
    INTERNAL_OLD_TOKEN,
    INTERNAL_TOKEN,
    RAZORPAY_SECRET,
    STRIPE_SECRET,
    IngressUnderTest,
    ingress_settings,
    internal_headers,
)
from tests.fixtures.kafka import end_offsets
from tests.payloads.razorpay import razorpay_event, signed_razorpay_request
from tests.payloads.stripe import signed_stripe_request, stripe_event

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:8]
ADMIN_TOKEN = f"tok-admin-{RUN}"
PARTNER_A = f"rl-a-{RUN}"
PARTNER_B = f"rl-b-{RUN}"
SECRETS = {PARTNER_A: f"secret-a-{RUN}", PARTNER_B: f"secret-b-{RUN}"}
REDIS_DB = 7  # of the session's Redis: this module's own
STRIPE_TOPIC = "webhooks.stripe"
LEADS_TOPIC = "leads.received"
FAIL_OPEN = MetricName.RATE_LIMIT_FAIL_OPEN


@dataclass
class Ingress:
    """An ingress under test, its frozen clock and the config versions it has written."""

    under_test: IngressUnderTest
    clock: FrozenClock
    versions: dict[str, int] = field(default_factory=dict)

    @property
    def http(self) -> aiohttp.ClientSession:
        return self.under_test.http

    async def set_limit(self, key: str, rate: int) -> None:
        """Set ``key`` through the runtime config API (answered once applied here)."""
        version = self.versions.get(key, 0)
        async with self.http.post(
            f"{self.under_test.internal}/internal/v1/config",
            json={"key": key, "value": rate},
            headers=internal_headers(ADMIN_TOKEN, **{"If-Match": str(version)}),
        ) as response:
            body = await response.json()
            assert response.status == 200, body
        self.versions[key] = body["version"]

    async def stripe(self, http: aiohttp.ClientSession | None = None) -> Answer:
        event = stripe_event("payment_intent.succeeded")
        body, headers = signed_stripe_request(event, STRIPE_SECRET, int(self.clock.time()))
        return await _post(
            http or self.http, f"{self.under_test.public}/v1/webhooks/stripe", body, headers
        )

    async def razorpay(self, http: aiohttp.ClientSession | None = None) -> Answer:
        body, headers = signed_razorpay_request(razorpay_event("payment.captured"), RAZORPAY_SECRET)
        return await _post(
            http or self.http, f"{self.under_test.public}/v1/webhooks/razorpay", body, headers
        )

    async def lead(
        self, partner: str, *, signature: str | None = None, raw: bytes | None = None
    ) -> Answer:
        body = (
            raw
            or json.dumps(
                {
                    "partnerId": partner,
                    "externalLeadId": uuid.uuid4().hex,
                    "payload": {"email": "lead@example.com"},
                }
            ).encode()
        )
        headers = {
            "Content-Type": "application/json",
            "X-Partner-Signature": signature or sign_hmac(body, SECRETS.get(partner, "x")),
        }
        return await _post(
            self.http, f"{self.under_test.public}/v1/webhooks/partner/leads", body, headers
        )

    async def config_get(self, token: str) -> Answer:
        async with self.http.get(
            f"{self.under_test.internal}/internal/v1/config?key=dedupe.window",
            headers=internal_headers(token),
        ) as response:
            return Answer(response.status, dict(response.headers), await response.read())

    def fail_open(self, route: str) -> float:
        return self.under_test.running.apps.metrics.value(FAIL_OPEN, route=route)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


async def _post(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str]
) -> Answer:
    async with http.post(url, data=body, headers=headers) as response:
        return Answer(response.status, dict(response.headers), await response.read())


async def _statuses(calls: Any, n: int) -> list[int]:
    return [(await calls()).status for _ in range(n)]


@pytest.fixture(scope="module")
def partners_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rl-partners") / "partners.json"
    partners = {pid: {"auth": "hmac", "secrets": [secret]} for pid, secret in SECRETS.items()}
    path.write_text(json.dumps({"partners": partners}), encoding="utf-8")
    return path


def _config_topic(bootstrap: str, name: str) -> str:
    create_topics(bootstrap, [config_topic_spec(name)])
    return name


@asynccontextmanager
async def _started(settings: Settings) -> AsyncIterator[Ingress]:
    clock = FrozenClock(time.time())
    async with (
        running_ingress(settings, clock=clock) as running,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
    ):
        yield Ingress(
            IngressUnderTest(running, http, settings.kafka_bootstrap_servers, settings), clock
        )


@pytest_asyncio.fixture(scope="module")
async def limited(
    catalog_topics: str, redis_server: RedisServer, partners_file: Path
) -> AsyncIterator[Ingress]:
    settings = ingress_settings(
        catalog_topics,
        {
            "REDIS_URL": _database(redis_server.url, REDIS_DB),
            "ADMIN_API_TOKEN": ADMIN_TOKEN,
            "SLUICE_PARTNERS_FILE": str(partners_file),
            "SLUICE_CONFIG_TOPIC": _config_topic(catalog_topics, f"config.runtime.rl.{RUN}"),
            # Generous: a loaded test machine must not make Redis look slow here.
            "SLUICE_RATE_LIMIT_TIMEOUT": "5s",
        },
    )
    async with _started(settings) as ingress:
        yield ingress


@pytest_asyncio.fixture
async def fresh(limited: Ingress, redis_server: RedisServer) -> AsyncIterator[Ingress]:
    """``limited`` with empty buckets' store; the limits a test set are put back to 0."""
    client = redis.Redis.from_url(_database(redis_server.url, REDIS_DB))
    try:
        client.flushdb()
    finally:
        client.close()
    yield limited
    for key, _version in list(limited.versions.items()):
        await limited.set_limit(key, 0)


def _database(url: str, db: int) -> str:
    return f"{url.rsplit('/', 1)[0]}/{db}"


# -- acceptance ---------------------------------------------------------------------------


async def test_one_provider_past_its_limit_gets_429_while_another_is_unaffected(
    fresh: Ingress,
) -> None:
    await fresh.set_limit(ratelimit_key("webhook.stripe"), 3)
    before = end_offsets(fresh.under_test.bootstrap, STRIPE_TOPIC)

    assert await _statuses(fresh.stripe, 3) == [200, 200, 200]
    refused = [await fresh.stripe() for _ in range(4)]
    assert [r.status for r in refused] == [429] * 4
    # Razorpay has no limit: unaffected by Stripe's.
    assert await _statuses(fresh.razorpay, 6) == [200] * 6

    # Nothing published for a 429: exactly the three accepted records were.
    after = end_offsets(fresh.under_test.bootstrap, STRIPE_TOPIC)
    assert sum(after.values()) - sum(before.values()) == 3

    answer = refused[0]
    assert answer.headers["Retry-After"] == "1"  # 3/s: the next token in 1/3 s, rounded up
    assert answer.headers["Content-Type"] == "application/json"
    body = json.loads(answer.body)
    assert body["error"] == "rate_limited"
    assert "webhook.stripe" in body["detail"]
    assert fresh.fail_open("webhook.stripe") == 0


async def test_retry_after_is_when_a_token_is_back(fresh: Ingress) -> None:
    await fresh.set_limit(ratelimit_key("webhook.stripe"), 2)
    assert await _statuses(fresh.stripe, 3) == [200, 200, 429]
    fresh.clock.advance(0.4)  # 0.8 of a token
    response = await fresh.stripe()
    assert (response.status, response.headers["Retry-After"]) == (429, "1")
    fresh.clock.advance(0.1)  # one whole token, after the 0.5 s it takes at 2/s
    assert await _statuses(fresh.stripe, 2) == [200, 429]
    fresh.clock.advance(float(response.headers["Retry-After"]))  # as the sender would wait
    assert await _statuses(fresh.stripe, 3) == [200, 200, 429]  # full again: the burst


async def test_each_partner_has_its_own_bucket_checked_before_its_credentials(
    fresh: Ingress,
) -> None:
    await fresh.set_limit(ratelimit_partner_key(PARTNER_A), 2)
    before = end_offsets(fresh.under_test.bootstrap, LEADS_TOPIC)
    assert await _statuses(lambda: fresh.lead(PARTNER_A), 3) == [202, 202, 429]
    assert await _statuses(lambda: fresh.lead(PARTNER_B), 3) == [202] * 3  # no limit
    after = end_offsets(fresh.under_test.bootstrap, LEADS_TOPIC)
    assert sum(after.values()) - sum(before.values()) == 5

    # Past the limit a bad body is still its 4xx (it is checked first) ...
    assert (await fresh.lead(PARTNER_A, raw=b"{not json")).status == 400
    assert (await fresh.lead(f"nobody-{RUN}")).status == 401
    # ... and no secret is needed to be limited: a wrong signature is refused 429 too.
    assert (await fresh.lead(PARTNER_A, signature="0" * 64)).status == 429

    # The route's limit is each partner's that has none of its own.
    await fresh.set_limit(ratelimit_key("webhook.partner.leads"), 1)
    assert await _statuses(lambda: fresh.lead(PARTNER_B), 2) == [202, 429]
    fresh.clock.advance(0.5)
    assert (await fresh.lead(PARTNER_A)).status == 202  # its own 2/s: refilled by one


async def test_each_source_address_has_its_own_bucket(fresh: Ingress) -> None:
    await fresh.set_limit(ratelimit_source_key("webhook.razorpay"), 2)
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as elsewhere:
        assert await _statuses(fresh.razorpay, 3) == [200, 200, 429]  # from 127.0.0.1
        assert await _statuses(lambda: fresh.razorpay(elsewhere), 3) == [200, 200, 429]
        # The per-source limit is per route: Stripe from the same address is not limited.
        assert await _statuses(fresh.stripe, 3) == [200] * 3


async def test_each_token_has_its_own_bucket_on_an_internal_route(fresh: Ingress) -> None:
    await fresh.set_limit(ratelimit_key("internal.config.get"), 2)

    async def current() -> Answer:
        return await fresh.config_get(INTERNAL_TOKEN)

    async def previous() -> Answer:
        return await fresh.config_get(INTERNAL_OLD_TOKEN)

    assert await _statuses(current, 3) == [200, 200, 429]
    assert await _statuses(previous, 2) == [200, 200]
    # No token: 401 before any limit (an unknown caller has no bucket).
    async with fresh.http.get(f"{fresh.under_test.internal}/internal/v1/config") as response:
        assert response.status == 401
    # Other internal routes have limits of their own (none set here).
    async with fresh.http.get(
        f"{fresh.under_test.internal}/internal/v1/leads/{uuid.uuid4().hex}",
        headers=internal_headers(),
    ) as response:
        assert response.status != 429


async def test_a_limit_changed_at_runtime_applies_without_a_restart(fresh: Ingress) -> None:
    key = ratelimit_key("webhook.stripe")
    assert await _statuses(fresh.stripe, 5) == [200] * 5  # no limit
    await fresh.set_limit(key, 1)
    assert await _statuses(fresh.stripe, 2) == [200, 429]
    await fresh.set_limit(key, 4)  # raised: the bucket grows with the rate
    fresh.clock.advance(1.0)
    assert await _statuses(fresh.stripe, 5) == [200] * 4 + [429]
    await fresh.set_limit(key, 0)  # lifted
    assert await _statuses(fresh.stripe, 5) == [200] * 5


# -- fail open ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis this module stops and pauses (never the session's)."""
    with RedisServer(tmp_path_factory.mktemp("rl-redis")) as server:
        yield server


@pytest_asyncio.fixture(scope="module")
async def fragile(catalog_topics: str, own_redis: RedisServer) -> AsyncIterator[Ingress]:
    settings = ingress_settings(
        catalog_topics,
        {
            "REDIS_URL": own_redis.url,
            "SLUICE_RATE_LIMITS": "webhook.stripe=2",
            "SLUICE_RATE_LIMIT_TIMEOUT": "300ms",
            "SLUICE_CONFIG_TOPIC": _config_topic(catalog_topics, f"config.runtime.rl2.{RUN}"),
        },
    )
    async with _started(settings) as ingress:
        yield ingress


async def test_redis_down_or_slow_fails_open_counted_and_warned_once(
    fragile: Ingress, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    route = "webhook.stripe"
    # The limit from the settings holds while Redis is up.
    assert await _statuses(fragile.stripe, 3) == [200, 200, 429]
    assert fragile.fail_open(route) == 0

    own_redis.stop()
    try:
        before = end_offsets(fragile.under_test.bootstrap, STRIPE_TOPIC)
        with caplog.at_level(logging.WARNING, logger="ingress.ratelimit"):
            assert await _statuses(fragile.stripe, 5) == [200] * 5
        after = end_offsets(fragile.under_test.bootstrap, STRIPE_TOPIC)
        assert sum(after.values()) - sum(before.values()) == 5  # every one published
        assert fragile.fail_open(route) == 5
        warnings = [r for r in caplog.records if "fail open" in r.getMessage()]
        assert len(warnings) == 1, warnings
        # ... and /metrics says so.
        async with fragile.http.get(f"{fragile.under_test.internal}/metrics") as response:
            text = await response.text()
        assert f'sluice_ingress_rate_limit_fail_open_total{{route="{route}"}} 5.0' in text
    finally:
        own_redis.start()

    # Back: limited again once the one-second backoff is over (the bucket is still empty).
    deadline = time.monotonic() + 10
    while (await fragile.stripe()).status != 429:
        assert time.monotonic() < deadline, "the limit never applied again"

    # Slow: Redis holds every script for 2 s; the request waits the 300 ms timeout only.
    counted = fragile.fail_open(route)
    client = redis.Redis.from_url(own_redis.url)
    try:
        client.client_pause(2000, all=False)  # WRITE: EVALSHA waits
        started = time.monotonic()
        answer = await fragile.stripe()
        took = time.monotonic() - started
    finally:
        client.client_unpause()
        client.close()
    assert answer.status == 200
    assert fragile.fail_open(route) == counted + 1
    assert took < 1.5, f"the request waited {took:.2f}s for a slow Redis"
