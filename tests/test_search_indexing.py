"""Search indexing end to end: the real ingress, broker, Elasticsearch node and a real
``sluice worker`` process.

The module has its own index prefix, shared by its ingress (the query route) and its
worker (which creates the declared indices at start), so it sees only its own documents.
Each test uses its own document ids. "The worker has handled everything" is read from
the broker: the worker group's committed offsets on ``commands.search.index`` reach the
end offsets taken after the test's last publish.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from confluent_kafka import Consumer, Producer, TopicPartition
from elasticsearch import AsyncElasticsearch, Elasticsearch

from connectors.migrate import apply_migrations
from devstack import ElasticsearchServer, PostgresServer
from ingress.records import new_traceparent
from schemas.codec import make_codec
from schemas.headers import record_headers
from schemas.search_indices import ID_FIELD, TOMBSTONE_FIELD
from tests.fixtures.ingress import (
    MAX_BODY,
    IngressUnderTest,
    ingress_settings,
    internal_headers,
    started_ingress,
)
from tests.fixtures.kafka import end_offsets, read_topic
from tests.fixtures.worker import (
    TEST_RETRY_DELAYS,
    TEST_RETRY_MAX_ATTEMPTS,
    WorkerProcess,
    start_group_at_end,
    wait_until,
)

CODEC = make_codec(None)
TOPIC = "commands.search.index"
INDEX = "listings"


@dataclass
class SearchStack:
    ingress: IngressUnderTest
    worker: WorkerProcess
    es: AsyncElasticsearch
    prefix: str
    group: str

    @property
    def physical(self) -> str:
        return self.prefix + INDEX

    async def post(self, body: Any, **headers: str) -> tuple[int, Any]:
        async with self.ingress.http.post(
            f"{self.ingress.internal}/internal/v1/search/index",
            data=body if isinstance(body, bytes) else json.dumps(body).encode(),
            headers=internal_headers(**{"Content-Type": "application/json", **headers}),
        ) as response:
            return response.status, await response.json(content_type=None)

    async def index(self, doc_id: str, doc: dict[str, Any], version: int | None = None) -> None:
        body: dict[str, Any] = {"index": INDEX, "id": doc_id, "op": "upsert", "doc": doc}
        if version is not None:
            body["version"] = version
        status, answer = await self.post(body)
        assert status == 202, answer

    async def delete(self, doc_id: str, version: int) -> None:
        status, answer = await self.post(
            {"index": INDEX, "id": doc_id, "op": "delete", "version": version}
        )
        assert status == 202, answer

    async def search(self, **params: str) -> tuple[int, Any]:
        async with self.ingress.http.get(
            f"{self.ingress.internal}/internal/v1/search/{INDEX}",
            params=params,
            headers=internal_headers(),
        ) as response:
            return response.status, await response.json()

    async def stored(self, doc_id: str) -> dict[str, Any] | None:
        """The stored document (tombstones too) with ``_version``."""
        response = await self.es.options(ignore_status=404).get(index=self.physical, id=doc_id)
        if not response.get("found"):
            return None
        return {**response["_source"], "_version": response["_version"]}

    async def drained(self, timeout_s: float = 90.0) -> None:
        """Wait until the worker group committed everything now on the command topic,
        then make it visible to search."""
        ends = end_offsets(self.ingress.bootstrap, TOPIC)
        await wait_until(
            "the worker to handle every search command",
            lambda: _committed(self.ingress.bootstrap, self.group, ends),
            timeout_s,
            on_timeout=self.worker.log_tail,
        )
        await self.es.indices.refresh(index=self.physical)


def _committed(bootstrap: str, group: str, ends: dict[int, int]) -> bool:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        committed = consumer.committed(
            [TopicPartition(TOPIC, partition) for partition in ends], timeout=10
        )
    finally:
        consumer.close()
    return all(tp.offset >= ends[tp.partition] for tp in committed)


@pytest_asyncio.fixture(scope="module")
async def stack(
    catalog_topics: str,
    elasticsearch_server: ElasticsearchServer,
    postgres_server: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[SearchStack]:
    name = f"sluice_search_{uuid.uuid4().hex[:6]}"
    prefix = f"{name}-"
    database_url = postgres_server.create_database(name)
    apply_migrations(database_url)
    state = tmp_path_factory.mktemp("search-worker")
    group = name.replace("_", "-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "PARTNER_"))}
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": catalog_topics,
        "DATABASE_URL": database_url,
        "ELASTICSEARCH_URL": elasticsearch_server.url,
        "SLUICE_SEARCH_INDEX_PREFIX": prefix,
        "SLUICE_APP_ID": group,
        "SLUICE_STATE_DIR": str(state / "state"),
        "SLUICE_RETRY_DELAYS": TEST_RETRY_DELAYS,
        "SLUICE_RETRY_MAX_ATTEMPTS": TEST_RETRY_MAX_ATTEMPTS,
        "SLUICE_LOG_LEVEL": "INFO",
        "SLUICE_NOTIFY_ON": "",
    }
    start_group_at_end(env)
    worker = WorkerProcess(env, Path(state / "worker.log"))
    settings = ingress_settings(
        catalog_topics,
        {"ELASTICSEARCH_URL": elasticsearch_server.url, "SLUICE_SEARCH_INDEX_PREFIX": prefix},
    )
    es = AsyncElasticsearch(elasticsearch_server.url)
    worker.start()
    try:
        async with started_ingress(settings) as ingress:
            stack = SearchStack(ingress, worker, es, prefix, group)
            # The worker creates the index with its mapping when it starts.
            await wait_until(
                "the worker to create the listings index",
                lambda: _index_exists(elasticsearch_server.url, stack.physical),
                90,
                on_timeout=worker.log_tail,
            )
            yield stack
    finally:
        worker.stop()
        await es.close()


def _index_exists(url: str, name: str) -> bool:
    with Elasticsearch(url, request_timeout=5) as client:
        return bool(client.indices.exists(index=name))


def _listing(**fields: Any) -> dict[str, Any]:
    return {
        "title": "Flat",
        "description": "A flat",
        "city": "Lisbon",
        "type": "flat",
        "status": "active",
        "currency": "EUR",
        "listedAt": "2025-01-31T09:30:00Z",
        **fields,
    }


def _id(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


# -- versions -----------------------------------------------------------------------------


async def test_the_index_is_created_with_the_declared_mapping(stack: SearchStack) -> None:
    mapping = await stack.es.indices.get_mapping(index=stack.physical)
    properties = mapping[stack.physical]["mappings"]["properties"]
    assert properties["location"] == {"type": "geo_point"}
    assert properties["title"] == {"type": "text"}
    assert properties[TOMBSTONE_FIELD] == {"type": "boolean"}
    assert mapping[stack.physical]["mappings"]["dynamic"] == "strict"


async def test_a_late_upsert_never_undoes_a_delete_even_after_gc_deletes(
    stack: SearchStack,
) -> None:
    # Elasticsearch would forget a real delete's version at once with gc_deletes 0s: only
    # the tombstone design keeps the late upsert out.
    await stack.es.indices.put_settings(
        index=stack.physical, settings={"index": {"gc_deletes": "0s"}}
    )
    doc_id = _id("gc")
    await stack.index(doc_id, _listing(title="Old flat"), version=10)
    await stack.delete(doc_id, version=20)
    await stack.drained()
    stored = await stack.stored(doc_id)
    assert stored is not None
    assert stored[TOMBSTONE_FIELD] is True
    assert stored["_version"] == 20

    await asyncio.sleep(1.0)  # past gc_deletes (0 s), and a refresh prunes deleted versions
    await stack.es.indices.refresh(index=stack.physical)
    await stack.index(doc_id, _listing(title="Old flat, late"), version=15)
    await stack.index(doc_id, _listing(title="Old flat, replayed"), version=10)
    await stack.drained()
    stored = await stack.stored(doc_id)
    assert stored == {ID_FIELD: doc_id, TOMBSTONE_FIELD: True, "_version": 20}
    # The control: the same sequence with a real delete is undone by the late upsert.
    control = _id("control")
    await stack.es.index(
        index=stack.physical, id=control, document={}, version=10, version_type="external"
    )
    await stack.es.delete(index=stack.physical, id=control, version=20, version_type="external")
    await asyncio.sleep(1.0)
    await stack.es.indices.refresh(index=stack.physical)
    late = await stack.es.index(
        index=stack.physical, id=control, document={}, version=15, version_type="external"
    )
    assert late["result"] == "created"  # resurrected: what tombstones prevent

    status, page = await stack.search(q="Old")
    assert status == 200
    assert doc_id not in [hit["id"] for hit in page["hits"]]

    # A newer upsert brings it back: a delete is a version like any other.
    await stack.index(doc_id, _listing(title="Old flat, relisted"), version=30)
    await stack.drained()
    stored = await stack.stored(doc_id)
    assert stored is not None
    assert stored["title"] == "Old flat, relisted"
    assert stored["_version"] == 30
    assert TOMBSTONE_FIELD not in stored


async def test_without_a_version_later_commands_win(stack: SearchStack) -> None:
    doc_id = _id("seq")
    for title in ("first", "second", "third"):
        await stack.index(doc_id, _listing(title=title))
    await stack.drained()
    stored = await stack.stored(doc_id)
    assert stored is not None
    assert stored["title"] == "third"
    assert stored["_version"] > 1_700_000_000_000_000  # microseconds since the epoch


async def test_a_burst_in_random_order_ends_at_each_documents_highest_version(
    stack: SearchStack,
) -> None:
    rng = random.Random(13)
    ids = [_id("burst") for _ in range(100)]
    commands = [
        (doc_id, version) for doc_id in ids for version in rng.sample(range(1, 1_000_000), 10)
    ]
    rng.shuffle(commands)
    highest = {doc_id: max(v for i, v in commands if i == doc_id) for doc_id in ids}

    async def send(chunk: list[tuple[str, int]]) -> None:
        for doc_id, version in chunk:
            await stack.index(doc_id, {"title": "burst", "bedrooms": version % 100}, version)

    # 20 concurrent senders: the commands of one id still arrive in random version order.
    await asyncio.gather(*(send(commands[n::20]) for n in range(20)))
    await stack.drained(timeout_s=180)
    for doc_id in ids:
        stored = await stack.stored(doc_id)
        assert stored is not None
        assert stored["_version"] == highest[doc_id], doc_id
        assert stored["bedrooms"] == highest[doc_id] % 100


# -- search -------------------------------------------------------------------------------

# Around Lisbon's centre (38.7223, -9.1393): Baixa ~0.3 km, Belém ~6 km, Porto ~275 km.
SEARCH_DOCS: dict[str, dict[str, Any]] = {
    "riverside": _listing(
        title="Riverside loft with a view",
        description="Quiet loft by the river",
        price=5_200_000,
        bedrooms=1,
        location={"lat": 38.7105, "lon": -9.1366},
    ),
    "belem": _listing(
        title="Family house in Belém",
        description="Garden, near the river and the tower",
        type="house",
        price=7_900_000,
        bedrooms=4,
        location={"lat": 38.6916, "lon": -9.2160},
    ),
    "porto": _listing(
        title="Flat in Ribeira",
        description="Old town flat on the river Douro",
        city="Porto",
        price=4_100_000,
        bedrooms=2,
        location={"lat": 41.1408, "lon": -8.6131},
    ),
    "gone": _listing(
        title="Sold riverside flat",
        description="By the river",
        price=5_000_000,
        location={"lat": 38.7110, "lon": -9.1370},
    ),
}


@pytest.fixture(scope="module")
def tag() -> str:
    """Unique listing status of the search tests' documents, so the other tests' ones
    never match."""
    return f"t{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture(scope="module")
async def listed(stack: SearchStack, tag: str) -> dict[str, str]:
    ids = {name: _id(name) for name in SEARCH_DOCS}
    for name, doc in SEARCH_DOCS.items():
        await stack.index(ids[name], {**doc, "status": tag}, version=1)
    await stack.delete(ids["gone"], version=2)
    await stack.drained()
    return ids


def _found(page: dict[str, Any], ids: dict[str, str]) -> set[str]:
    names = {doc_id: name for name, doc_id in ids.items()}
    return {names.get(hit["id"], hit["id"]) for hit in page["hits"]}


async def test_search_by_text(stack: SearchStack, listed: dict[str, str], tag: str) -> None:
    status, page = await stack.search(q="river", status=tag)
    assert status == 200, page
    assert _found(page, listed) == {"riverside", "belem", "porto"}  # not the deleted one
    status, page = await stack.search(q="loft view", status=tag)
    assert _found(page, listed) == {"riverside"}
    hit = page["hits"][0]
    assert hit["doc"]["title"] == "Riverside loft with a view"
    assert ID_FIELD not in hit["doc"]
    assert hit["version"] == 1


async def test_search_by_price_range_and_keywords(
    stack: SearchStack, listed: dict[str, str], tag: str
) -> None:
    _, page = await stack.search(status=tag, price_min="4500000", price_max="8000000")
    assert _found(page, listed) == {"riverside", "belem"}
    _, page = await stack.search(status=tag, price_max="5200000", city="Lisbon")
    assert _found(page, listed) == {"riverside"}
    _, page = await stack.search(status=tag, type="house")
    assert _found(page, listed) == {"belem"}
    _, page = await stack.search(status=tag, sort="-price")
    assert [hit["id"] for hit in page["hits"]] == [
        listed["belem"],
        listed["riverside"],
        listed["porto"],
    ]


async def test_search_by_distance(stack: SearchStack, listed: dict[str, str], tag: str) -> None:
    centre = {"lat": "38.7223", "lon": "-9.1393"}
    _, page = await stack.search(status=tag, distance="5km", **centre)
    assert _found(page, listed) == {"riverside"}
    _, page = await stack.search(status=tag, distance="10km", **centre)
    assert _found(page, listed) == {"riverside", "belem"}
    _, page = await stack.search(status=tag, distance="500km", **centre)
    assert _found(page, listed) == {"riverside", "belem", "porto"}


async def test_search_pages_with_the_cursor(
    stack: SearchStack, listed: dict[str, str], tag: str
) -> None:
    seen: list[str] = []
    params = {"status": tag, "size": "1", "sort": "price"}
    status, page = await stack.search(**params)
    while True:
        assert status == 200, page
        seen += [hit["id"] for hit in page["hits"]]
        if page["next"] is None:
            break
        status, page = await stack.search(**params, search_after=page["next"])
    assert seen == [listed["porto"], listed["riverside"], listed["belem"]]
    _, page = await stack.search(status=tag, sort="price", size="2", **{"from": "2"})
    assert [hit["id"] for hit in page["hits"]] == [listed["belem"]]
    assert page["total"] == 3
    assert page["totalExact"] is True


async def test_bad_search_parameters_are_400_naming_them(stack: SearchStack) -> None:
    for params, field in (
        ({"price_min": "cheap"}, "price_min"),
        ({"lat": "38.7", "lon": "-9.1"}, "distance"),
        ({"size": "500"}, "size"),
        ({"colour": "red"}, "colour"),
    ):
        status, body = await stack.search(**params)
        assert (status, body["field"]) == (400, field), body
    async with stack.ingress.http.get(
        f"{stack.ingress.internal}/internal/v1/search/orders", headers=internal_headers()
    ) as response:
        assert response.status == 404


async def test_the_query_route_without_elasticsearch_is_503(ingress: IngressUnderTest) -> None:
    async with ingress.http.get(
        f"{ingress.internal}/internal/v1/search/{INDEX}", headers=internal_headers()
    ) as response:
        assert response.status == 503
    async with ingress.http.get(
        f"{ingress.internal}/internal/v1/search/{INDEX}?size=0", headers=internal_headers()
    ) as response:
        assert response.status == 400  # a bad parameter is the caller's fault first


# -- the door -----------------------------------------------------------------------------


async def test_bad_input_is_400_naming_the_field_and_publishes_nothing(
    stack: SearchStack,
) -> None:
    before = end_offsets(stack.ingress.bootstrap, TOPIC)
    good = {"index": INDEX, "id": "door-1", "op": "upsert", "doc": _listing()}
    for body, field in (
        ({**good, "index": "users"}, "index"),
        ({**good, "id": "a\nb"}, "id"),
        ({**good, "op": "merge"}, "op"),
        ({**good, "version": 0}, "version"),
        ({**good, "doc": {"title": 3}}, "doc.title"),
        ({**good, "doc": {"colour": "red"}}, "doc.colour"),
        ({**good, "doc": {"price": "1"}}, "doc.price"),
        ({**good, "doc": {"listedAt": "tomorrow"}}, "doc.listedAt"),
        ({**good, "doc": {"location": {"lat": 120, "lon": 0}}}, "doc.location.lat"),
        ({**good, "op": "delete"}, "doc"),
    ):
        status, answer = await stack.post(body)
        assert (status, answer.get("field")) == (400, field), answer
    status, _ = await stack.post(b"{not json")
    assert status == 400
    status, _ = await stack.post(json.dumps(good).encode(), **{"Content-Type": "text/plain"})
    assert status == 415
    big = {**good, "doc": {"description": "x" * (MAX_BODY + 1)}}
    status, _ = await stack.post(big)
    assert status == 413
    assert end_offsets(stack.ingress.bootstrap, TOPIC) == before


async def test_an_accepted_command_is_on_the_topic_keyed_index_id(stack: SearchStack) -> None:
    doc_id = _id("wire")
    status, answer = await stack.post(
        {"index": INDEX, "id": doc_id, "op": "upsert", "doc": {"title": "t"}, "version": 5}
    )
    assert status == 202
    assert answer["accepted"] is True
    assert answer["version"] == 5
    [message] = read_topic(stack.ingress.bootstrap, TOPIC, key=f"{INDEX}:{doc_id}")
    command = CODEC.decode(message.value() or b"", topic=TOPIC).record
    assert command["taskId"] == answer["taskId"] == command["eventId"]
    assert (command["op"], command["docVersion"], json.loads(command["doc"])) == (
        "upsert",
        5,
        {"title": "t"},
    )
    assert command["eventType"] == "search.index.upsert"


# -- Elasticsearch refusing ---------------------------------------------------------------


def _publish_commands(bootstrap: str, commands: list[dict[str, Any]]) -> None:
    """Commands straight onto the topic, as a producer other than the ingress could (or
    one with an older mapping): the worker must not trust the door alone."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    errors: list[Any] = []
    for command in commands:
        record = {
            "eventId": str(uuid.uuid4()),
            "eventType": f"search.index.{command['op']}",
            "version": 1,
            "occurredAt": 1_750_000_000_000,
            "correlationId": str(uuid.uuid4()),
            "source": "test",
            "doc": None,
            "taskId": None,
            **command,
        }
        producer.produce(
            TOPIC,
            CODEC.encode(TOPIC, record),
            key=f"{record['index']}:{record['id']}".encode(),
            headers=list(record_headers(TOPIC, record, traceparent=new_traceparent())),
            on_delivery=lambda err, _msg: errors.append(err),
        )
    assert producer.flush(15) == 0
    assert errors == [None] * len(commands)


