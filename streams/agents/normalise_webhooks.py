"""webhooks.* → dedupe (RocksDB table) → normalise → billing.* (invalid → dlq)."""

from __future__ import annotations

import logging
import time
from typing import Any

from sluice.errors import InvalidEvent
from streams.context import WorkerContext
from streams.domain.dedupe import Remembered, decide, dedupe_key, expired_keys, remembered_entry
from streams.domain.dlq import REPLAY_HEADER
from streams.domain.normalise import normalise
from streams.effects import dead_letter_now
from streams.records import Inbound, header_value
from streams.tables import partition_items

__all__ = ["handle", "purge_partition", "register"]

log = logging.getLogger(__name__)

AGENT = "normalise_webhooks"


def register(ctx: WorkerContext) -> None:
    app = ctx.topology.app
    # Each partition's expired ids are purged at most once per interval, while one of its
    # events is in hand (see purge_partition for why).
    last_purge: dict[int, float] = {}

    async def normalise_webhooks(stream: Any) -> None:
        async for event in stream.events():
            record = Inbound.from_faust(event)
            await handle(ctx, record)
            now = time.monotonic()
            due = last_purge.setdefault(record.partition, now) + ctx.settings.dedupe_purge_every_s
            if now >= due:
                last_purge[record.partition] = now
                purge_partition(ctx, record.partition)

    app.agent(ctx.topology.reads(AGENT), name=AGENT)(normalise_webhooks)


async def handle(ctx: WorkerContext, record: Inbound) -> None:
    try:
        raw = ctx.codec.decode(record.value, topic=record.topic).record
    except InvalidEvent as exc:
        await dead_letter_now(
            ctx.outbox, ctx.codec, record, reason=str(exc), error_class=type(exc).__name__
        )
        return
    seen = ctx.topology.dedupe_seen
    try:
        key = dedupe_key(raw["provider"], raw["providerEventId"])
    except ValueError as exc:  # schema-valid but without a usable id
        await dead_letter_now(
            ctx.outbox, ctx.codec, record, reason=str(exc), error_class="InvalidEvent"
        )
        return
    replay = bool(raw.get("replay")) or header_value(record.headers, REPLAY_HEADER) == "1"
    now_ms = int(ctx.clock.time() * 1000)
    window_ms = int(ctx.settings.dedupe_window_s * 1000)
    decision = decide(seen, key, now_ms, window_ms, replay, position=record.position)
    if not decision.process:
        # DEBUG: duplicates are routine (providers retry), and at INFO the log line cost
        # more CPU than processing the record.
        log.debug(
            "duplicate webhook skipped",
            extra={"position": record.position, "event_id": raw["eventId"], "key": key},
        )
        return

    result = normalise(raw)
    if result.outcome == "invalid":
        await dead_letter_now(
            ctx.outbox,
            ctx.codec,
            record,
            reason=result.reason or "invalid provider payload",
            error_class="InvalidEvent",
        )
    for domain_event in result.events:
        value = ctx.codec.encode(domain_event.topic, domain_event.record)
        headers = [
            ("event-type", domain_event.topic.encode()),
            ("event-id", domain_event.record["eventId"].encode()),
            ("correlation-id", domain_event.record["correlationId"].encode()),
            ("content-type", b"application/vnd.sluice.billing-event+avro"),
        ]
        traceparent = header_value(record.headers, "traceparent")
        if traceparent:
            headers.append(("traceparent", traceparent.encode()))
        await ctx.outbox.send(domain_event.topic, domain_event.key.encode(), value, headers)
    if decision.remember_ms is not None:
        seen[key] = remembered_entry(decision.remember_ms, record.position)


def purge_partition(ctx: WorkerContext, partition: int) -> int:
    """Delete this partition's dedupe ids older than the window; returns how many.

    Must run while an event of ``partition`` is being processed: faust writes the
    tombstones to the changelog partition of the current event, which is where these
    keys live (the table is co-partitioned with the webhook topics).
    """
    table = ctx.topology.dedupe_seen
    entries = _partition_entries(table, partition)
    now_ms = int(ctx.clock.time() * 1000)
    expired = expired_keys(entries, now_ms, int(ctx.settings.dedupe_window_s * 1000))
    for key in expired:
        del table[key]
    if expired:
        log.info("dedupe ids purged", extra={"partition": partition, "purged": len(expired)})
    return len(expired)


def _partition_entries(table: Any, partition: int) -> dict[str, Remembered]:
    return {
        key: value
        for key, value in partition_items(table, partition).items()
        if isinstance(value, int | list)
    }
