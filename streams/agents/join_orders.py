"""The orders⇄payments join: orders, payment commands, set-up outcomes and payment events
(all keyed by order id, co-partitioned) → order lifecycle, Stripe calls, stock releases,
replies.

The decisions are ``streams.domain.orders``; this agent loads an order's state from the
``orders_state`` table and its early payments from ``payments_waiting``, calls
:func:`~streams.domain.orders.step`, sends what it returns, and stores the new state.
Records are sent before the state is stored, but not necessarily made durable first: the
outbox delivers them by the next offset commit, while the tables' changelog goes through
faust's producer, so a crash can leave the new state stored and the records lost. The
input's offset is not committed then, so it is read again; the order keeps the emits of
its inputs until their offsets are committed (``Order.recent``) and a repeat sends them
again, the same records. Waiting for each event's delivery instead would cost most of
the join's throughput (it handles one event at a time).

``join.ticks`` carries an empty record per partition every ``SLUICE_ORPHAN_CHECK_EVERY``
(a timer on every worker writes them): a tick sweeps that partition's held payments and
reports the ones whose order did not come within ``SLUICE_ORPHAN_HOLD``. The sweep must
run inside the partition's own event, since faust writes a table change to the current
event's changelog partition.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from base.errors import InvalidEvent
from base.metrics import MetricName
from schemas.catalog import topic_spec
from schemas.headers import TRACEPARENT, record_headers
from streams.agents.acking import acked_events
from streams.context import WorkerContext
from streams.domain.orders import Committed, Emit, Held, Order, Position, step, sweep_orphans
from streams.records import Inbound, header_value
from streams.tables import partition_items
from streams.transport import SluiceApp

__all__ = ["AGENT", "handle", "register"]

log = logging.getLogger(__name__)

AGENT = "join_orders"
TICKS = "join.ticks"


def register(ctx: WorkerContext) -> None:
    app = ctx.topology.app

    async def join_orders(stream: Any) -> None:
        async for event in acked_events(stream):
            await handle(ctx, Inbound.from_faust(event))

    app.agent(ctx.topology.reads(AGENT), name=AGENT)(join_orders)

    async def tick_join_partitions() -> None:
        ticks = ctx.topology.topic(TICKS)
        for partition in range(topic_spec(TICKS).partitions):
            await ticks.send(key=b"tick", value=b"", partition=partition)

    app.timer(ctx.settings.orphan_check_every_s, name="join_orders.ticks")(tick_join_partitions)


async def handle(ctx: WorkerContext, record: Inbound) -> None:
    if record.topic == TICKS:
        await sweep(ctx, record.partition, position=_position(record))
        return
    try:
        decoded = ctx.codec.decode(record.value, topic=record.topic).record
        order_id = _order_id(record.topic, decoded)
    except InvalidEvent as exc:
        await ctx.runner.dead_letter(AGENT, record, reason=str(exc), error_class=type(exc).__name__)
        return
    ctx.runner.passed(AGENT)
    ctx.runner.metrics.inc(MetricName.EVENTS_PROCESSED, agent=AGENT)
    if order_id is None:
        return  # a payment that names no order: projected as a payment, nothing to join
    orders, waiting = ctx.topology.orders_state, ctx.topology.payments_waiting
    stored_order, stored_held = orders.get(order_id), waiting.get(order_id)
    order = Order.from_json(stored_order) if stored_order else None
    held = Held.from_json(stored_held) if stored_held else None
    now_ms = int(ctx.clock.time() * 1000)
    result = step(
        order,
        held,
        record.topic,
        decoded,
        now_ms,
        position=_position(record),
        committed=_committed(ctx),
    )
    await _send(ctx, result.emits, record)
    if result.order is not None and result.order != order:
        orders[order_id] = result.order.to_json()
    if result.held != held:
        if result.held is None:
            waiting.pop(order_id, None)
        else:
            waiting[order_id] = result.held.to_json()


async def sweep(ctx: WorkerContext, partition: int, *, position: Position | None = None) -> int:
    """Report this partition's orphaned payments; returns how many lists changed.

    ``position`` is the tick's: a tick read again re-sends what it reported."""
    waiting = ctx.topology.payments_waiting
    entries = {
        key: Held.from_json(value)
        for key, value in partition_items(waiting, partition).items()
        if isinstance(value, str)
    }
    now_ms = int(ctx.clock.time() * 1000)
    changes = sweep_orphans(
        entries,
        now_ms,
        hold_ms=ctx.settings.orphan_hold_s * 1000,
        keep_ms=max(ctx.settings.dedupe_window_s, ctx.settings.orphan_hold_s) * 1000,
        position=position,
    )
    for order_id, held, emits in changes:
        await _send(ctx, emits, None)
        if held is None:
            waiting.pop(order_id, None)
        else:
            waiting[order_id] = held.to_json()
        if emits:
            log.warning(
                "payment orphaned: no order after the hold",
                extra={"order_id": order_id, "payments": len(emits)},
            )
    return len(changes)


async def _send(ctx: WorkerContext, emits: tuple[Emit, ...], cause: Inbound | None) -> None:
    traceparent = header_value(cause.headers, TRACEPARENT) if cause else None
    for emit in emits:
        headers = record_headers(emit.topic, emit.record, traceparent=traceparent)
        value = ctx.codec.encode(emit.topic, emit.record)
        await ctx.outbox.send(emit.topic, emit.key.encode(), value, headers)


def _committed(ctx: WorkerContext) -> Committed | None:
    app = ctx.topology.app
    return app.committed_offset if isinstance(app, SluiceApp) else None


def _position(record: Inbound) -> Position:
    return (record.topic, record.partition, record.offset)


def _order_id(topic: str, record: Mapping[str, Any]) -> str | None:
    if topic == "orders":
        data = record.get("data")
        value = data.get("orderId") if isinstance(data, Mapping) else None
    else:
        value = record.get("orderId")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"{topic}: orderId must be a non-empty string", field="orderId")
    return value
