"""webhooks.* → dedupe (RocksDB table) → normalise → billing.* (invalid → dlq), and the
webhook's outcome (its webhook_events status) → webhooks.outcomes."""

from __future__ import annotations

import logging
import time
from itertools import islice
from typing import Any, NamedTuple

from base.errors import InvalidEvent
from base.metrics import MetricName
from schemas.headers import TRACEPARENT, record_headers
from schemas.runtime_keys import DEDUPE_WINDOW
from streams.agents.acking import acked_events
from streams.context import WorkerContext
from streams.domain.dedupe import decide_all, dedupe_keys, expired_keys, remembered_entry
from streams.domain.dlq import REPLAY_HEADER
from streams.domain.normalise import normalise, webhook_outcome
from streams.records import Inbound, header_value
from streams.tables import partition_entries

__all__ = ["Purged", "handle", "purge_partition", "register"]

log = logging.getLogger(__name__)

AGENT = "normalise_webhooks"


class Purged(NamedTuple):
    purged: int
    #: Stored key the next slice starts after; None once the pass saw every entry.
    resume_after: bytes | None


def register(ctx: WorkerContext) -> None:
    app = ctx.topology.app
    # Each partition's expired ids are purged once per interval, while one of its events is
    # in hand (see purge_partition for why): a pass starts at most once per interval and
    # goes on one slice per event of that partition until it has seen every entry.
    last_purge: dict[int, float] = {}
    resume_after: dict[int, bytes] = {}

    async def normalise_webhooks(stream: Any) -> None:
        async for event in acked_events(stream):
            record = Inbound.from_faust(event)
            await handle(ctx, record)
            partition = record.partition
            now = time.monotonic()
            due = last_purge.setdefault(partition, now) + ctx.settings.dedupe_purge_every_s
            if partition in resume_after or now >= due:
                last_purge[partition] = now
                purged = purge_partition(ctx, partition, after=resume_after.pop(partition, None))
                if purged.resume_after is not None:
                    resume_after[partition] = purged.resume_after

    app.agent(ctx.topology.reads(AGENT), name=AGENT)(normalise_webhooks)


def _window_ms(ctx: WorkerContext) -> int:
    """The dedupe window now: the runtime config's ``dedupe.window`` (default
    ``SLUICE_DEDUPE_WINDOW``), read per record and per purge, so a change applies live."""
    return int(ctx.live(DEDUPE_WINDOW, ctx.settings.dedupe_window_s) * 1000)


async def handle(ctx: WorkerContext, record: Inbound) -> None:
    try:
        raw = ctx.codec.decode(record.value, topic=record.topic).record
    except InvalidEvent as exc:
        await ctx.runner.dead_letter(AGENT, record, reason=str(exc), error_class=type(exc).__name__)
        return
    seen = ctx.topology.dedupe_seen
    record_key = record.key.decode("utf-8", "replace") if record.key else None
    try:
        keys = dedupe_keys(raw["provider"], raw["providerEventId"], record_key)
    except ValueError as exc:  # schema-valid but without a usable id
        await ctx.runner.dead_letter(AGENT, record, reason=str(exc), error_class="InvalidEvent")
        return
    replay = bool(raw.get("replay")) or header_value(record.headers, REPLAY_HEADER) == "1"
    now_ms = int(ctx.clock.time() * 1000)
    window_ms = _window_ms(ctx)
    decision, remember = decide_all(seen, keys, now_ms, window_ms, replay, position=record.position)
    if not decision.process:
        # DEBUG: duplicates are routine (providers retry), and at INFO the log line cost
        # more CPU than processing the record.
        log.debug(
            "duplicate webhook skipped",
            extra={"position": record.position, "event_id": raw["eventId"], "keys": keys},
        )
        ctx.runner.metrics.inc(MetricName.EVENTS_DEDUPLICATED, agent=AGENT)
        ctx.runner.passed(AGENT)
        return

    result = normalise(raw)
    if result.outcome == "invalid":
        await ctx.runner.dead_letter(
            AGENT,
            record,
            reason=result.reason or "invalid provider payload",
            error_class="InvalidEvent",
        )
    traceparent = header_value(record.headers, TRACEPARENT)
    # The outcome carries the status to webhook_events (project_webhooks), so that agent
    # neither decodes the raw webhook nor normalises it again.
    outcome = webhook_outcome(raw, result, now_ms)
    for domain_event in (*result.events, outcome):
        value = ctx.codec.encode(domain_event.topic, domain_event.record)
        headers = record_headers(domain_event.topic, domain_event.record, traceparent=traceparent)
        await ctx.outbox.send(domain_event.topic, domain_event.key.encode(), value, headers)
    if decision.remember_ms is not None:
        for key in remember:
            seen[key] = remembered_entry(decision.remember_ms, record.position)
    if result.outcome != "invalid":
        ctx.runner.passed(AGENT)
        ctx.runner.metrics.inc(MetricName.EVENTS_PROCESSED, agent=AGENT)


def purge_partition(ctx: WorkerContext, partition: int, *, after: bytes | None = None) -> Purged:
    """Delete expired dedupe ids among the next ``SLUICE_DEDUPE_PURGE_SLICE`` entries
    (2,000 by default) of ``partition``, in key order, after the stored key ``after``.

    One slice at a time, so a purge holds the event loop for a bounded time and keeps one
    slice in memory, however many ids the partition remembers (a million ids are
    hundreds of thousands per partition). The agent calls it again, slice after slice,
    until ``Purged.resume_after`` is None.

    Must run while an event of ``partition`` is being processed: faust writes the
    tombstones to the changelog partition of the current event, which is where these
    keys live (the table is co-partitioned with the webhook topics).
    """
    table = ctx.topology.dedupe_seen
    limit = ctx.settings.dedupe_purge_slice
    scanned = list(islice(partition_entries(table, partition, after=after), limit))
    entries = ((key, value) for _, key, value in scanned if isinstance(value, int | list))
    now_ms = int(ctx.clock.time() * 1000)
    expired = expired_keys(entries, now_ms, _window_ms(ctx))
    for key in expired:
        del table[key]
    if expired:
        log.info("dedupe ids purged", extra={"partition": partition, "purged": len(expired)})
    resume_after = scanned[-1][0] if len(scanned) == limit else None
    return Purged(len(expired), resume_after)
