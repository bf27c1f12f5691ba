"""``SearchProjection`` against the real Elasticsearch node of the session.

Every test works in its own indices (an index prefix made from its name), so all tests
share one node and never see each other's documents. The outage test stops the shared
node and always starts it again in a ``finally``; the unavailable-shard test deletes
its red index in a ``finally`` (a red index would keep the node from ever being ready
after a restart).
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from elasticsearch import AsyncElasticsearch

from base.errors import PermanentError, TransientError
from connectors.elasticsearch import (
    ORDERS_INDEX,
    ORDERS_MAPPING,
    BulkOutcome,
    DocumentsRejected,
    SearchProjection,
    VersionedDoc,
    bulk_outcome,
)
from devstack import ElasticsearchServer
from devstack.ports import LOOPBACK, free_port

integration = pytest.mark.integration

TIMEOUT_S = 5.0
SLACK_S = 3.0
T0 = 1_735_689_600_000  # ms since the epoch


def order(order_id: str, revision: int, **fields: Any) -> VersionedDoc:
    doc: dict[str, Any] = {
        "orderId": order_id,
        "userId": "usr_1",
        "status": "PENDING_PAYMENT",
        "amountMinor": 2000,
        "currency": "usd",
        "refundedMinor": 0,
        "paymentProvider": "stripe",
        "paymentIntentId": None,
        "providerIds": [],
        "revision": revision,
        "createdAt": T0,
        "updatedAt": T0 + revision,
        "lastEventType": "order.created",
    }
    doc.update(fields)
    return VersionedDoc(id=order_id, version=revision, doc=doc)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def index_prefix(request: pytest.FixtureRequest) -> str:
    """Lower-case, index-name-safe, unique per test (and per run)."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60]
    return f"t-{name}-{uuid.uuid4().hex[:6]}-"


@pytest.fixture
async def projection(
    elasticsearch_server: ElasticsearchServer, index_prefix: str
) -> AsyncIterator[SearchProjection]:
    url = elasticsearch_server.url
    async with SearchProjection(url, index_prefix=index_prefix, request_timeout_s=TIMEOUT_S) as p:
        yield p


@pytest.fixture
async def raw_client(
    elasticsearch_server: ElasticsearchServer,
) -> AsyncIterator[AsyncElasticsearch]:
    """The plain client, to look at indices from outside the projection."""
    client = AsyncElasticsearch(elasticsearch_server.url, request_timeout=30)
    try:
        yield client
    finally:
        await client.close()


async def stored(projection: SearchProjection, order_id: str) -> dict[str, Any]:
    doc = await projection.get(ORDERS_INDEX, order_id)
    assert doc is not None, order_id
    return doc


# --- index ------------------------------------------------------------------------


@integration
async def test_start_creates_the_orders_index_with_its_strict_mapping(
    projection: SearchProjection, raw_client: AsyncElasticsearch
) -> None:
    name = projection.index_name(ORDERS_INDEX)
    assert name == projection.index_prefix + "orders"
    response = await raw_client.indices.get_mapping(index=name)
    assert response[name]["mappings"] == ORDERS_MAPPING


@integration
async def test_ensure_index_and_start_are_idempotent(
    elasticsearch_server: ElasticsearchServer, projection: SearchProjection
) -> None:
    await projection.write_versioned(ORDERS_INDEX, [order("ord_kept", 1)])
    await projection.ensure_index(ORDERS_INDEX, ORDERS_MAPPING)
    url, prefix = elasticsearch_server.url, projection.index_prefix
    async with SearchProjection(url, index_prefix=prefix) as second:
        assert await second.get(ORDERS_INDEX, "ord_kept") is not None
    # Concurrent creators of one new index all succeed.
    await asyncio.gather(*(projection.ensure_index("other", ORDERS_MAPPING) for _ in range(4)))


# --- versioned writes -------------------------------------------------------------


@integration
async def test_a_batch_is_written_in_one_go_and_readable_with_its_version(
    projection: SearchProjection,
) -> None:
    docs = [order(new_id("ord"), revision) for revision in (1, 2, 3)]
    assert await projection.write_versioned(ORDERS_INDEX, docs) == BulkOutcome(3, 0)
    for doc in docs:
        got = await stored(projection, doc.id)
        assert got["_version"] == doc.version
        assert got["_id"] == doc.id
        assert {k: v for k, v in got.items() if not k.startswith("_")} == doc.doc


