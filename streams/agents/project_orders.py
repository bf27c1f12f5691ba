"""orders.lifecycle → Postgres ``orders`` and Elasticsearch ``orders`` (the order snapshots).

Batched: every lifecycle record except ``order.payment_orphaned`` (revision 0, about a
payment whose order is unknown, so there is no order row to write) carries the order's
whole state and its revision. Per order only the newest revision of the batch is
written, first to Postgres (one transaction, ``PostgresProjection.write_order_snapshots``)
then to Elasticsearch (one ``_bulk`` with the revision as the external version).

Both writes are idempotent by revision: a row or document is replaced only by a higher
revision. So a retry after a partial failure (Postgres committed, Elasticsearch
unreachable) is harmless: Postgres ignores the revisions it already has, and
Elasticsearch gets the documents it missed; a replay of the topic changes nothing.
Failures propagate as ``TransientError``/``PermanentError`` and go through the shared
retry mechanism (transient → ``retry.<delay>``, else ``dlq``). Without
``ELASTICSEARCH_URL`` only Postgres is written.

Cache: when ``SLUICE_CACHE_KEYS`` has templates for ``orders``, the keys of the batch's
orders are invalidated right after the Postgres commit, before Elasticsearch is written
(``streams/agents/cache_on_change.py``): commands on ``commands.cache.invalidate`` that
the cache agent carries out.

The Elasticsearch document leaves out the PaymentIntent's client secret (and the items):
search is for support and analytics, the secret is served from Postgres only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from connectors.elasticsearch import ORDERS_INDEX, SearchProjection, VersionedDoc
from connectors.postgres import PostgresProjection
from schemas.codec import Codec
from streams.agents.batched import register_batched
from streams.agents.cache_on_change import change_invalidator
from streams.context import WorkerContext
from streams.domain.projection import plan_order_snapshots
from streams.records import Inbound

__all__ = [
    "AGENT",
    "ORPHANED",
    "Projected",
    "latest_snapshots",
    "project_orders",
    "register",
    "search_doc",
]

log = logging.getLogger(__name__)

AGENT: Final = "project_orders"
ORPHANED: Final = "order.payment_orphaned"


@dataclass(frozen=True, slots=True)
class Projected:
    """What one batch did: snapshots kept, Postgres rows written, and Elasticsearch
    documents written / found stale (None when search is off)."""

    snapshots: int
    rows_written: int
    docs_written: int | None
    docs_stale: int | None


AfterCommit = Callable[[Sequence[Mapping[str, Any]]], Awaitable[None]]
"""Called with the batch's newest snapshots once Postgres committed them."""


def register(ctx: WorkerContext) -> None:
    invalidate = change_invalidator(ctx, "orders")

    async def apply(records: Sequence[Inbound]) -> None:
        projection = await ctx.connectors()
        search = await ctx.search()
        await project_orders(
            records,
            codec=ctx.codec,
            projection=projection,
            search=search,
            after_commit=invalidate,
        )

    register_batched(ctx, AGENT, apply)


async def project_orders(
    records: Sequence[Inbound],
    *,
    codec: Codec,
    projection: PostgresProjection,
    search: SearchProjection | None,
    after_commit: AfterCommit | None = None,
) -> Projected:
    """The effect: decode, keep the newest snapshot per order, write Postgres, call
    ``after_commit`` (the cache invalidation), then Elasticsearch (skipped when ``search``
    is None).

    :raises InvalidEvent: a record does not decode (the runner dead-letters it alone).
    :raises ProjectionInputError: a snapshot's shape cannot be projected (a
        ``PermanentError``; nothing was written).
    :raises TransientError: Postgres or Elasticsearch unavailable.
    :raises PermanentError: a store refused the data.
    """
    events = [codec.decode(record.value, topic=record.topic).record for record in records]
    snapshots = latest_snapshots(events)
    if not snapshots:
        return Projected(0, 0, None if search is None else 0, None if search is None else 0)
    # All snapshots go to Postgres (it keeps the newest per order itself and records
    # every event id in processed_events); only the newest go to Elasticsearch.
    rows = await projection.write_order_snapshots(
        plan_order_snapshots([event for event in events if event.get("eventType") != ORPHANED]),
        consumer=AGENT,
    )
    if after_commit is not None:
        await after_commit(snapshots)
    if search is None:
        return Projected(len(snapshots), rows, None, None)
    docs = [
        VersionedDoc(
            id=str(event["orderId"]), version=int(event["revision"]), doc=search_doc(event)
        )
        for event in snapshots
    ]
    outcome = await search.write_versioned(ORDERS_INDEX, docs)
    if outcome.stale:
        log.debug(
            "older order revisions ignored by elasticsearch",
            extra={"stale": outcome.stale, "written": outcome.written},
        )
    return Projected(len(snapshots), rows, outcome.written, outcome.stale)


def latest_snapshots(events: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The newest snapshot per order among ``events``, sorted by order id.

    ``order.payment_orphaned`` records are left out (they are no order's snapshot).
    Ties on the revision (which the join never produces) go to the larger event id, the
    same rule ``plan_order_snapshots`` uses, so both stores pick the same record.
    """
    newest: dict[str, Mapping[str, Any]] = {}
    for event in events:
        if event.get("eventType") == ORPHANED:
            continue
        order_id = str(event["orderId"])
        kept = newest.get(order_id)
        if kept is None or _order_key(event) > _order_key(kept):
            newest[order_id] = event
    return [newest[order_id] for order_id in sorted(newest)]


def search_doc(event: Mapping[str, Any]) -> dict[str, Any]:
    """The Elasticsearch ``orders`` document of a snapshot (no client secret)."""
    return {
        "orderId": event["orderId"],
        "userId": event.get("userId"),
        "status": event.get("status"),
        "amountMinor": event.get("amountMinor"),
        "currency": event.get("currency"),
        "refundedMinor": event.get("refundedMinor", 0),
        "paymentProvider": event.get("paymentProvider"),
        "paymentIntentId": event.get("paymentIntentId"),
        "providerIds": list(event.get("providerIds") or ()),
        "revision": event["revision"],
        "createdAt": event.get("createdAt"),
        "updatedAt": event.get("occurredAt"),
        "lastEventType": event.get("eventType"),
    }


def _order_key(event: Mapping[str, Any]) -> tuple[int, str]:
    revision = event.get("revision")
    return (revision if type(revision) is int else -1, str(event.get("eventId") or ""))
