"""Token buckets in Redis, shared by every ingress process: one Lua script, run with
``EVALSHA``, takes a token from one or more buckets atomically.

A bucket holds up to ``capacity`` tokens and gains ``rate`` tokens per second; a request
takes one. Its state is one hash per bucket (``t``: tokens left, ``ts``: when ``t`` was
computed, in milliseconds), so two ingress processes asking at once are serialised by
Redis and never both spend the last token. A bucket untouched for as long as it takes to
fill up expires (``PEXPIRE``): a missing bucket *is* a full one, so the keyspace only
holds the callers seen recently.

One call checks several buckets (a source address and a provider, say) all or nothing:
either every bucket has a token and each loses one, or none is touched and the answer is
how long until every one of them has a token again. A request refused by one limit
therefore costs nothing against the others.

The time is the caller's (``now_ms``), not Redis's ``TIME``: the ingress's injected
clock, so tests can freeze it. A process whose clock runs behind a bucket's ``ts`` gets no
refill (never a negative one) and does not move ``ts`` back; ingress hosts are expected to
keep NTP time, and a skew of δ grants at most ``rate`` x δ extra tokens.

Failures (unreachable, timing out, an error reply) are :class:`~base.errors.SluiceError`
(``connectors.redis_cache.translate_error``); the client never retries, and every call is
bounded by ``timeout_s`` in total. What to do then (let the request through) is the
caller's decision.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from base.errors import ConfigError, TransientError
from connectors.redis_cache import translate_error

__all__ = ["TAKE_SCRIPT", "Bucket", "Decision", "TokenBuckets"]

TAKE_SCRIPT: Final = """
-- KEYS: one hash per bucket. ARGV[1]: now (ms); then per bucket its rate (tokens per
-- second) and capacity (tokens). Returns {1, 0} when every bucket gave a token, else
-- {0, ms until every bucket has one} and nothing is changed.
local now = tonumber(ARGV[1])
local state = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i]) / 1000
  local capacity = tonumber(ARGV[2 * i + 1])
  local saved = redis.call('HMGET', key, 't', 'ts')
  local tokens, ts = tonumber(saved[1]), tonumber(saved[2])
  if tokens == nil or ts == nil then
    tokens, ts = capacity, now
  elseif now > ts then
    tokens, ts = math.min(capacity, tokens + (now - ts) * rate), now
  else
    tokens = math.min(capacity, tokens)
  end
  state[i] = {tokens, ts, math.ceil(capacity / rate)}
  if tokens < 1 then
    wait = math.max(wait, math.ceil((1 - tokens) / rate))
  end
end
if wait > 0 then
  return {0, wait}
end
for i, key in ipairs(KEYS) do
  local s = state[i]
  redis.call('HSET', key, 't', string.format('%.17g', s[1] - 1), 'ts', string.format('%.17g', s[2]))
  redis.call('PEXPIRE', key, s[3] + 1000)
end
return {1, 0}
"""


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket: its Redis key, its refill ``rate`` (tokens per second, > 0) and its
    ``capacity`` (tokens, ≥ 1)."""

    key: str
    rate: float
    capacity: float


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a token was taken; if not, milliseconds until one can be."""

    allowed: bool
    wait_ms: int = 0


class TokenBuckets:
    """The buckets in one Redis database (``REDIS_URL``); connects on first use."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        """:raises ConfigError: ``url`` is not a Redis URL (nothing connects here)."""
        try:
            self._client = aioredis.Redis.from_url(
                url,
                socket_connect_timeout=timeout_s,
                socket_timeout=timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as exc:
            raise ConfigError(f"malformed setting REDIS_URL: {exc}") from None
        self._timeout_s = timeout_s
        self._take = self._client.register_script(TAKE_SCRIPT)

    async def take(self, buckets: Sequence[Bucket], now_ms: int) -> Decision:
        """Take one token from every bucket in ``buckets``, or from none (see the module
        docstring). ``EVALSHA``; the script is loaded once per server when missing.

        :raises TransientError: Redis is unreachable, or did not answer within the timeout.
        :raises PermanentError: Redis refused the script.
        """
        if not buckets:
            return Decision(True)
        args: list[str | int] = [now_ms]
        for bucket in buckets:
            args += [repr(float(bucket.rate)), repr(float(bucket.capacity))]
        try:
            # The socket timeouts bound each read; this bounds the whole call (connect,
            # EVALSHA, a SCRIPT LOAD after NOSCRIPT and the retried EVALSHA).
            async with asyncio.timeout(self._timeout_s):
                reply = await self._take(keys=[bucket.key for bucket in buckets], args=args)
        except TimeoutError:
            raise TransientError(f"redis EVALSHA: no answer within {self._timeout_s:g} s") from None
        except (redis_errors.RedisError, OSError) as exc:
            raise translate_error(exc, "EVALSHA") from exc
        allowed, wait_ms = int(reply[0]), int(reply[1])
        return Decision(allowed == 1, wait_ms)

    async def close(self) -> None:
        """Close the connections. Idempotent."""
        await self._client.aclose()