@integration
async def test_an_empty_batch_does_nothing(projection: SearchProjection) -> None:
    assert await projection.write_versioned(ORDERS_INDEX, []) == BulkOutcome(0, 0)


@integration
async def test_a_higher_version_replaces_the_document(projection: SearchProjection) -> None:
    order_id = new_id("ord")
    await projection.write_versioned(ORDERS_INDEX, [order(order_id, 1)])
    paid = order(order_id, 2, status="PAID", paymentIntentId="pi_1", providerIds=["pi_1"])
    assert await projection.write_versioned(ORDERS_INDEX, [paid]) == BulkOutcome(1, 0)
    got = await stored(projection, order_id)
    assert (got["status"], got["_version"], got["providerIds"]) == ("PAID", 2, ["pi_1"])


@integration
async def test_a_lower_or_equal_version_is_ignored_and_counted_stale(
    projection: SearchProjection,
) -> None:
    order_id = new_id("ord")
    await projection.write_versioned(ORDERS_INDEX, [order(order_id, 5, status="PAID")])
    late = [order(order_id, 3, status="PAYMENT_FAILED"), order(order_id, 5, status="CANCELLED")]
    assert await projection.write_versioned(ORDERS_INDEX, late) == BulkOutcome(0, 2)
    got = await stored(projection, order_id)
    assert (got["status"], got["_version"]) == ("PAID", 5)


@integration
async def test_replaying_a_batch_writes_nothing_and_changes_nothing(
    projection: SearchProjection,
) -> None:
    docs = [order(new_id("ord"), 7, status="PAID") for _ in range(5)]
    assert await projection.write_versioned(ORDERS_INDEX, docs) == BulkOutcome(5, 0)
    assert await projection.write_versioned(ORDERS_INDEX, docs) == BulkOutcome(0, 5)
    assert await projection.write_versioned(ORDERS_INDEX, docs[::-1]) == BulkOutcome(0, 5)
    for doc in docs:
        assert (await stored(projection, doc.id))["_version"] == 7


@integration
async def test_a_mixed_batch_counts_each_document(projection: SearchProjection) -> None:
    a, b, c = new_id("ord"), new_id("ord"), new_id("ord")
    await projection.write_versioned(ORDERS_INDEX, [order(a, 2), order(b, 1)])
    batch = [
        order(a, 1, status="CANCELLED"),  # older: stale
        order(b, 2, status="PAID"),  # newer: written
        order(c, 1),  # new: written
        order(a, 2, status="CANCELLED"),  # same version: stale
        order(c, 1, status="CANCELLED"),  # same version as earlier in this batch: stale
    ]
    assert await projection.write_versioned(ORDERS_INDEX, batch) == BulkOutcome(2, 3)
    assert [(await stored(projection, i))["status"] for i in (a, b, c)] == [
        "PENDING_PAYMENT",
        "PAID",
        "PENDING_PAYMENT",
    ]


# --- permanent failures -------------------------------------------------------------


@integration
async def test_a_strict_mapping_violation_is_permanent_and_names_the_document(
    projection: SearchProjection,
) -> None:
    good, bad = new_id("ord"), new_id("ord")
    batch = [order(good, 1), order(bad, 1, couponCode="SPRING")]
    with pytest.raises(DocumentsRejected) as caught:
        await projection.write_versioned(ORDERS_INDEX, batch)
    error = caught.value
    assert isinstance(error, PermanentError)
    assert bad in str(error)
    assert "strict_dynamic_mapping_exception" in str(error)
    assert "couponCode" in error.rejected[bad]
    assert list(error.rejected) == [bad]
    assert (error.written, error.stale) == (1, 0)
    assert await projection.get(ORDERS_INDEX, good) is not None
    assert await projection.get(ORDERS_INDEX, bad) is None


