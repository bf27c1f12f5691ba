"""The cache Sluice invalidates: keys dropped from Redis with ``UNLINK`` (DESIGN §3).

:class:`RedisCache` wraps ``redis.asyncio``. Exact keys go in ``UNLINK`` batches of
:data:`UNLINK_BATCH`; a pattern is walked with ``SCAN MATCH <pattern> COUNT``
:data:`SCAN_COUNT` and what each step finds is unlinked in the same batches, so neither
a long key list nor a large keyspace becomes one long blocking command. ``KEYS`` is
never used. ``UNLINK`` frees the values in a background thread of Redis and answers how
many of the keys existed, which is what the counts add up: a key ``SCAN`` returns twice
(it may, while the table is rehashed) counts once, because the second ``UNLINK`` finds
it gone.

Failures are translated for the worker's retry topics: an unreachable, loading, read-only
or timing-out Redis (and a refused login, which an operator fixes without the record
changing) is :class:`~base.errors.TransientError`; any other error reply is
:class:`~base.errors.PermanentError`. The client itself never retries (``Retry`` with no
attempts): the caller's retry topics do, without holding up the agent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from base.errors import ConfigError, PermanentError, SluiceError, TransientError
from base.sinks import Sink, sink_call

__all__ = ["SCAN_COUNT", "UNLINK_BATCH", "RedisCache", "translate_error"]

log = logging.getLogger(__name__)

SCAN_COUNT: Final = 1000
"""The ``COUNT`` hint of each ``SCAN`` step (keys Redis looks at per call)."""
UNLINK_BATCH: Final = 500
"""Keys per ``UNLINK`` command."""
TIMEOUT_S: Final = 5.0
"""Connect and per-command socket timeout."""

# Error replies that pass: a replica promoted, a cluster healing, memory freed.
_TRANSIENT_REPLIES = (
    redis_errors.ReadOnlyError,
    redis_errors.MasterDownError,
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
    redis_errors.OutOfMemoryError,
)


def translate_error(exc: BaseException, action: str) -> SluiceError:
    """The Sluice error for a ``redis`` (or socket) failure during ``action``."""
    if isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)):
        return TransientError(f"redis {action}: unavailable: {exc}")
    if isinstance(exc, _TRANSIENT_REPLIES):
        return TransientError(f"redis {action}: {exc}")
    return PermanentError(f"redis {action}: refused: {exc}")


class RedisCache:
    """Drops keys from one Redis database (``REDIS_URL``); connects on first use."""

    def __init__(
        self,
        url: str,
        *,
        scan_count: int = SCAN_COUNT,
        unlink_batch: int = UNLINK_BATCH,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
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
        self._scan_count = scan_count
        self._batch = unlink_batch

    @sink_call(Sink.REDIS)
    async def unlink(self, keys: Sequence[str | bytes]) -> int:
        """``UNLINK`` ``keys`` in batches; how many existed.

        :raises TransientError: / :raises PermanentError: see the module docstring.
        """
        removed = 0
        for start in range(0, len(keys), self._batch):
            removed += await self._unlink(keys[start : start + self._batch])
        return removed

    @sink_call(Sink.REDIS)
    async def unlink_matching(self, pattern: str) -> int:
        """Walk the keyspace with ``SCAN MATCH pattern`` and ``UNLINK`` what matches, in
        batches as it goes; how many keys were removed.

        The caller checks the pattern (``schemas.cache.check_pattern``): this method
        drops whatever it matches.
        """
        removed = 0
        found: list[str | bytes] = []
        cursor = 0
        while True:
            try:
                cursor, keys = await self._client.scan(
                    cursor, match=pattern, count=self._scan_count
                )
            except (redis_errors.RedisError, OSError) as exc:
                raise translate_error(exc, "SCAN") from exc
            found.extend(keys)
            while len(found) >= self._batch:
                removed += await self._unlink(found[: self._batch])
                del found[: self._batch]
            if cursor == 0:
                break
        if found:
            removed += await self._unlink(found)
        return removed

    async def _unlink(self, keys: Sequence[str | bytes]) -> int:
        if not keys:
            return 0
        try:
            return int(await self._client.unlink(*keys))
        except (redis_errors.RedisError, OSError) as exc:
            raise translate_error(exc, "UNLINK") from exc

    async def close(self) -> None:
        """Close the connections. Idempotent."""
        await self._client.aclose()
