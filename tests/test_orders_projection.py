"""The orders projection: ``PostgresProjection.apply_order_snapshots`` / ``fetch_order``
against the session's real PostgreSQL, and the ``project_orders`` effect writing both
Postgres and the session's real Elasticsearch.

The module works in its own migrated database (``migrated_db``) and its own index prefix;
tests use fresh order ids, so they never see each other's rows.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import psycopg
import pytest

from base.clock import SystemClock
from base.errors import PermanentError
from base.settings import Settings
from connectors.elasticsearch import ORDERS_INDEX, SearchProjection
from connectors.postgres import PostgresProjection
from devstack import ElasticsearchServer
from schemas.codec import make_codec
from streams.agents.project_orders import AGENT, latest_snapshots, project_orders, search_doc
from streams.context import WorkerContext
from streams.domain.ids import derived_event_id
from streams.domain.projection import ORDER_STATUSES, ProjectionInputError, plan_order_snapshots
from streams.records import Inbound

integration = pytest.mark.integration

CODEC = make_codec(None)
CONSUMER = "test-orders"
T0 = 1_735_689_600_000  # ms since the epoch
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def ms(value: int) -> dt.datetime:
    return EPOCH + dt.timedelta(milliseconds=value)


def new_order_id() -> str:
    return f"ord_{uuid.uuid4().hex[:12]}"


def snapshot(
    order_id: str,
    revision: int,
    *,
    event_type: str = "order.updated",
    status: str | None = "PENDING_PAYMENT",
    **fields: Any,
) -> dict[str, Any]:
    """A decoded OrderLifecycleEvent as the join emits it; ``revision`` seconds after T0."""
    record: dict[str, Any] = {
        "eventId": derived_event_id(f"{order_id}:{revision}", event_type),
        "eventType": event_type,
        "version": 1,
        "occurredAt": T0 + revision * 1000,
        "correlationId": "corr-test",
        "source": "streams.join_orders",
        "orderId": order_id,
        "revision": revision,
        "status": status,
        "previousStatus": None,
        "userId": "usr_1",
        "amountMinor": 2500,
        "currency": "eur",
        "refundedMinor": 0,
        "paymentProvider": "stripe",
        "paymentIntentId": None,
        "clientSecret": None,
        "providerIds": [],
        "items": [{"productId": "sku_1", "quantity": 2}],
        "paymentId": None,
        "paymentAmountMinor": None,
        "paymentCurrency": None,
        "reason": None,
        "causeEventId": f"cause-{revision}",
        "createdAt": T0,
    }
    record.update(fields)
    CODEC.encode("orders.lifecycle", record)  # a valid record of the topic
    return record


def orphaned(order_id: str) -> dict[str, Any]:
    return snapshot(
        order_id,
        0,
        event_type="order.payment_orphaned",
        status=None,
        userId=None,
        amountMinor=None,
        currency=None,
        paymentProvider="stripe",
        providerIds=["pi_orphan"],
        items=[],
        paymentId="pi_orphan",
        reason="no order after 3600 s",
        createdAt=None,
    )


def inbound(record: dict[str, Any], offset: int) -> Inbound:
    return Inbound(
        topic="orders.lifecycle",
        partition=0,
        offset=offset,
        key=str(record["orderId"]).encode(),
        value=CODEC.encode("orders.lifecycle", record),
        headers=(),
    )


@pytest.fixture
async def projection(migrated_db: str) -> AsyncIterator[PostgresProjection]:
    async with PostgresProjection(migrated_db, timeout=5.0) as started:
        yield started


async def apply(projection: PostgresProjection, *events: dict[str, Any]) -> int:
    return await projection.write_order_snapshots(plan_order_snapshots(events), consumer=CONSUMER)


# -- schema ----------------------------------------------------------------------------


@integration
def test_status_check_lists_exactly_the_order_vocabulary(migrated_db: str) -> None:
    with psycopg.connect(migrated_db) as conn:
        row = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s",
            ("orders_status_check",),
        ).fetchone()
    assert row is not None
    assert set(re.findall(r"'([A-Z_]+)'", str(row[0]))) == set(ORDER_STATUSES)


# -- Postgres --------------------------------------------------------------------------


@integration
async def test_snapshot_inserts_the_order_row(projection: PostgresProjection) -> None:
    order_id = new_order_id()
    first = snapshot(
        order_id,
        1,
        event_type="order.pending_payment",
        paymentIntentId="pi_1",
        clientSecret="pi_1_secret_abc",
        providerIds=["pi_1"],
        reason="created",
    )
    assert await apply(projection, first) == 1
    row = await projection.fetch_order(order_id)
    assert row is not None
    assert row.order_id == order_id
    assert (row.user_id, row.amount_minor, row.currency) == ("usr_1", 2500, "eur")
    assert row.status == "PENDING_PAYMENT"
    assert row.refunded_minor == 0
    assert (row.payment_provider, row.payment_intent_id) == ("stripe", "pi_1")
    assert row.client_secret == "pi_1_secret_abc"
    assert "pi_1_secret_abc" not in repr(row)
    assert row.items == [{"productId": "sku_1", "quantity": 2}]
    assert row.provider_ids == ["pi_1"]
    assert row.revision == 1
    assert (row.last_event_id, row.last_event_type) == (first["eventId"], "order.pending_payment")
    assert row.last_reason == "created"
    assert row.created_at == ms(T0)
    assert row.updated_at == ms(T0 + 1000)
    assert await projection.fetch_order(new_order_id()) is None


@integration
async def test_higher_revision_replaces_the_row(projection: PostgresProjection) -> None:
    order_id = new_order_id()
    await apply(projection, snapshot(order_id, 1, event_type="order.pending_payment"))
    paid = snapshot(
        order_id,
        2,
        event_type="order.paid",
        status="PAID",
        paymentIntentId="pi_2",
        providerIds=["pi_2", "ch_2"],
    )
    assert await apply(projection, paid) == 1
    row = await projection.fetch_order(order_id)
    assert row is not None
    assert (row.status, row.revision, row.last_event_type) == ("PAID", 2, "order.paid")
    assert row.provider_ids == ["pi_2", "ch_2"]
    assert row.created_at == ms(T0)
    assert row.updated_at == ms(T0 + 2000)


@integration
async def test_lower_or_equal_revision_is_ignored(projection: PostgresProjection) -> None:
    order_id = new_order_id()
    old = snapshot(order_id, 1, event_type="order.pending_payment")
    new = snapshot(order_id, 2, event_type="order.paid", status="PAID")
    assert await apply(projection, new) == 1
    # Late: an older revision arrives after the newer one.
    assert await apply(projection, old) == 0
    # Replay: the same revision again (even with different content) changes nothing.
    assert await apply(projection, new) == 0
    assert await apply(projection, {**new, "status": "CANCELLED", "eventId": "other"}) == 0
    row = await projection.fetch_order(order_id)
    assert row is not None
    assert (row.status, row.revision, row.last_event_id) == ("PAID", 2, new["eventId"])


@integration
async def test_batch_with_several_revisions_keeps_the_newest(
    projection: PostgresProjection,
) -> None:
    order_id, other_id = new_order_id(), new_order_id()
    revisions = [
        snapshot(order_id, 3, event_type="order.refunded", status="PARTIALLY_REFUNDED"),
        snapshot(order_id, 1, event_type="order.pending_payment"),
        snapshot(order_id, 2, event_type="order.paid", status="PAID"),
        snapshot(other_id, 1, event_type="order.pending_payment"),
    ]
    assert await apply(projection, *revisions) == 2
    row = await projection.fetch_order(order_id)
    assert row is not None
    assert (row.status, row.revision) == ("PARTIALLY_REFUNDED", 3)
    other = await projection.fetch_order(other_id)
    assert other is not None
    assert other.revision == 1


@integration
async def test_every_event_is_recorded_in_processed_events(
    projection: PostgresProjection,
) -> None:
    order_id = new_order_id()
    events = [snapshot(order_id, 1), snapshot(order_id, 2)]
    before = await projection.count("processed_events")
    await apply(projection, *events)
    for event in events:  # the superseded one too: it was handled
        assert await projection.is_processed(CONSUMER, event["eventId"])
    assert await projection.count("processed_events") == before + 2
    await apply(projection, *events)  # a replay records nothing new
    assert await projection.count("processed_events") == before + 2
    assert not await projection.is_processed("another-consumer", events[0]["eventId"])


@integration
async def test_bad_snapshots_are_refused_before_anything_is_written(
    projection: PostgresProjection,
) -> None:
    order_id = new_order_id()
    good = snapshot(order_id, 1)
    for bad, field in [
        ({**snapshot(new_order_id(), 1), "status": "SHIPPED"}, "status"),
        (orphaned(new_order_id()), "status"),
        ({**snapshot(new_order_id(), 1), "revision": 0}, "revision"),
        ({**snapshot(new_order_id(), 1), "items": [{"productId": "x"}]}, "items"),
    ]:
        with pytest.raises(ProjectionInputError) as caught:
            await apply(projection, good, bad)
        assert caught.value.field == field
        assert caught.value.event_id == bad["eventId"]
    assert await projection.fetch_order(order_id) is None


@integration
async def test_empty_batch_writes_nothing(projection: PostgresProjection) -> None:
    assert await apply(projection) == 0


# -- the effect (Postgres and Elasticsearch) ---------------------------------------------


def test_latest_snapshots_skips_orphans_and_keeps_the_newest() -> None:
    a, b = "ord_a", "ord_b"
    events = [snapshot(b, 1), snapshot(a, 2), orphaned(a), snapshot(a, 1), snapshot(b, 4)]
    assert [(e["orderId"], e["revision"]) for e in latest_snapshots(events)] == [
        (a, 2),
        (b, 4),
    ]


def test_search_doc_has_no_client_secret() -> None:
    event = snapshot("ord_a", 2, clientSecret="pi_1_secret_abc", paymentIntentId="pi_1")
    doc = search_doc(event)
    assert "pi_1_secret_abc" not in repr(doc)
    assert doc == {
        "orderId": "ord_a",
        "userId": "usr_1",
        "status": "PENDING_PAYMENT",
        "amountMinor": 2500,
        "currency": "eur",
        "refundedMinor": 0,
        "paymentProvider": "stripe",
        "paymentIntentId": "pi_1",
        "providerIds": [],
        "revision": 2,
        "createdAt": T0,
        "updatedAt": T0 + 2000,
        "lastEventType": "order.updated",
    }


@pytest.fixture(scope="module")
def index_prefix() -> str:
    return f"t-orders-{uuid.uuid4().hex[:8]}-"


@pytest.fixture
async def search(
    elasticsearch_server: ElasticsearchServer, index_prefix: str
) -> AsyncIterator[SearchProjection]:
    async with SearchProjection(elasticsearch_server.url, index_prefix=index_prefix) as started:
        yield started


@integration
async def test_effect_writes_postgres_and_elasticsearch_by_revision(
    projection: PostgresProjection, search: SearchProjection
) -> None:
    order_id, orphan_id = new_order_id(), new_order_id()
    batch = [
        snapshot(order_id, 1, event_type="order.pending_payment"),
        snapshot(order_id, 2, clientSecret="pi_9_secret_x", paymentIntentId="pi_9"),
        orphaned(orphan_id),
    ]
    records = [inbound(event, offset) for offset, event in enumerate(batch)]
    done = await project_orders(records, codec=CODEC, projection=projection, search=search)
    assert (done.snapshots, done.rows_written, done.docs_written, done.docs_stale) == (1, 1, 1, 0)

    row = await projection.fetch_order(order_id)
    assert row is not None
    assert (row.revision, row.payment_intent_id) == (2, "pi_9")
    assert await projection.fetch_order(orphan_id) is None
    doc = await search.get(ORDERS_INDEX, order_id)
    assert doc is not None
    assert doc["_version"] == 2
    assert (doc["revision"], doc["paymentIntentId"], doc["status"]) == (
        2,
        "pi_9",
        "PENDING_PAYMENT",
    )
    assert "clientSecret" not in doc
    assert "pi_9_secret_x" not in repr(doc)
    assert await search.get(ORDERS_INDEX, orphan_id) is None
    assert await projection.is_processed(AGENT, batch[0]["eventId"])

    # Redelivery of the batch (a retry after a partial failure): nothing changes.
    again = await project_orders(records, codec=CODEC, projection=projection, search=search)
    assert (again.rows_written, again.docs_written, again.docs_stale) == (0, 0, 1)

    # A newer revision moves both stores; a late older one moves neither.
    paid = snapshot(order_id, 3, event_type="order.paid", status="PAID", paymentIntentId="pi_9")
    await project_orders([inbound(paid, 3)], codec=CODEC, projection=projection, search=search)
    late = [inbound(batch[0], 0)]
    stale = await project_orders(late, codec=CODEC, projection=projection, search=search)
    assert (stale.rows_written, stale.docs_written, stale.docs_stale) == (0, 0, 1)
    row = await projection.fetch_order(order_id)
    assert row is not None
    assert (row.status, row.revision) == ("PAID", 3)
    doc = await search.get(ORDERS_INDEX, order_id)
    assert doc is not None
    assert (doc["status"], doc["_version"], doc["lastEventType"]) == ("PAID", 3, "order.paid")


@integration
async def test_effect_without_search_writes_postgres_only(projection: PostgresProjection) -> None:
    order_id = new_order_id()
    records = [inbound(snapshot(order_id, 1), 0)]
    done = await project_orders(records, codec=CODEC, projection=projection, search=None)
    assert (done.rows_written, done.docs_written, done.docs_stale) == (1, None, None)
    assert await projection.fetch_order(order_id) is not None


@integration
async def test_effect_with_only_orphans_writes_nothing(projection: PostgresProjection) -> None:
    records = [inbound(orphaned(new_order_id()), 0)]
    done = await project_orders(records, codec=CODEC, projection=projection, search=None)
    assert (done.snapshots, done.rows_written) == (0, 0)


def context(settings: Settings, database_url: str, index_prefix: str = "") -> WorkerContext:
    """A WorkerContext for its connectors only (no faust app, outbox or runner)."""
    nothing = cast(Any, None)
    return WorkerContext(
        settings=settings,
        codec=CODEC,
        clock=SystemClock(),
        topology=nothing,
        outbox=nothing,
        runner=nothing,
        projection=PostgresProjection(database_url),
        search_index_prefix=index_prefix,
    )


@integration
async def test_context_starts_search_once_with_its_index_prefix(
    migrated_db: str, elasticsearch_server: ElasticsearchServer, index_prefix: str
) -> None:
    settings = Settings(database_url=migrated_db, elasticsearch_url=elasticsearch_server.url)
    ctx = context(settings, migrated_db, index_prefix)
    try:
        search = await ctx.search()
        assert search is not None
        assert await ctx.search() is search
        assert search.index_name(ORDERS_INDEX) == f"{index_prefix}{ORDERS_INDEX}"
        with pytest.raises(PermanentError, match="STRIPE_API_KEY is not set"):
            await ctx.stripe()
    finally:
        await ctx.close()
    await ctx.close()  # idempotent


async def test_context_without_elasticsearch_url_has_search_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx = context(Settings(), "postgresql://unused")
    with caplog.at_level(logging.INFO, logger="streams.context"):
        assert await ctx.search() is None
        assert await ctx.search() is None
    assert sum("ELASTICSEARCH_URL" in r.getMessage() for r in caplog.records) == 1
    keyed = context(Settings(stripe_api_key="sk_test_x", stripe_api_base="http://127.0.0.1:9"), "")
    stripe = await keyed.stripe()
    assert await keyed.stripe() is stripe
    assert "sk_test_x" not in repr(stripe)
    await keyed.close()
