"""The internal leads API through the real ingress, broker and PostgreSQL.

``POST /internal/v1/leads/deliver`` is request/reply: the lead delivery agent's side is
played by the test (``tests.fixtures.replies.PlayedWorker``), or by nobody (202 after
the reply timeout). ``GET /internal/v1/leads/{leadId}`` reads rows this test inserts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from base.errors import InvalidEvent
from base.partners import PartnerRegistry, partners_from
from devstack import free_port
from ingress.lead_api import parse_deliver
from schemas.codec import make_codec
from schemas.leads import lead_id
from tests.fixtures.ingress import (
    IngressUnderTest,
    ingress_settings,
    internal_headers,
    started_ingress,
)
from tests.fixtures.kafka import end_offsets, header_map, read_topic, value_of
from tests.fixtures.replies import played_worker

CODEC = make_codec(None)
COMMANDS = "commands.leads.deliver"
# Long enough for a played reply on a loaded machine, short for the 202 test.
REPLY_TIMEOUT_S = 3.0
PARTNERS = {"PARTNER_ACME_TOKEN": "tok_acme", "PARTNER_ZEN_SECRET": "zen-hmac-secret"}


def _registry() -> PartnerRegistry:
    registry, problems = partners_from(
        {"acme": {"auth": "bearer", "secrets": "t"}, "zen": {"auth": "hmac", "secrets": "s"}}
    )
    assert problems == []
    return registry


def _lead_id() -> str:
    return lead_id("acme", f"ext-{uuid.uuid4().hex[:12]}")


@pytest_asyncio.fixture(scope="module")
async def leads_ingress(catalog_topics: str, migrated_db: str) -> AsyncIterator[IngressUnderTest]:
    """An ingress with two partners, this module's database and a short reply timeout."""
    settings = ingress_settings(
        catalog_topics,
        {
            "DATABASE_URL": migrated_db,
            "SLUICE_REPLY_TIMEOUT": f"{REPLY_TIMEOUT_S:g}s",
            **PARTNERS,
        },
    )
    async with started_ingress(settings) as running:
        yield running


async def _deliver(ingress: IngressUnderTest, body: Any, **headers: str) -> tuple[int, Any]:
    async with ingress.http.post(
        f"{ingress.internal}/internal/v1/leads/deliver",
        data=body if isinstance(body, bytes) else json.dumps(body).encode(),
        headers=internal_headers(**{"Content-Type": "application/json", **headers}),
    ) as response:
        return response.status, await response.json(content_type=None)


async def _get(ingress: IngressUnderTest, lead: str) -> tuple[int, Any]:
    async with ingress.http.get(
        f"{ingress.internal}/internal/v1/leads/{lead}", headers=internal_headers()
    ) as response:
        return response.status, await response.json()


# --- request checks (pure) ----------------------------------------------------------------


def test_a_full_deliver_request() -> None:
    request = parse_deliver(
        {
            "leadId": "l1",
            "partnerId": "zen",
            "attempt": 3,
            "metadata": {"by": "support", "ticket": "T-1"},
            "force": True,
        },
        _registry(),
    )
    assert (request.lead_id, request.partner_id, request.attempt, request.force) == (
        "l1",
        "zen",
        3,
        True,
    )
    assert request.metadata == {"by": "support", "ticket": "T-1"}
    defaults = parse_deliver({"leadId": "l1", "partnerId": "acme"}, _registry())
    assert (defaults.attempt, dict(defaults.metadata), defaults.force) == (None, {}, False)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "leadId"),
        ({"leadId": "", "partnerId": "acme"}, "leadId"),
        ({"leadId": "l\x00", "partnerId": "acme"}, "leadId"),
        ({"leadId": "l" * 257, "partnerId": "acme"}, "leadId"),
        ({"leadId": "l1"}, "partnerId"),
        ({"leadId": "l1", "partnerId": "nobody"}, "partnerId"),
        ({"leadId": "l1", "partnerId": "acme", "attempt": 0}, "attempt"),
        ({"leadId": "l1", "partnerId": "acme", "attempt": -1}, "attempt"),
        ({"leadId": "l1", "partnerId": "acme", "attempt": 1.0}, "attempt"),
        ({"leadId": "l1", "partnerId": "acme", "attempt": "2"}, "attempt"),
        ({"leadId": "l1", "partnerId": "acme", "attempt": True}, "attempt"),
        ({"leadId": "l1", "partnerId": "acme", "attempt": 2**31}, "attempt"),
        ({"leadId": "l1", "partnerId": "acme", "metadata": []}, "metadata"),
        ({"leadId": "l1", "partnerId": "acme", "metadata": {"n": 1}}, "metadata.n"),
        ({"leadId": "l1", "partnerId": "acme", "metadata": {"": "x"}}, "metadata."),
        ({"leadId": "l1", "partnerId": "acme", "metadata": {"k": "v" * 1025}}, "metadata.k"),
        (
            {"leadId": "l1", "partnerId": "acme", "metadata": {str(i): "" for i in range(51)}},
            "metadata",
        ),
        ({"leadId": "l1", "partnerId": "acme", "force": "yes"}, "force"),
        ({"leadId": "l1", "partnerId": "acme", "attempts": 1}, "attempts"),
    ],
)
def test_bad_deliver_requests_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_deliver(body, _registry())
    assert caught.value.field == field


