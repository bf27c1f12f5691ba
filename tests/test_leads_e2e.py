"""Partner leads through the front door: a partner's signed POST → the ingress →
``leads.received`` → `sluice worker` (a real process) → the partner's CRM (a local
aiohttp server) → Postgres, read back over ``GET /internal/v1/leads/{id}``; and a
deliver-now call over ``POST /internal/v1/leads/deliver``.

The ingress and the worker read one partners file, as a deployment would. The finer
cases (retries, Retry-After, 4xx, isolation, SIGKILL, held deliveries) are proven with
records produced directly in tests/test_leads_delivery.py; the bad inputs at the door in
tests/test_partner_leads_ingress.py.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from standardwebhooks import Webhook

from connectors.migrate import apply_migrations
from devstack import PostgresServer
from ingress.verify.partner import bearer_header, sign_hmac, sign_standard_webhooks
from tests.fixtures.crm import CrmFarm
from tests.fixtures.ingress import (
    IngressUnderTest,
    ingress_settings,
    internal_headers,
    started_ingress,
)
from tests.fixtures.worker import (
    TEST_RETRY_DELAYS,
    TEST_RETRY_MAX_ATTEMPTS,
    WorkerProcess,
    start_group_at_end,
    wait_until,
)

pytestmark = pytest.mark.integration

RUN = uuid.uuid4().hex[:6]
# One partner per inbound mode, each delivering with another outbound auth.
HMAC_PARTNER = f"e2e-hmac-{RUN}"
BEARER_PARTNER = f"e2e-bearer-{RUN}"
SW_PARTNER = f"e2e-sw-{RUN}"
HMAC_SECRET = "hmac-inbound-secret"
INBOUND_TOKEN = f"inbound-token-{RUN}"
INBOUND_WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CRM_TOKEN = "crm-token-e2e"
CRM_WHSEC = "whsec_" + "c2x1aWNlLWUyZS1jcm0tc2lnbmluZy1rZXktMzJieXRlcw=="


@dataclass(frozen=True)
class Stack:
    ingress: IngressUnderTest
    worker: WorkerProcess
    database_url: str
    crm: CrmFarm

    def lead(self, lead_id: str) -> tuple[str, int] | None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT status, attempts FROM leads WHERE lead_id = %s", (lead_id,)
            ).fetchone()
        return (row[0], row[1]) if row else None

    def count_leads(self, partner: str, external: str) -> int:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM leads WHERE partner_id = %s AND external_lead_id = %s",
                (partner, external),
            ).fetchone()
        return int(row[0]) if row else 0

    async def until_delivered(self, lead_id: str) -> None:
        await wait_until(
            f"lead {lead_id} DELIVERED",
            lambda: (self.lead(lead_id) or ("",))[0] == "DELIVERED",
            120,
            on_timeout=self.worker.log_tail,
        )

    async def post_lead(self, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        async with self.ingress.http.post(
            f"{self.ingress.public}/v1/webhooks/partner/leads", data=body, headers=headers
        ) as response:
            return response.status, await response.json(content_type=None)

    async def internal(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.ingress.http.request(
            method, f"{self.ingress.internal}{path}", json=body, headers=internal_headers()
        ) as response:
            return response.status, await response.json(content_type=None)


def _partners(crm: CrmFarm) -> dict[str, Any]:
    def delivery(partner: str, **auth: Any) -> dict[str, Any]:
        return {"url": crm.serve(partner), "timeout": "2s", **auth}

    return {
        "partners": {
            HMAC_PARTNER: {
                "auth": "hmac",
                "secrets": [HMAC_SECRET],
                "mapping": {"email": "contact.email", "name": "contact.name"},
                "delivery": delivery(HMAC_PARTNER),
            },
            BEARER_PARTNER: {
                "auth": "bearer",
                "secrets": [INBOUND_TOKEN],
                "delivery": delivery(BEARER_PARTNER, auth="bearer", token=CRM_TOKEN),
            },
            SW_PARTNER: {
                "auth": "standard-webhooks",
                "secrets": [INBOUND_WHSEC],
                "delivery": delivery(SW_PARTNER, auth="standard-webhooks", secret=CRM_WHSEC),
            },
        }
    }


@pytest.fixture(scope="module")
def partners_file(crm_farm: CrmFarm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("e2e-partners") / "partners.json"
    path.write_text(json.dumps(_partners(crm_farm)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def e2e_database(postgres_server: PostgresServer) -> str:
    database_url = postgres_server.create_database(f"sluice_leads_e2e_{RUN}")
    apply_migrations(database_url)
    return database_url


@pytest.fixture(scope="module")
def e2e_worker(
    catalog_topics: str,
    e2e_database: str,
    partners_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    state = tmp_path_factory.mktemp("e2e-worker")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "PARTNER_"))}
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": catalog_topics,
        "DATABASE_URL": e2e_database,
        "SLUICE_APP_ID": f"sluice-leads-e2e-{RUN}",
        "SLUICE_STATE_DIR": str(state / "state"),
        "SLUICE_RETRY_DELAYS": TEST_RETRY_DELAYS,
        "SLUICE_RETRY_MAX_ATTEMPTS": TEST_RETRY_MAX_ATTEMPTS,
        "SLUICE_PARTNERS_FILE": str(partners_file),
    }
    start_group_at_end(env)
    worker = WorkerProcess(env, state / "worker.log")
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


@pytest_asyncio.fixture(scope="module")
async def stack(
    catalog_topics: str,
    e2e_database: str,
    partners_file: Path,
    e2e_worker: WorkerProcess,
    crm_farm: CrmFarm,
) -> AsyncIterator[Stack]:
    settings = ingress_settings(
        catalog_topics,
        {
            "DATABASE_URL": e2e_database,
            "SLUICE_PARTNERS_FILE": str(partners_file),
            # Long enough that a loaded machine still answers with the worker's reply.
            "SLUICE_REPLY_TIMEOUT": "30s",
        },
    )
    async with started_ingress(settings) as ingress:
        yield Stack(ingress, e2e_worker, e2e_database, crm_farm)


def _lead_body(partner: str, external: str, payload: dict[str, Any]) -> bytes:
    return json.dumps(
        {"partnerId": partner, "externalLeadId": external, "payload": payload}
    ).encode()


def _hmac_request(external: str) -> tuple[bytes, dict[str, str]]:
    body = _lead_body(
        HMAC_PARTNER,
        external,
        {"contact": {"email": "asha@example.com", "name": "Asha <b>Rao</b>"}, "ref": "P-1"},
    )
    return body, {
        "Content-Type": "application/json",
        "X-Partner-Signature": sign_hmac(body, HMAC_SECRET),
    }


def _bearer_request(external: str) -> tuple[bytes, dict[str, str]]:
    body = _lead_body(BEARER_PARTNER, external, {"phone": "+4915112345678", "listingId": "L-9"})
    return body, {"Content-Type": "application/json", "Authorization": bearer_header(INBOUND_TOKEN)}


def _sw_request(external: str) -> tuple[bytes, dict[str, str]]:
    body = _lead_body(SW_PARTNER, external, {"email": "sw@example.com", "message": "hi"})
    message_id = f"msg_{uuid.uuid4().hex[:12]}"
    timestamp = int(time.time())
    return body, {
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign_standard_webhooks(body, INBOUND_WHSEC, message_id, timestamp),
    }


def _headers(received: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in received.headers.items()}


async def test_one_lead_per_inbound_mode_is_delivered_once_signed(stack: Stack) -> None:
    requests = {
        HMAC_PARTNER: _hmac_request(f"H-{RUN}"),
        BEARER_PARTNER: _bearer_request(f"B-{RUN}"),
        SW_PARTNER: _sw_request(f"S-{RUN}"),
    }
    ids: dict[str, str] = {}
    for partner, (body, headers) in requests.items():
        status, answer = await stack.post_lead(body, headers)
        assert (status, answer["accepted"]) == (202, True), answer
        ids[partner] = answer["id"]
    for lead_id in ids.values():
        await stack.until_delivered(lead_id)

    for partner, lead_id in ids.items():
        [copy] = stack.crm.received(lead_id)
        assert copy.partner == partner
        headers = _headers(copy)
        assert headers["idempotency-key"] == lead_id
        assert json.loads(copy.body)["leadId"] == lead_id
    hmac_copy = json.loads(stack.crm.received(ids[HMAC_PARTNER])[0].body)
    # The partner's mapping applied, the text carried as sent (escaping is the CRM's job).
    assert (hmac_copy["email"], hmac_copy["name"]) == ("asha@example.com", "Asha <b>Rao</b>")
    assert hmac_copy["payload"]["ref"] == "P-1"
    bearer_copy = stack.crm.received(ids[BEARER_PARTNER])[0]
    assert _headers(bearer_copy)["authorization"] == f"Bearer {CRM_TOKEN}"
    sw_copy = stack.crm.received(ids[SW_PARTNER])[0]
    assert Webhook(CRM_WHSEC).verify(sw_copy.body, _headers(sw_copy))["leadId"] == ids[SW_PARTNER]

    status, lead = await stack.internal("GET", f"/internal/v1/leads/{ids[SW_PARTNER]}")
    assert status == 200, lead
    assert (lead["status"], lead["attempts"], lead["partnerId"]) == ("DELIVERED", 1, SW_PARTNER)
    assert [a["httpStatus"] for a in lead["deliveryAttempts"]] == [200]


async def test_a_lead_posted_three_times_is_stored_and_delivered_once(stack: Stack) -> None:
    external = f"TRIPLE-{RUN}"
    body, headers = _hmac_request(external)
    answers = [await stack.post_lead(body, headers) for _ in range(3)]
    assert {status for status, _ in answers} == {202}
    [lead_id] = {answer["id"] for _, answer in answers}
    await stack.until_delivered(lead_id)
    # Give any second copy time to reach the CRM before counting: wait for the worker
    # to have consumed past all three (the deliver-now below is queued behind them).
    status, reply = await stack.internal(
        "POST", "/internal/v1/leads/deliver", {"leadId": lead_id, "partnerId": HMAC_PARTNER}
    )
    assert (status, reply) == (200, {"attempt": 1, "delivered": True})
    assert stack.count_leads(HMAC_PARTNER, external) == 1
    copies = stack.crm.received(lead_id)
    assert len(copies) == 1, copies
    assert stack.lead(lead_id) == ("DELIVERED", 1)


async def test_deliver_now_forced_sends_again_with_the_same_idempotency_key(
    stack: Stack,
) -> None:
    body, headers = _bearer_request(f"FORCE-{RUN}")
    status, answer = await stack.post_lead(body, headers)
    assert status == 202, answer
    lead_id = answer["id"]
    await stack.until_delivered(lead_id)

    status, reply = await stack.internal(
        "POST",
        "/internal/v1/leads/deliver",
        {"leadId": lead_id, "partnerId": BEARER_PARTNER, "force": True, "metadata": {"by": "qa"}},
    )
    assert (status, reply) == (200, {"attempt": 2, "delivered": True})
    copies = stack.crm.received(lead_id)
    assert len(copies) == 2
    assert {_headers(copy)["idempotency-key"] for copy in copies} == {lead_id}
    status, lead = await stack.internal("GET", f"/internal/v1/leads/{lead_id}")
    assert [a["trigger"] for a in lead["deliveryAttempts"]] == ["delivery", "request"]

    status, reply = await stack.internal(
        "POST", "/internal/v1/leads/deliver", {"leadId": lead_id, "partnerId": HMAC_PARTNER}
    )
    assert status == 409, reply