@integration
async def test_a_value_of_the_wrong_type_is_permanent_and_not_quoted(
    projection: SearchProjection,
) -> None:
    bad = new_id("ord")
    with pytest.raises(DocumentsRejected) as caught:
        await projection.write_versioned(ORDERS_INDEX, [order(bad, 1, amountMinor="secret-ish")])
    assert bad in str(caught.value)
    assert "amountMinor" in str(caught.value)
    assert "secret-ish" not in str(caught.value)  # reasons never quote document values


@integration
async def test_transient_item_failures_fail_the_batch_and_a_rerun_completes_it(
    elasticsearch_server: ElasticsearchServer,
    raw_client: AsyncElasticsearch,
    index_prefix: str,
) -> None:
    """Two primary shards, only one allowed on the node: writes to the other get 503."""
    base = "halfred"
    name = index_prefix + base
    await raw_client.indices.create(
        index=name,
        mappings=ORDERS_MAPPING,
        settings={
            "number_of_shards": 2,
            "number_of_replicas": 0,
            "routing.allocation.total_shards_per_node": 1,
        },
        wait_for_active_shards="0",
    )
    try:
        async with SearchProjection(
            elasticsearch_server.url, index_prefix=index_prefix, request_timeout_s=2.0
        ) as projection:
            docs = [order(new_id("ord"), 1) for _ in range(16)]
            with pytest.raises(TransientError, match="safe to write again"):
                await projection.write_versioned(base, docs)

            written, unavailable = [], []
            for doc in docs:
                try:
                    if await projection.get(base, doc.id) is not None:
                        written.append(doc.id)
                except TransientError:  # its shard is unassigned: 503 as well
                    unavailable.append(doc.id)
            assert written
            assert unavailable
            assert len(written) + len(unavailable) == len(docs)

            await raw_client.indices.put_settings(
                index=name, settings={"routing.allocation.total_shards_per_node": None}
            )
            await raw_client.cluster.health(index=name, wait_for_status="green", timeout="30s")
            outcome = await projection.write_versioned(base, docs)
            assert outcome == BulkOutcome(written=len(unavailable), stale=len(written))
            for doc in docs:
                assert await projection.get(base, doc.id) is not None
    finally:
        await raw_client.indices.delete(index=name)


# --- outages ------------------------------------------------------------------------


@integration
async def test_starting_against_an_unreachable_server_fails_fast_and_transiently() -> None:
    url = f"http://{LOOPBACK}:{free_port(None)}"
    began = time.monotonic()
    with pytest.raises(TransientError):
        await SearchProjection(url, request_timeout_s=1.0).start()
    assert time.monotonic() - began < 1.0 + SLACK_S


@integration
async def test_a_stopped_server_is_transient_and_the_same_projection_recovers(
    elasticsearch_server: ElasticsearchServer, projection: SearchProjection
) -> None:
    order_id = new_id("ord")
    await projection.write_versioned(ORDERS_INDEX, [order(order_id, 1)])
    await asyncio.to_thread(elasticsearch_server.stop)
    try:
        began = time.monotonic()
        with pytest.raises(TransientError):
            await projection.write_versioned(ORDERS_INDEX, [order(order_id, 2, status="PAID")])
        with pytest.raises(TransientError):
            await projection.get(ORDERS_INDEX, order_id)
        with pytest.raises(TransientError):
            await projection.search(ORDERS_INDEX, order_id)
        assert time.monotonic() - began < 3 * (TIMEOUT_S + SLACK_S)
    finally:
        await asyncio.to_thread(elasticsearch_server.start)

    # The retry the worker would do: same projection, same batch.
    outcome = await projection.write_versioned(ORDERS_INDEX, [order(order_id, 2, status="PAID")])
    assert outcome == BulkOutcome(1, 0)
    assert (await stored(projection, order_id))["status"] == "PAID"


# --- reads and isolation ------------------------------------------------------------


@integration
async def test_get_of_an_unknown_document_is_none(projection: SearchProjection) -> None:
    assert await projection.get(ORDERS_INDEX, new_id("ord")) is None