def test_a_deliver_body_must_be_an_object() -> None:
    with pytest.raises(InvalidEvent, match="object"):
        parse_deliver(["leadId"], _registry())


# --- POST /internal/v1/leads/deliver ----------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize(
    "body",
    [
        b'{"leadId": ',
        {"partnerId": "acme"},
        {"leadId": "l1", "partnerId": "nobody"},
        {"leadId": "l1", "partnerId": "acme", "attempt": 0},
        {"leadId": "l1", "partnerId": "acme", "metadata": {"k": 1}},
        {"leadId": "l1", "partnerId": "acme", "force": 1},
        {"leadId": "l1", "partnerId": "acme", "extra": True},
    ],
    ids=["malformed", "no lead", "unknown partner", "attempt 0", "metadata", "force", "extra"],
)
async def test_bad_deliver_requests_are_400_and_publish_nothing(
    leads_ingress: IngressUnderTest, body: Any
) -> None:
    before = end_offsets(leads_ingress.bootstrap, COMMANDS)
    status, answer = await _deliver(leads_ingress, body)
    assert status == 400, answer
    assert answer["error"] == "invalid"
    assert end_offsets(leads_ingress.bootstrap, COMMANDS) == before


@pytest.mark.integration
async def test_deliver_needs_the_token_and_json(leads_ingress: IngressUnderTest) -> None:
    before = end_offsets(leads_ingress.bootstrap, COMMANDS)
    url = f"{leads_ingress.internal}/internal/v1/leads/deliver"
    body = json.dumps({"leadId": "l1", "partnerId": "acme"}).encode()
    async with leads_ingress.http.post(
        url, data=body, headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 401
    async with leads_ingress.http.post(
        url, data=body, headers=internal_headers(**{"Content-Type": "text/plain"})
    ) as response:
        assert response.status == 415
    assert end_offsets(leads_ingress.bootstrap, COMMANDS) == before


@pytest.mark.integration
async def test_no_reply_in_time_is_202_and_the_command_is_on_the_topic(
    leads_ingress: IngressUnderTest,
) -> None:
    lead = _lead_id()
    started = time.monotonic()

    status, body = await _deliver(
        leads_ingress,
        {
            "leadId": lead,
            "partnerId": "acme",
            "attempt": 2,
            "metadata": {"by": "ops"},
            "force": True,
        },
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )

    assert time.monotonic() - started >= REPLY_TIMEOUT_S * 0.9
    assert status == 202
    assert body == {"accepted": True, "taskId": body["taskId"]}
    assert uuid.UUID(body["taskId"]).version == 4
    [message] = read_topic(leads_ingress.bootstrap, COMMANDS, key=lead)
    command = CODEC.decode(value_of(message), topic=COMMANDS).record
    assert command == command | {
        "eventId": body["taskId"],
        "eventType": "lead.deliver",
        "source": "ingress",
        "leadId": lead,
        "partnerId": "acme",
        "attempt": 2,
        "force": True,
        "metadata": {"by": "ops"},
        "taskId": body["taskId"],
        "replyTo": "replies",
    }
    headers = header_map(message)
    assert headers["event-type"] == "lead.deliver"
    assert headers["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")


@pytest.mark.integration
@pytest.mark.parametrize(
    ("status", "reply"),
    [
        (200, {"delivered": True, "attempt": 3}),
        (200, {"delivered": False, "attempt": 1}),
        (404, {"error": "not_found", "detail": "no such lead"}),
        (409, {"error": "conflict", "detail": "the lead is another partner's"}),
    ],
    ids=["delivered", "not delivered", "unknown lead", "partner mismatch"],
)
async def test_the_agents_reply_is_the_answer(
    leads_ingress: IngressUnderTest, status: int, reply: dict[str, Any]
) -> None:
    lead = _lead_id()
    with played_worker(leads_ingress.bootstrap, COMMANDS, lead, status, reply) as worker:
        started = time.monotonic()
        got_status, got_body = await _deliver(leads_ingress, {"leadId": lead, "partnerId": "zen"})
        elapsed = time.monotonic() - started
        command = await asyncio.to_thread(worker.result)

    assert (got_status, got_body) == (status, reply)
    assert elapsed < REPLY_TIMEOUT_S  # answered by the reply, not by the timeout
    assert (command["leadId"], command["partnerId"], command["force"]) == (lead, "zen", False)
    assert command["attempt"] is None
    assert command["metadata"] == {}


# --- GET /internal/v1/leads/{leadId} ------------------------------------------------------


@pytest.mark.integration
async def test_a_lead_and_its_attempts(leads_ingress: IngressUnderTest, migrated_db: str) -> None:
    external = f"ext-{uuid.uuid4().hex[:8]}"
    lead = lead_id("acme", external)
    received = dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=dt.UTC)
    delivered = received + dt.timedelta(seconds=7)
    payload = {"contact": {"email": "ana@example.com"}, "note": "3 rooms"}
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO leads (lead_id, partner_id, external_lead_id, name, email, phone,"
            " listing_id, message, payload, status, attempts, last_error, received_at,"
            " delivered_at, updated_at) VALUES (%s, 'acme', %s, 'Ana', 'ana@example.com',"
            " NULL, 'lst-9', 'Call me', %s, 'DELIVERED', 2, 'HTTP 503', %s, %s, %s)",
            (lead, external, json.dumps(payload), received, delivered, delivered),
        )
        for attempt, http_status, error, latency, trigger, at in (
            (2, 200, None, 41, "retry", delivered),
            (1, 503, "HTTP 503", 12, "delivery", received),
        ):
            conn.execute(
                "INSERT INTO lead_delivery_attempts (lead_id, attempt, http_status, error,"
                " latency_ms, trigger, attempted_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (lead, attempt, http_status, error, latency, trigger, at),
            )

    status, body = await _get(leads_ingress, lead)

    assert status == 200
    assert body == {
        "leadId": lead,
        "partnerId": "acme",
        "externalLeadId": external,
        "name": "Ana",
        "email": "ana@example.com",
        "phone": None,
        "listingId": "lst-9",
        "message": "Call me",
        "payload": payload,
        "status": "DELIVERED",
        "attempts": 2,
        "lastError": "HTTP 503",
        "receivedAt": "2024-05-01T12:00:00.123Z",
        "deliveredAt": "2024-05-01T12:00:07.123Z",
        "updatedAt": "2024-05-01T12:00:07.123Z",
        "deliveryAttempts": [
            {
                "attempt": 1,
                "httpStatus": 503,
                "error": "HTTP 503",
                "latencyMs": 12,
                "trigger": "delivery",
                "attemptedAt": "2024-05-01T12:00:00.123Z",
            },
            {
                "attempt": 2,
                "httpStatus": 200,
                "error": None,
                "latencyMs": 41,
                "trigger": "retry",
                "attemptedAt": "2024-05-01T12:00:07.123Z",
            },
        ],
    }


