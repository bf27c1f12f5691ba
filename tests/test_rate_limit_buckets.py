"""The token bucket's math: the Lua script itself (``connectors/redis_ratelimit.py``), run
by the session's real Redis with the time injected (``now_ms``), so refill, capacity and
waits are exact; and the pure pieces around it (capacity, ``Retry-After``, the settings).

Every test uses bucket keys of its own (a fresh uuid), so nothing carries over.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import redis

from base.errors import ConfigError, TransientError
from base.partners import load_partners
from base.settings import load_settings
from connectors.redis_ratelimit import Bucket, Decision, TokenBuckets
from devstack import RedisServer, free_port
from ingress.ratelimit import bucket_capacity, retry_after_s
from schemas.runtime_keys import (
    PUBLIC_ROUTES,
    RATE_LIMITED_ROUTES,
    declared_keys,
    ratelimit_key,
    ratelimit_partner_key,
    ratelimit_source_key,
)

T0 = 1_700_000_000_000  # ms


@pytest_asyncio.fixture
async def buckets(redis_server: RedisServer) -> AsyncIterator[TokenBuckets]:
    store = TokenBuckets(redis_server.url, timeout_s=5.0)
    yield store
    await store.close()


def _bucket(rate: float, capacity: float) -> Bucket:
    return Bucket(f"test:bucket:{uuid.uuid4().hex}", rate, capacity)


async def _drain(store: TokenBuckets, bucket: Bucket, now_ms: int) -> int:
    """How many tokens ``bucket`` gives at ``now_ms`` before refusing."""
    taken = 0
    while (await store.take([bucket], now_ms)).allowed:
        taken += 1
        assert taken <= 10_000
    return taken


@pytest.mark.integration
async def test_a_fresh_bucket_gives_its_capacity_then_says_how_long_to_wait(
    buckets: TokenBuckets,
) -> None:
    bucket = _bucket(rate=4, capacity=10)
    assert await _drain(buckets, bucket, T0) == 10
    # Empty: one token comes back in 1/4 s.
    assert await buckets.take([bucket], T0) == Decision(False, 250)
    # Refused calls take nothing and do not move the time: 100 ms later, 150 ms to go.
    assert await buckets.take([bucket], T0 + 100) == Decision(False, 150)
    assert (await buckets.take([bucket], T0 + 250)).allowed
    assert await buckets.take([bucket], T0 + 250) == Decision(False, 250)


@pytest.mark.integration
async def test_refill_is_proportional_to_time_and_capped_at_capacity(
    buckets: TokenBuckets,
) -> None:
    bucket = _bucket(rate=10, capacity=5)
    assert await _drain(buckets, bucket, T0) == 5
    assert await _drain(buckets, bucket, T0 + 300) == 3  # 0.3 s x 10/s
    # A fractional token stays in the bucket: 150 ms gives 1.5, then 50 ms more 2.
    assert await _drain(buckets, bucket, T0 + 450) == 1
    assert await _drain(buckets, bucket, T0 + 500) == 1
    # Idle for an hour: full, not 36,000 tokens.
    assert await _drain(buckets, bucket, T0 + 3_600_000) == 5


@pytest.mark.integration
async def test_several_buckets_give_all_or_nothing(buckets: TokenBuckets) -> None:
    small, large = _bucket(rate=1, capacity=2), _bucket(rate=1, capacity=10)
    assert (await buckets.take([small, large], T0)).allowed
    assert (await buckets.take([small, large], T0)).allowed
    # The small one is empty: refused, and the large one keeps its 8 tokens.
    assert await buckets.take([small, large], T0) == Decision(False, 1000)
    assert await _drain(buckets, large, T0) == 8
    # The wait is the longest of the empty buckets'.
    slow = _bucket(rate=0.5, capacity=1)
    assert (await buckets.take([slow], T0)).allowed
    assert await buckets.take([small, slow], T0 + 100) == Decision(False, 1900)


@pytest.mark.integration
async def test_a_clock_running_behind_gets_no_refill_and_moves_nothing_back(
    buckets: TokenBuckets,
) -> None:
    bucket = _bucket(rate=2, capacity=2)
    assert await _drain(buckets, bucket, T0) == 2
    # Another ingress whose clock is 5 s behind: no negative refill, no crash.
    assert await buckets.take([bucket], T0 - 5000) == Decision(False, 500)
    assert (await buckets.take([bucket], T0 + 500)).allowed


@pytest.mark.integration
async def test_a_lower_capacity_applies_at_once_and_buckets_expire_once_full(
    buckets: TokenBuckets, redis_server: RedisServer
) -> None:
    bucket = _bucket(rate=100, capacity=100)
    assert (await buckets.take([bucket], T0)).allowed  # 99 left
    # The limit is lowered (a runtime config change): the bucket holds at most 3 now.
    lowered = Bucket(bucket.key, 1, 3)
    assert await _drain(buckets, lowered, T0) == 3
    client = redis.Redis.from_url(redis_server.url)
    try:
        ttl = client.pttl(bucket.key)
        # Time to fill up (3 s at 1/s) plus a second: then a missing key is a full bucket.
        assert 3000 < ttl <= 4000
    finally:
        client.close()


@pytest.mark.integration
async def test_the_script_is_loaded_again_after_a_script_flush(
    buckets: TokenBuckets, redis_server: RedisServer
) -> None:
    bucket = _bucket(rate=1, capacity=3)
    assert (await buckets.take([bucket], T0)).allowed
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.script_flush()
    finally:
        client.close()
    # EVALSHA answers NOSCRIPT; the script is loaded and run again, state intact.
    assert await _drain(buckets, bucket, T0) == 2


async def test_an_unreachable_redis_is_a_transient_error_within_the_timeout() -> None:
    store = TokenBuckets(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    try:
        with pytest.raises(TransientError):
            await store.take([_bucket(1, 1)], T0)
        # Nothing to check: no call at all.
        assert await store.take([], T0) == Decision(True)
    finally:
        await store.close()


# -- pure -------------------------------------------------------------------------------


def test_capacity_is_burst_seconds_of_the_rate_and_at_least_one_token() -> None:
    assert bucket_capacity(100, 1.0) == 100
    assert bucket_capacity(100, 2.5) == 250
    assert bucket_capacity(1, 0.2) == 1


def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one() -> None:
    assert retry_after_s(1) == 1
    assert retry_after_s(1000) == 1
    assert retry_after_s(1001) == 2
    assert retry_after_s(0) == 1


def _keys(**env: str) -> dict[str, int]:
    settings = load_settings({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", **env})
    registry = load_partners(None, {"acme": {"auth": "hmac", "secret": "s"}})
    keys = declared_keys(settings, registry)
    return {name: keys[name].default for name in keys if name.startswith("ratelimit.")}


def test_rate_limit_keys_take_their_defaults_from_settings() -> None:
    keys = _keys(
        SLUICE_RATE_LIMITS="webhook.stripe=200, webhook.stripe.source=50,partners.acme=5,"
        "internal.events=0,admin.dlq.replay=1"
    )
    expected_names = {ratelimit_key(route) for route in RATE_LIMITED_ROUTES}
    expected_names |= {ratelimit_source_key(route) for route in PUBLIC_ROUTES}
    expected_names.add(ratelimit_partner_key("acme"))
    assert set(keys) == expected_names
    assert keys[ratelimit_key("webhook.stripe")] == 200
    assert keys[ratelimit_source_key("webhook.stripe")] == 50
    assert keys[ratelimit_partner_key("acme")] == 5
    assert keys[ratelimit_key("admin.dlq.replay")] == 1
    assert keys[ratelimit_key("webhook.razorpay")] == 0  # unset: no limit
    assert all(value == 0 for value in _keys().values())


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("webhook.stripe", "not name=rate"),
        ("webhook.stripe=-1", "not name=rate"),
        ("webhook.stripe=1.5", "not name=rate"),
        ("webhook.stripe=1000001", "not name=rate"),
        ("webhook.stripe=1,webhook.stripe=2", "given twice"),
        ("webhook.nope=1", "unknown limit webhook.nope"),
        ("internal.events.source=1", "unknown limit internal.events.source"),
        ("partners.nobody=1", "unknown limit partners.nobody"),
    ],
)
def test_malformed_or_unknown_limits_stop_the_process_naming_the_setting(
    value: str, why: str
) -> None:
    with pytest.raises(ConfigError, match="SLUICE_RATE_LIMITS") as caught:
        _keys(SLUICE_RATE_LIMITS=value)
    assert why in str(caught.value)
