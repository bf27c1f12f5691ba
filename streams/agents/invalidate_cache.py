"""commands.cache.invalidate → Redis ``UNLINK`` (the keys, and what each pattern matches).

Each command (``sluice.cache.InvalidateCommand``, from ``POST
/internal/v1/cache/invalidate`` or from a projection after it committed) is read and
checked again (``streams.domain.cache``: a bare ``*`` from another producer is a dead
letter, never a ``SCAN``), then carried out by ``connectors.redis_cache``: its keys in
``UNLINK`` batches, each pattern by ``SCAN MATCH … COUNT`` and ``UNLINK`` batches. The
count is what ``UNLINK`` reported removed. When the command has a ``replyTo`` the agent
answers 200 ``{"invalidated": N}`` there.

Failures go through the ``EffectRunner`` like every effect: Redis unreachable (or
loading, read-only, timing out) is a ``TransientError`` → the delay topics, then
``dlq`` with an alert once the retries are used up. A command being retried is answered
only when a run completes (the caller has had its 202 by then; the reply still lands on
``replies`` under the task id), and N is then what *that* run removed: keys an earlier,
interrupted run already dropped are not counted again. Invalidation is idempotent, so a
retried or redelivered command is simply run again.

Without ``REDIS_URL`` there is no cache to invalidate: a command is answered 503 (when
someone waits) and dead-lettered with that reason (``PermanentError``), so the cause is
visible and the command can be replayed once Redis is configured. Projections never send
commands to such a worker: ``SLUICE_CACHE_KEYS`` without ``REDIS_URL`` stops it at
start-up (``streams.app.create_worker``).

Commands run one at a time per task id and concurrently across task ids (at most
:data:`MAX_CONCURRENT_INVALIDATIONS`), so one long pattern walk does not hold up the
projection's small key lists.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

from base.errors import InvalidEvent, PermanentError
from schemas.headers import TRACEPARENT, record_headers
from streams.agents.batched import agent_batches
from streams.agents.by_key import run_by_key
from streams.context import WorkerContext
from streams.domain.cache import INVALIDATE_TOPIC, Invalidation, invalidated_body
from streams.domain.replies import reply_record
from streams.records import Inbound, header_value

__all__ = ["AGENT", "MAX_CONCURRENT_INVALIDATIONS", "SOURCE", "CacheInvalidator", "register"]

log = logging.getLogger(__name__)

AGENT: Final = "invalidate_cache"
SOURCE: Final = "invalidate_cache"
MAX_CONCURRENT_INVALIDATIONS: Final = 8


def register(ctx: WorkerContext) -> None:
    invalidator = CacheInvalidator(ctx)
    ctx.runner.register(AGENT, invalidator.invalidate)

    async def invalidate_cache(stream: Any) -> None:
        async for events in agent_batches(ctx, stream):
            records = [Inbound.from_faust(event) for event in events]
            await run_by_key(ctx.runner, AGENT, records, limit=MAX_CONCURRENT_INVALIDATIONS)

    ctx.topology.app.agent(ctx.topology.reads(AGENT), name=AGENT)(invalidate_cache)


class CacheInvalidator:
    """The effect over the worker's Redis connector and outbox."""

    def __init__(self, ctx: WorkerContext) -> None:
        self._ctx = ctx

    async def invalidate(self, records: Sequence[Inbound]) -> None:
        """The effect of invalidate commands (fresh or retried)."""
        for record in records:
            await self._invalidate(record)

    async def _invalidate(self, record: Inbound) -> None:
        decoded = self._ctx.codec.decode(record.value, topic=INVALIDATE_TOPIC).record
        try:
            command = Invalidation.from_record(decoded)
        except InvalidEvent as exc:
            await self._reply(record, decoded, 400, {"error": "invalid", "detail": str(exc)})
            raise
        cache = self._ctx.cache
        if cache is None:
            await self._reply(
                record,
                decoded,
                503,
                {"error": "unavailable", "detail": "the worker has no REDIS_URL"},
            )
            raise PermanentError("REDIS_URL is not set: no cache to invalidate")
        removed = await cache.unlink(command.keys)
        for pattern in command.patterns:
            removed += await cache.unlink_matching(pattern)
        log.info(
            "cache invalidated",
            extra={
                "position": record.position,
                "task_id": command.task_id,
                "keys": len(command.keys),
                "patterns": len(command.patterns),
                "invalidated": removed,
                "correlation_id": command.correlation_id,
            },
        )
        await self._reply(record, decoded, 200, invalidated_body(removed))

    async def _reply(
        self, cause: Inbound, command: Mapping[str, Any], status: int, body: Mapping[str, Any]
    ) -> None:
        task_id, reply_to = command.get("taskId"), command.get("replyTo")
        if not task_id or not reply_to:
            return
        reply = reply_record(
            task_id=str(task_id),
            status=status,
            body=body,
            cause_event_id=str(command["eventId"]),
            correlation_id=str(command.get("correlationId") or ""),
            now_ms=int(self._ctx.clock.time() * 1000),
            source=SOURCE,
        )
        traceparent = header_value(cause.headers, TRACEPARENT)
        headers = record_headers(reply_to, reply, traceparent=traceparent)
        value = self._ctx.codec.encode(reply_to, reply)
        await self._ctx.outbox.send(reply_to, str(task_id).encode(), value, headers)