async def test_a_document_elasticsearch_refuses_is_dead_lettered_with_the_reason(
    stack: SearchStack,
) -> None:
    bad, good = _id("refused"), [_id("kept") for _ in range(3)]
    commands = [
        {"index": INDEX, "id": good[0], "op": "upsert", "doc": '{"title":"a"}', "docVersion": 1},
        {"index": INDEX, "id": bad, "op": "upsert", "doc": '{"colour":"red"}', "docVersion": 1},
        {"index": INDEX, "id": good[1], "op": "upsert", "doc": '{"title":"b"}', "docVersion": 1},
        {"index": INDEX, "id": good[2], "op": "delete", "docVersion": 1},
    ]
    _publish_commands(stack.ingress.bootstrap, commands)
    await stack.drained()
    for doc_id in good:
        assert await stack.stored(doc_id) is not None, doc_id
    assert await stack.stored(bad) is None
    [dead] = [
        CODEC.decode(message.value() or b"", topic="dlq").record
        for message in read_topic(stack.ingress.bootstrap, "dlq", key=f"{INDEX}:{bad}")
    ]
    assert dead["originTopic"] == TOPIC
    assert "strict_dynamic_mapping_exception" in dead["reason"]
    assert dead["errorClass"] == "DocumentsRejected"


async def test_a_command_for_an_undeclared_index_is_dead_lettered(stack: SearchStack) -> None:
    doc_id = _id("undeclared")
    _publish_commands(
        stack.ingress.bootstrap,
        [{"index": "users", "id": doc_id, "op": "upsert", "doc": "{}", "docVersion": 1}],
    )
    await stack.drained()
    [message] = read_topic(stack.ingress.bootstrap, "dlq", key=f"users:{doc_id}")
    dead = CODEC.decode(message.value() or b"", topic="dlq").record
    assert "allow-list" in dead["reason"]