@pytest.mark.integration
async def test_an_unknown_lead_is_404(leads_ingress: IngressUnderTest) -> None:
    status, body = await _get(leads_ingress, _lead_id())
    assert status == 404
    assert body["error"] == "not_found"


@pytest.mark.integration
@pytest.mark.parametrize("lead", ["l%00x", "l%1Bx", "l" * 300], ids=["NUL", "ESC", "long"])
async def test_an_unusable_lead_id_is_400(leads_ingress: IngressUnderTest, lead: str) -> None:
    status, body = await _get(leads_ingress, lead)
    assert status == 400
    assert (body["error"], body["field"]) == ("invalid", "leadId")


@pytest.mark.integration
async def test_leads_without_database_url_are_503(ingress: IngressUnderTest) -> None:
    assert ingress.settings.database_url is None
    status, body = await _get(ingress, _lead_id())
    assert status == 503
    assert "DATABASE_URL" in body["detail"]


@pytest.mark.integration
async def test_leads_with_postgres_unreachable_are_503(catalog_topics: str) -> None:
    unreachable = f"postgresql://sluice@127.0.0.1:{free_port()}/nowhere"
    settings = ingress_settings(catalog_topics, {"DATABASE_URL": unreachable})
    async with started_ingress(settings) as cut_off:
        async with cut_off.http.get(
            f"{cut_off.internal}/internal/v1/leads/{_lead_id()}", headers=internal_headers()
        ) as response:
            body = await response.json()
            assert response.status == 503
            assert response.headers["Retry-After"]
        assert "database" in body["detail"]
        assert "127.0.0.1" not in body["detail"]
