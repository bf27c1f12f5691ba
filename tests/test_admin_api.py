"""The admin API over a real ingress, broker and PostgreSQL: the webhook log (filters,
keyset pages), the replay route's refusals, dead letters listed, shown and replayed over
HTTP, the admin token (401 without, 403 for a non-admin token, rotation), and the public
listener answering 404 for every admin path.

``webhook_events`` rows are written straight into this module's database: the log reads
the table, whoever wrote it (the end-to-end replay is ``tests/test_webhook_replay.py``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from confluent_kafka import Producer

from connectors.kafka_admin import create_topics
from schemas.catalog import topic_spec
from schemas.codec import make_codec
from streams.domain.dlq import dead_letter_record
from tests.fixtures.ingress import (
    INTERNAL_TOKEN,
    MAX_BODY,
    IngressUnderTest,
    ingress_settings,
    started_ingress,
)
from tests.fixtures.kafka import end_offsets, header_map, read_topic, value_of

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "adm_current_0123456789"
ADMIN_OLD_TOKEN = "adm_previous_0123456789"
ADMIN_ENV = {"ADMIN_API_TOKEN": f"{ADMIN_TOKEN},{ADMIN_OLD_TOKEN}", "SLUICE_REPLAY_MAX_EVENTS": "3"}
CODEC = make_codec(None)
T0 = dt.datetime(2026, 1, 2, 3, 0, tzinfo=dt.UTC)

ADMIN_ROUTES = [
    ("GET", "/v1/admin/webhooks/logs"),
    ("POST", "/v1/admin/webhooks/replay"),
    ("GET", "/v1/admin/dlq"),
    ("GET", "/v1/admin/dlq/some-id"),
    ("POST", "/v1/admin/dlq/replay"),
]


@pytest_asyncio.fixture(scope="module")
async def admin(catalog_topics: str, migrated_db: str) -> AsyncIterator[IngressUnderTest]:
    settings = ingress_settings(catalog_topics, {"DATABASE_URL": migrated_db, **ADMIN_ENV})
    async with started_ingress(settings) as running:
        yield running


async def _get(
    ingress: IngressUnderTest, path: str, token: str | None = ADMIN_TOKEN
) -> tuple[int, Any]:
    headers = {"X-Internal-Token": token} if token else {}
    async with ingress.http.get(f"{ingress.internal}{path}", headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def _post(
    ingress: IngressUnderTest, path: str, body: Any, token: str | None = ADMIN_TOKEN
) -> tuple[int, Any]:
    headers = {"X-Internal-Token": token} if token else {}
    async with ingress.http.post(
        f"{ingress.internal}{path}", json=body, headers=headers
    ) as response:
        return response.status, await response.json(content_type=None)


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _insert(database: str, rows: list[tuple[str, str, str, str, dt.datetime]]) -> None:
    """(provider, event id, event type, status, received_at) rows of webhook_events."""
    with psycopg.connect(database, autocommit=True) as conn:
        for provider, event_id, event_type, status, received_at in rows:
            conn.execute(
                "INSERT INTO webhook_events (provider, event_id, event_type, signature, raw_body,"
                " content_type, correlation_id, received_at, status)"
                " VALUES (%s, %s, %s, 't=1,v1=x', %s, 'application/json', %s, %s, %s)",
                (
                    provider,
                    event_id,
                    event_type,
                    b'{"id":"x"}',
                    f"corr-{event_id}",
                    received_at,
                    status,
                ),
            )


# --- the webhook log ---------------------------------------------------------------------


async def test_the_log_pages_newest_first_without_gaps_or_repeats(
    admin: IngressUnderTest, migrated_db: str
) -> None:
    kind = f"test.page.{uuid.uuid4().hex[:8]}"
    # Seven rows, two received in the same instant: the keyset's tie-breaker.
    times = [T0 + dt.timedelta(minutes=n) for n in (0, 1, 2, 3, 3, 5, 6)]
    rows = [("stripe", f"evt_{kind}_{n}", kind, "PROCESSED", at) for n, at in enumerate(times)]
    _insert(migrated_db, rows)

    seen: list[dict[str, Any]] = []
    path = f"/v1/admin/webhooks/logs?eventType={kind}&limit=3"
    pages = 0
    while path:
        status, body = await _get(admin, path)
        assert status == 200, body
        seen += body["items"]
        pages += 1
        path = (
            f"/v1/admin/webhooks/logs?eventType={kind}&limit=3&cursor={body['next']}"
            if body["next"]
            else ""
        )
    assert pages == 3
    assert sorted(item["eventId"] for item in seen) == sorted(row[1] for row in rows)
    received = [item["receivedAt"] for item in seen]
    assert received == sorted(received, reverse=True)
    first = seen[0]
    assert first == {
        "provider": "stripe",
        "eventId": f"evt_{kind}_6",
        "eventType": kind,
        "status": "PROCESSED",
        "reason": None,
        "correlationId": f"corr-evt_{kind}_6",
        "contentType": "application/json",
        "receivedAt": "2026-01-02T03:06:00.000Z",
        "processedAt": None,
        "bodyBytes": 10,
        "signed": True,
    }


async def test_the_log_filters_by_provider_status_and_time(
    admin: IngressUnderTest, migrated_db: str
) -> None:
    kind = f"test.filter.{uuid.uuid4().hex[:8]}"
    rows = [
        ("stripe", f"evt_{kind}_a", kind, "PROCESSED", T0),
        ("stripe", f"evt_{kind}_b", kind, "FAILED", T0 + dt.timedelta(hours=1)),
        ("razorpay", f"rzp_{kind}_c", kind, "IGNORED", T0 + dt.timedelta(hours=2)),
        ("stripe", f"evt_{kind}_d", kind, "PROCESSED", T0 + dt.timedelta(hours=3)),
    ]
    _insert(migrated_db, rows)

    async def ids(query: str) -> list[str]:
        status, body = await _get(admin, f"/v1/admin/webhooks/logs?eventType={kind}&{query}")
        assert status == 200, body
        return [item["eventId"] for item in body["items"]]

    assert await ids("provider=razorpay") == [f"rzp_{kind}_c"]
    assert await ids("status=PROCESSED") == [f"evt_{kind}_d", f"evt_{kind}_a"]
    assert await ids("provider=stripe&status=FAILED") == [f"evt_{kind}_b"]
    window = f"since={_iso(T0 + dt.timedelta(hours=1))}&until={_iso(T0 + dt.timedelta(hours=3))}"
    assert await ids(window) == [f"rzp_{kind}_c", f"evt_{kind}_b"]  # until is exclusive
    assert await ids(f"eventId=evt_{kind}_a") == [f"evt_{kind}_a"]
    assert await ids("since=2026-01-02T05:00:00%2B02:00&until=2026-01-02T04:00:00Z") == [
        f"evt_{kind}_a"
    ]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("status=DONE", "status"),
        ("provider=paypal", "provider"),
        ("since=yesterday", "since"),
        ("since=2026-01-02T03:00:00", "since"),
        ("since=2026-01-02T03:00:00Z&until=2026-01-02T03:00:00Z", "until"),
        ("cursor=not-a-cursor", "cursor"),
        ("sort=asc", "sort"),
        ("limit=1&limit=2", "limit"),
    ],
)
async def test_a_bad_log_parameter_is_400_naming_it(
    admin: IngressUnderTest, query: str, field: str
) -> None:
    status, body = await _get(admin, f"/v1/admin/webhooks/logs?{query}")
    assert status == 400, body
    assert (body["error"], body["field"]) == ("invalid", field)


# --- the replay route's refusals (the replay itself: test_webhook_replay.py) ---------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "provider"),
        ({"probeUnknownField": True}, "probeUnknownField"),
        ({"provider": "paypal", "eventIds": ["a"]}, "provider"),
        ({"provider": "stripe"}, "since"),
        ({"provider": "stripe", "since": "2026-01-02T03:00:00Z"}, "until"),
        ({"provider": "stripe", "eventIds": []}, "eventIds"),
        ({"provider": "stripe", "eventIds": "evt_1"}, "eventIds"),
        ({"provider": "stripe", "eventIds": [""]}, "eventIds"),
        ({"provider": "stripe", "eventIds": ["a"], "since": "2026-01-02T03:00:00Z"}, "since"),
        ({"provider": "stripe", "eventIds": ["a", "b", "c", "d"]}, "eventIds"),
        ([], None),
    ],
)
async def test_a_bad_replay_body_is_400_naming_the_field_and_publishes_nothing(
    admin: IngressUnderTest, body: Any, field: str | None
) -> None:
    before = end_offsets(admin.bootstrap, "webhooks.stripe")
    status, answer = await _post(admin, "/v1/admin/webhooks/replay", body)
    assert status == 400, answer
    assert answer.get("field") == field
    assert end_offsets(admin.bootstrap, "webhooks.stripe") == before


async def test_a_range_over_the_bound_and_unknown_ids_publish_nothing(
    admin: IngressUnderTest, migrated_db: str
) -> None:
    kind = f"test.bound.{uuid.uuid4().hex[:8]}"
    start = T0 + dt.timedelta(days=30)
    _insert(
        migrated_db,
        [
            ("stripe", f"evt_{kind}_{n}", kind, "PROCESSED", start + dt.timedelta(seconds=n))
            for n in range(4)
        ],
    )
    before = end_offsets(admin.bootstrap, "webhooks.stripe")
    window = {"since": _iso(start), "until": _iso(start + dt.timedelta(minutes=1))}
    status, body = await _post(admin, "/v1/admin/webhooks/replay", {"provider": "stripe", **window})
    assert (status, body["field"]) == (400, "until")
    assert "more than 3" in body["detail"]
    status, body = await _post(
        admin,
        "/v1/admin/webhooks/replay",
        {"provider": "stripe", "eventIds": [f"evt_{kind}_0", "evt_nope"]},
    )
    assert status == 404, body
    assert "evt_nope" in body["detail"]
    assert end_offsets(admin.bootstrap, "webhooks.stripe") == before

    # Within the bound: published, marked as replays.
    status, body = await _post(
        admin, "/v1/admin/webhooks/replay", {"provider": "stripe", "eventIds": [f"evt_{kind}_1"]}
    )
    assert status == 202, body
    assert body["count"] == 1
    [record] = read_topic(admin.bootstrap, "webhooks.stripe", key=f"evt_{kind}_1")
    headers = header_map(record)
    assert headers["sluice-replay"] == "1"
    assert headers["sluice-replay-id"] == body["replayId"]
    decoded = CODEC.decode(value_of(record), topic="webhooks.stripe").record
    assert decoded["replay"] is True
    assert decoded["rawBody"] == b'{"id":"x"}'
    assert decoded["receivedAt"] == int((start + dt.timedelta(seconds=1)).timestamp() * 1000)


# --- the admin token, and the public listener ---------------------------------------------


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_no_token_is_401_and_a_non_admin_token_403(
    admin: IngressUnderTest, method: str, path: str
) -> None:
    for token, expected in ((None, 401), ("wrong-token-0123456789", 401), (INTERNAL_TOKEN, 403)):
        headers = {"X-Internal-Token": token} if token else {}
        async with admin.http.request(
            method, f"{admin.internal}{path}", json={}, headers=headers
        ) as response:
            body = await response.json()
            assert response.status == expected, body
            if expected == 403:
                assert body["scope"] == "admin"


async def test_both_admin_tokens_of_a_rotation_are_accepted(admin: IngressUnderTest) -> None:
    for token in (ADMIN_TOKEN, ADMIN_OLD_TOKEN):
        status, body = await _get(admin, "/v1/admin/webhooks/logs?limit=1", token)
        assert status == 200, body


@pytest.mark.parametrize(
    ("method", "path"), [*ADMIN_ROUTES, ("GET", "/admin"), ("GET", "/admin/x")]
)
async def test_the_public_listener_has_no_admin_path(
    admin: IngressUnderTest, method: str, path: str
) -> None:
    for token in (None, ADMIN_TOKEN):
        headers = {"X-Internal-Token": token} if token else {}
        async with admin.http.request(
            method, f"{admin.public}{path}", json={}, headers=headers
        ) as response:
            assert response.status == 404


async def test_without_database_url_the_webhook_routes_are_503(catalog_topics: str) -> None:
    settings = ingress_settings(catalog_topics, ADMIN_ENV)
    async with started_ingress(settings) as plain:
        status, body = await _get(plain, "/v1/admin/webhooks/logs")
        assert status == 503, body
        window = {"since": "2026-01-02T03:00:00Z", "until": "2026-01-02T04:00:00Z"}
        status, body = await _post(
            plain, "/v1/admin/webhooks/replay", {"provider": "stripe", **window}
        )
        assert status == 503, body
        # Still 400 first for a bad request: parameters are checked before the database.
        status, body = await _get(plain, "/v1/admin/webhooks/logs?limit=0")
        assert status == 400, body


async def test_postgres_down_is_503(catalog_topics: str) -> None:
    # A port nothing listens on: the pool cannot connect.
    env = {**ADMIN_ENV, "DATABASE_URL": "postgresql://sluice@127.0.0.1:9/none"}
    async with started_ingress(ingress_settings(catalog_topics, env)) as down:
        status, body = await _get(down, "/v1/admin/webhooks/logs")
        assert status == 503, body


# --- dead letters over HTTP ----------------------------------------------------------------


@pytest.fixture(scope="module")
def dead_letters(catalog_topics: str) -> dict[str, Any]:
    """Three dead letters from an origin topic of this module's own (replaying them
    touches nothing else), and one from webhooks.stripe (shown decoded, never replayed)."""
    origin = f"admin.test.{uuid.uuid4().hex[:8]}"
    create_topics(catalog_topics, [dataclasses.replace(topic_spec("dlq"), name=origin)])
    now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    letters = [
        dead_letter_record(
            origin_topic=origin,
            origin_partition=0,
            origin_offset=n,
            key=f"key-{n}".encode(),
            value=f"value-{n}".encode(),
            headers=[("correlation-id", f"corr-{n}".encode()), ("sluice-attempt", b"3")],
            reason="boom: refused" if n < 2 else "timeout talking to the CRM",
            error_class="PermanentError",
            attempts=1,
            now_ms=now_ms + n,
            correlation_id=None,
        )
        for n in range(3)
    ]
    raw = {
        "eventId": str(uuid.uuid4()),
        "eventType": "payment_intent.succeeded",
        "version": 1,
        "occurredAt": now_ms,
        "correlationId": "corr-raw",
        "source": "test",
        "provider": "stripe",
        "providerEventId": "evt_dead",
        "receivedAt": now_ms,
        "signatureHeader": None,
        "rawBody": b"{}",
        "contentType": "application/json",
        "sourceAddress": None,
        "replay": False,
    }
    decodable = dead_letter_record(
        origin_topic="webhooks.stripe",
        origin_partition=0,
        origin_offset=10**12 + now_ms,  # a position no real record has: its own id
        key=b"evt_dead",
        value=CODEC.encode("webhooks.stripe", raw),
        headers=[],
        reason="decodable",
        error_class="InvalidEvent",
        attempts=1,
        now_ms=now_ms,
        correlation_id="corr-raw",
    )
    producer = Producer({"bootstrap.servers": catalog_topics, "acks": "all"})
    for letter in [*letters, decodable]:
        producer.produce(
            "dlq", key=letter["originTopic"].encode(), value=CODEC.encode("dlq", letter)
        )
    assert producer.flush(30) == 0
    return {"origin": origin, "letters": letters, "decodable": decodable}


async def test_dlq_list_filters_and_pages(
    admin: IngressUnderTest, dead_letters: dict[str, Any]
) -> None:
    origin = dead_letters["origin"]
    ids = [letter["eventId"] for letter in dead_letters["letters"]]
    seen: list[str] = []
    cursor = ""
    for _ in range(3):
        status, body = await _get(admin, f"/v1/admin/dlq?originTopic={origin}&limit=2{cursor}")
        assert status == 200, body
        seen += [item["eventId"] for item in body["items"]]
        if body["next"] is None:
            break
        cursor = f"&cursor={body['next']}"
    assert seen == ids  # oldest first
    status, body = await _get(admin, f"/v1/admin/dlq?originTopic={origin}&reason=TIMEOUT")
    assert [item["eventId"] for item in body["items"]] == [ids[2]]
    item = body["items"][0]
    assert (item["originTopic"], item["key"], item["errorClass"]) == (
        origin,
        "key-2",
        "PermanentError",
    )
    failed = dead_letters["letters"][1]["failedAt"]
    since = _iso(dt.datetime.fromtimestamp(failed / 1000, dt.UTC))
    status, body = await _get(admin, f"/v1/admin/dlq?originTopic={origin}&since={since}")
    assert [item["eventId"] for item in body["items"]] == ids[1:]
    for query, field in (
        ("limit=0", "limit"),
        ("cursor=x", "cursor"),
        ("since=x", "since"),
        ("topic=a", "topic"),
    ):
        status, body = await _get(admin, f"/v1/admin/dlq?{query}")
        assert (status, body.get("field")) == (400, field), body


async def test_dlq_show_decodes_the_original_when_it_can(
    admin: IngressUnderTest, dead_letters: dict[str, Any]
) -> None:
    decodable = dead_letters["decodable"]
    status, body = await _get(admin, f"/v1/admin/dlq/{decodable['eventId']}")
    assert status == 200, body
    assert body["original"]["subject"] == "sluice.webhooks.RawWebhook"
    assert body["original"]["record"]["providerEventId"] == "evt_dead"
    assert body["original"]["record"]["rawBody"] == "e30="  # bytes as base64
    assert body["originalError"] is None

    opaque = dead_letters["letters"][0]
    status, body = await _get(admin, f"/v1/admin/dlq/{opaque['eventId']}")
    assert status == 200, body
    assert body["original"] is None
    assert body["originalError"]
    assert body["valueBase64"] == "dmFsdWUtMA=="
    assert body["originHeaders"]["correlation-id"] == "corr-0"

    status, body = await _get(admin, "/v1/admin/dlq/no-such-letter")
    assert status == 404, body


async def test_dlq_replay_by_ids_and_by_filter(
    admin: IngressUnderTest, dead_letters: dict[str, Any]
) -> None:
    origin = dead_letters["origin"]
    letters = dead_letters["letters"]
    status, body = await _post(admin, "/v1/admin/dlq/replay", {"eventIds": [letters[0]["eventId"]]})
    assert status == 202, body
    assert (body["count"], body["eventIds"]) == (1, [letters[0]["eventId"]])
    first_replay = body["replayId"]

    status, body = await _post(
        admin, "/v1/admin/dlq/replay", {"originTopic": origin, "reason": "timeout"}
    )
    assert status == 202, body
    assert body["eventIds"] == [letters[2]["eventId"]]

    records = read_topic(admin.bootstrap, origin)
    assert [(r.key(), r.value()) for r in records] == [
        (b"key-0", b"value-0"),
        (b"key-2", b"value-2"),
    ]
    headers = header_map(records[0])
    assert headers["sluice-replay"] == "1"
    assert headers["sluice-replay-id"] == first_replay
    assert headers["correlation-id"] == "corr-0"
    assert "sluice-attempt" not in headers  # a fresh retry history

    for bad, field in (
        ({}, "eventIds"),
        ({"probeUnknownField": True}, "probeUnknownField"),
        ({"all": "yes"}, "all"),
    ):
        status, body = await _post(admin, "/v1/admin/dlq/replay", bad)
        assert (status, body.get("field")) == (400, field), body


async def test_an_oversize_admin_body_is_413(admin: IngressUnderTest) -> None:
    oversize = b'{"pad":"' + b"x" * MAX_BODY + b'"}'
    for path in ("/v1/admin/webhooks/replay", "/v1/admin/dlq/replay"):
        async with admin.http.post(
            f"{admin.internal}{path}",
            data=oversize,
            headers={"X-Internal-Token": ADMIN_TOKEN, "Content-Type": "application/json"},
        ) as response:
            assert response.status == 413