@integration
async def test_index_prefixes_isolate_projections(
    elasticsearch_server: ElasticsearchServer, projection: SearchProjection
) -> None:
    order_id = new_id("ord")
    await projection.write_versioned(ORDERS_INDEX, [order(order_id, 1)])
    await projection.refresh(ORDERS_INDEX)
    other_prefix = projection.index_prefix + "other-"
    async with SearchProjection(elasticsearch_server.url, index_prefix=other_prefix) as other:
        assert other.index_name(ORDERS_INDEX) != projection.index_name(ORDERS_INDEX)
        assert await other.get(ORDERS_INDEX, order_id) is None
        assert await other.search(ORDERS_INDEX, order_id) == []
        assert await other.write_versioned(ORDERS_INDEX, [order(order_id, 1)]) == BulkOutcome(1, 0)
    assert len(await projection.search(ORDERS_INDEX, order_id)) == 1


@integration
async def test_support_search_finds_orders_by_any_id(projection: SearchProjection) -> None:
    user = new_id("usr")
    paid = order(
        new_id("ord"),
        3,
        userId=user,
        status="PAID",
        paymentIntentId="pi_3Nsearch",
        providerIds=["pi_3Nsearch", "ch_3Nsearch", "re_3Nsearch"],
        updatedAt=T0 + 10,
    )
    pending = order(new_id("ord"), 1, userId=user, updatedAt=T0 + 20)
    await projection.write_versioned(ORDERS_INDEX, [paid, pending])
    await projection.refresh(ORDERS_INDEX)

    def ids(hits: list[dict[str, Any]]) -> list[str]:
        return [hit["_id"] for hit in hits]

    assert ids(await projection.search(ORDERS_INDEX, "re_3Nsearch")) == [paid.id]
    assert ids(await projection.search(ORDERS_INDEX, paid.id)) == [paid.id]
    assert ids(await projection.search(ORDERS_INDEX, "ch_3Nsea*")) == [paid.id]
    assert ids(await projection.search(ORDERS_INDEX, f"{user} PAID")) == [paid.id]
    # Equal scores: the most recently updated first.
    assert ids(await projection.search(ORDERS_INDEX, user)) == [pending.id, paid.id]
    hit = (await projection.search(ORDERS_INDEX, paid.id))[0]
    assert (hit["_version"], hit["status"]) == (3, "PAID")
    assert await projection.search(ORDERS_INDEX, "   ") == []
    assert await projection.search(ORDERS_INDEX, "nothing_like_this") == []
    assert await projection.search("no-such-index", "anything") == []


@integration
async def test_using_a_projection_before_start_is_a_bug(
    elasticsearch_server: ElasticsearchServer,
) -> None:
    with pytest.raises(RuntimeError, match="before start"):
        await SearchProjection(elasticsearch_server.url).get(ORDERS_INDEX, "ord_1")


# --- per-item accounting, on the shapes Elasticsearch answers with --------------------


def _item(status: int, error_type: str | None = None, doc_id: str = "ord_1") -> Mapping[str, Any]:
    result: dict[str, Any] = {"_index": "orders", "_id": doc_id, "status": status}
    if error_type is not None:
        result["error"] = {"type": error_type, "reason": f"{error_type} happened"}
    return {"index": result}


def test_bulk_outcome_counts_written_and_version_conflicts() -> None:
    items = [_item(201), _item(200), _item(409, "version_conflict_engine_exception")]
    assert bulk_outcome("orders", items) == BulkOutcome(written=2, stale=1)


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (429, "es_rejected_execution_exception"),
        (503, "unavailable_shards_exception"),
        (500, "illegal_state_exception"),
    ],
)
def test_bulk_outcome_transient_items_fail_the_batch(status: int, error_type: str) -> None:
    items = [_item(201), _item(status, error_type, "ord_2"), _item(400, "x", "ord_3")]
    with pytest.raises(TransientError, match="ord_2") as caught:
        bulk_outcome("orders", items)
    assert not isinstance(caught.value, PermanentError)


def test_bulk_outcome_other_failures_are_rejections_naming_the_ids() -> None:
    items = [
        _item(201),
        _item(400, "document_parsing_exception", "ord_2"),
        _item(409, "some_other_conflict", "ord_3"),
    ]
    with pytest.raises(DocumentsRejected) as caught:
        bulk_outcome("orders", items)
    assert set(caught.value.rejected) == {"ord_2", "ord_3"}
    assert "document_parsing_exception" in caught.value.rejected["ord_2"]
    assert (caught.value.written, caught.value.stale) == (1, 0)
