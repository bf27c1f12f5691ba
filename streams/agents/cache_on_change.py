"""Invalidate a projection's cache keys once its batch is committed (``SLUICE_CACHE_KEYS``).

A projection calls its :class:`ChangeInvalidator` with the snapshots of a batch right
after the Postgres transaction committed. It renders the projection's key templates
(``base.cache_keys``) for those snapshots and hands ``InvalidateCommand`` records
(``streams.domain.cache.projection_commands``, no ``replyTo``) to the worker's outbox;
the cache agent (``streams/agents/invalidate_cache.py``) carries them out, with its
retries when Redis is down. So a cache never serves a state older than Postgres for
longer than the pipeline's lag, and a projection never waits for, or fails on, Redis.

Ordering: the outbox delivers before the projection's input offsets commit (the commit
barrier), so a crash between the Postgres commit and the send redelivers the batch, which
commits nothing new and sends the commands again. Every snapshot of the batch counts, also
one Postgres found stale (a redelivery): dropping a key once more costs a cache miss.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from base.cache_keys import KeyTemplate, parse_cache_keys
from schemas.catalog import CACHE_INVALIDATE_SUBJECT
from schemas.headers import record_headers
from streams.context import WorkerContext
from streams.domain.cache import INVALIDATE_TOPIC, projection_commands, template_keys

__all__ = ["ChangeInvalidator", "change_invalidator"]

log = logging.getLogger(__name__)


class ChangeInvalidator:
    """Sends the invalidations of one projection's committed snapshots."""

    def __init__(
        self, ctx: WorkerContext, projection: str, templates: Sequence[KeyTemplate]
    ) -> None:
        self._ctx = ctx
        self._projection = projection
        self._templates = tuple(templates)
        self._version = ctx.codec.resolver.catalog.latest_version(CACHE_INVALIDATE_SUBJECT)

    async def __call__(self, snapshots: Sequence[Mapping[str, Any]]) -> None:
        keys = template_keys(self._templates, snapshots)
        if not keys:
            return
        records = projection_commands(
            keys,
            projection=self._projection,
            first_event_id=str(snapshots[0]["eventId"]),
            last_event_id=str(snapshots[-1]["eventId"]),
            correlation_id=str(snapshots[0].get("correlationId") or ""),
            now_ms=int(self._ctx.clock.time() * 1000),
            version=self._version,
        )
        for record in records:
            value = self._ctx.codec.encode(INVALIDATE_TOPIC, record)
            headers = record_headers(INVALIDATE_TOPIC, record)
            await self._ctx.outbox.send(
                INVALIDATE_TOPIC, str(record["taskId"]).encode(), value, headers
            )
        log.debug(
            "cache invalidation sent",
            extra={"projection": self._projection, "keys": len(keys), "commands": len(records)},
        )


def change_invalidator(ctx: WorkerContext, projection: str) -> ChangeInvalidator | None:
    """The invalidator of ``projection``; None when ``SLUICE_CACHE_KEYS`` names none."""
    templates = parse_cache_keys(ctx.settings.cache_keys).get(projection, ())
    return ChangeInvalidator(ctx, projection, templates) if templates else None
