"""Lead delivery end to end: leads.received and deliver-now commands → `sluice worker`
(a real process) → Postgres `leads` → partner CRMs (local aiohttp servers, scripted per
lead: tests/fixtures/crm.py).

Leads and commands are produced with the codec (the ingress route is another part of the
issue). Retries use the test schedule 1s,2s,5s (tests/fixtures/worker.py), so a held
lead comes back every ~5 s and a partner's four attempts take ~8 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from standardwebhooks import Webhook

from connectors.migrate import apply_migrations
from devstack import PostgresServer
from schemas.codec import make_codec
from schemas.headers import record_headers
from schemas.leads import lead_id
from tests.fixtures.crm import Answer, CrmFarm
from tests.fixtures.kafka import read_topic
from tests.fixtures.worker import (
    TEST_RETRY_DELAYS,
    TEST_RETRY_MAX_ATTEMPTS,
    WorkerProcess,
    start_group_at_end,
    wait_until,
)

pytestmark = pytest.mark.integration

CODEC = make_codec(None)
BEARER = "crm-token-7f3a"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FLAKY_ATTEMPTS = 4
# Partner A's CRM is down this long while partner B's leads arrive (the 60 s).
DOWN_S = 60.0


@dataclass
class Leads:
    worker: WorkerProcess
    database_url: str
    bootstrap: str
    crm: CrmFarm

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def lead(self, lead: str) -> tuple[str, int] | None:
        rows = self.query("SELECT status, attempts FROM leads WHERE lead_id = %s", lead)
        return (rows[0][0], rows[0][1]) if rows else None

    def attempts(self, lead: str) -> list[tuple[int, int | None, str | None, str]]:
        return [
            (row[0], row[1], row[2], row[3])
            for row in self.query(
                "SELECT attempt, http_status, error, trigger FROM lead_delivery_attempts "
                "WHERE lead_id = %s ORDER BY attempt",
                lead,
            )
        ]

    async def wait_for(self, what: str, check: Any, timeout_s: float = 90.0) -> None:
        await wait_until(what, check, timeout_s, on_timeout=self.worker.log_tail)

    async def until_status(self, lead: str, status: str, timeout_s: float = 90.0) -> None:
        await self.wait_for(
            f"lead {lead} {status}", lambda: (self.lead(lead) or ("",))[0] == status, timeout_s
        )

    def send_lead(self, partner: str, external: str | None = None, *, times: int = 1) -> str:
        external = external or uuid.uuid4().hex[:12]
        the_id = lead_id(partner, external)
        now_ms = int(time.time() * 1000)
        record = {
            "eventId": the_id,
            "eventType": "lead.received",
            "version": 1,
            "occurredAt": now_ms,
            "correlationId": f"corr-{the_id[:8]}",
            "source": "tests",
            "leadId": the_id,
            "partnerId": partner,
            "externalLeadId": external,
            "name": "Ada Lovelace",
            "email": "ada@example.com",
            "phone": None,
            "listingId": "listing-42",
            "message": "Is it still available?",
            "payload": json.dumps({"contact": {"email": "ada@example.com"}, "ref": external}),
            "idempotencyKey": None,
            "receivedAt": now_ms,
        }
        for _ in range(times):
            self._produce("leads.received", the_id, record)
        return the_id

    def send_command(self, lead: str, partner: str, **fields: Any) -> str:
        task_id = str(uuid.uuid4())
        record = {
            "eventId": str(uuid.uuid4()),
            "eventType": "lead.deliver",
            "version": 1,
            "occurredAt": int(time.time() * 1000),
            "correlationId": f"corr-{task_id[:8]}",
            "source": "tests",
            "leadId": lead,
            "partnerId": partner,
            "attempt": None,
            "force": False,
            "metadata": {"requestedBy": "tests"},
            "taskId": task_id,
            "replyTo": "replies",
            **fields,
        }
        self._produce("commands.leads.deliver", lead, record)
        return task_id

    async def reply(self, task_id: str) -> tuple[int, dict[str, Any]]:
        found: list[dict[str, Any]] = []

        def check() -> bool:
            found[:] = [
                CODEC.decode(m.value() or b"", topic="replies").record
                for m in read_topic(self.bootstrap, "replies", key=task_id, timeout_s=5)
            ]
            return bool(found)

        await self.wait_for(f"the reply to {task_id}", check, 60)
        return int(found[0]["status"]), json.loads(found[0]["body"])

    def dead_letters(self, lead: str) -> list[dict[str, Any]]:
        return [
            CODEC.decode(m.value() or b"", topic="dlq").record
            for m in read_topic(self.bootstrap, "dlq", key=lead, timeout_s=5)
        ]

    def alerts_of(self, dlq_event_id: str) -> list[dict[str, Any]]:
        return [
            alert
            for m in read_topic(self.bootstrap, "alerts", timeout_s=5)
            if (alert := json.loads(m.value() or b"{}")).get("dlqEventId") == dlq_event_id
        ]

    def _produce(self, topic: str, key: str, record: dict[str, Any]) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap, "acks": "all"})
        producer.produce(
            topic,
            key=key.encode(),
            value=CODEC.encode(topic, record),
            headers=list(record_headers(topic, record)),
        )
        assert producer.flush(30) == 0


def _partners(crm: CrmFarm) -> dict[str, Any]:
    inbound = {"auth": "hmac", "secrets": ["inbound-secret"]}

    def partner(name: str, *, reserve: bool = False, **delivery: Any) -> dict[str, Any]:
        url = crm.reserve(name) if reserve else crm.serve(name)
        return {**inbound, "delivery": {"url": url, "timeout": "2s", **delivery}}

    return {
        "partners": {
            "p-none": partner("p-none"),
            "p-bearer": partner("p-bearer", auth="bearer", token=BEARER),
            "p-sw": partner("p-sw", auth="standard-webhooks", secret=WHSEC),
            "p-flaky": partner("p-flaky", timeout="1s", max_attempts=FLAKY_ATTEMPTS),
            "p-down": partner("p-down", reserve=True, timeout="1s", max_attempts=40),
            "p-up": partner("p-up"),
            "p-held": partner("p-held", enabled=False),
        }
    }


@pytest.fixture(scope="module")
def leads(
    catalog_topics: str,
    postgres_server: PostgresServer,
    crm_farm: CrmFarm,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Leads]:
    name = f"sluice_leads_{uuid.uuid4().hex[:6]}"
    database_url = postgres_server.create_database(name)
    apply_migrations(database_url)
    state = tmp_path_factory.mktemp("leads-worker")
    partners_file = Path(state / "partners.json")
    partners_file.write_text(json.dumps(_partners(crm_farm)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "PARTNER_"))}
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": catalog_topics,
        "DATABASE_URL": database_url,
        "SLUICE_APP_ID": name.replace("_", "-"),
        "SLUICE_STATE_DIR": str(state / "state"),
        "SLUICE_RETRY_DELAYS": TEST_RETRY_DELAYS,
        "SLUICE_RETRY_MAX_ATTEMPTS": TEST_RETRY_MAX_ATTEMPTS,
        "SLUICE_LOG_LEVEL": "INFO",
        "SLUICE_PARTNERS_FILE": str(partners_file),
    }
    # Start at the head: other modules' leads (partners this worker does not know) are
    # not this module's business.
    start_group_at_end(env)
    worker = WorkerProcess(env, state / "worker.log")
    worker.start()
    try:
        yield Leads(worker, database_url, catalog_topics, crm_farm)
    finally:
        worker.stop()


def _header(received: Any, name: str) -> str | None:
    return {k.lower(): v for k, v in received.headers.items()}.get(name.lower())


async def test_each_outbound_auth_mode_delivers_once_signed(leads: Leads) -> None:
    ids = {partner: leads.send_lead(partner) for partner in ("p-none", "p-bearer", "p-sw")}
    for lead in ids.values():
        await leads.until_status(lead, "DELIVERED", timeout_s=120)
    for partner, lead in ids.items():
        [copy] = leads.crm.received(lead)
        assert copy.partner == partner
        assert _header(copy, "Idempotency-Key") == lead
        body = json.loads(copy.body)
        assert body["leadId"] == lead
        assert body["email"] == "ada@example.com"
        assert body["payload"]["contact"] == {"email": "ada@example.com"}
        assert leads.attempts(lead) == [(1, 200, None, "delivery")]
        assert leads.lead(lead) == ("DELIVERED", 1)
    [none] = leads.crm.received(ids["p-none"])
    assert _header(none, "Authorization") is None
    assert _header(none, "webhook-signature") is None
    [bearer] = leads.crm.received(ids["p-bearer"])
    assert _header(bearer, "Authorization") == f"Bearer {BEARER}"
    [signed] = leads.crm.received(ids["p-sw"])
    assert _header(signed, "webhook-id") == ids["p-sw"]
    verified = Webhook(WHSEC).verify(signed.body, {k.lower(): v for k, v in signed.headers.items()})
    assert verified["leadId"] == ids["p-sw"]


async def test_500_500_200_is_delivered_on_the_third_attempt(leads: Leads) -> None:
    lead_ext, lead = _new("p-flaky")
    leads.crm.script(lead, Answer(500), Answer(503))
    assert leads.send_lead("p-flaky", lead_ext) == lead
    await leads.until_status(lead, "DELIVERED")
    assert [(a, s, t) for a, s, _, t in leads.attempts(lead)] == [
        (1, 500, "delivery"),
        (2, 503, "retry"),
        (3, 200, "retry"),
    ]
    assert leads.lead(lead) == ("DELIVERED", 3)
    copies = leads.crm.received(lead)
    assert len(copies) == 3
    assert {_header(c, "Idempotency-Key") for c in copies} == {lead}


async def test_retry_after_is_honoured(leads: Leads) -> None:
    lead_ext, lead = _new("p-flaky")
    leads.crm.script(lead, Answer(429, {"Retry-After": "2"}))
    leads.send_lead("p-flaky", lead_ext)
    await leads.until_status(lead, "DELIVERED")
    first, second = leads.crm.received(lead)
    # The test schedule's first delay is 1 s: only the Retry-After explains 2 s.
    assert second.at - first.at >= 2.0, second.at - first.at
    assert [s for _, s, _, _ in leads.attempts(lead)] == [429, 200]


async def test_a_crm_past_its_timeout_is_retried(leads: Leads) -> None:
    lead_ext, lead = _new("p-flaky")
    leads.crm.script(lead, Answer(hang_s=3.0))  # p-flaky's timeout is 1 s
    leads.send_lead("p-flaky", lead_ext)
    await leads.until_status(lead, "DELIVERED")
    first, second = leads.attempts(lead)
    assert first[:2] == (1, None), first
    assert "timed out" in (first[2] or ""), first
    assert second == (2, 200, None, "retry")


async def test_a_4xx_fails_the_lead_with_a_dead_letter_and_an_alert(leads: Leads) -> None:
    lead_ext, lead = _new("p-flaky")
    leads.crm.script(lead, Answer(400))
    leads.send_lead("p-flaky", lead_ext)
    await leads.until_status(lead, "DELIVERY_FAILED")
    await leads.wait_for("the dead letter", lambda: bool(leads.dead_letters(lead)))
    [letter] = leads.dead_letters(lead)
    assert letter["originTopic"] == "leads.received"
    assert letter["errorClass"] == "PermanentError"
    assert "HTTP 400" in letter["reason"]
    await leads.wait_for("the alert", lambda: bool(leads.alerts_of(letter["eventId"])))
    [alert] = leads.alerts_of(letter["eventId"])
    assert alert["eventType"] == "alert.permanent_failure"
    assert [(a, s, t) for a, s, _, t in leads.attempts(lead)] == [(1, 400, "delivery")]
    assert len(leads.crm.received(lead)) == 1


async def test_exhausted_attempts_fail_the_lead_with_an_alert(leads: Leads) -> None:
    lead_ext, lead = _new("p-flaky")
    leads.crm.script(lead, *(Answer(502) for _ in range(FLAKY_ATTEMPTS + 2)))
    leads.send_lead("p-flaky", lead_ext)
    await leads.wait_for("the dead letter", lambda: bool(leads.dead_letters(lead)))
    [letter] = leads.dead_letters(lead)
    assert letter["attempts"] == FLAKY_ATTEMPTS
    await leads.wait_for("the alert", lambda: bool(leads.alerts_of(letter["eventId"])))
    assert leads.alerts_of(letter["eventId"])[0]["eventType"] == "alert.retries_exhausted"
    assert leads.lead(lead) == ("DELIVERY_FAILED", FLAKY_ATTEMPTS)
    assert len(leads.crm.received(lead)) == FLAKY_ATTEMPTS


async def test_a_dead_crm_does_not_delay_another_partners_leads(leads: Leads) -> None:
    down = [leads.send_lead("p-down") for _ in range(3)]
    started = time.monotonic()
    delivered_in: list[float] = []
    while time.monotonic() - started < DOWN_S:
        lead = leads.send_lead("p-up")
        sent = time.monotonic()
        await leads.until_status(lead, "DELIVERED", timeout_s=10)
        delivered_in.append(time.monotonic() - sent)
        await asyncio.sleep(5)
    assert max(delivered_in) < 10, delivered_in
    for lead in down:
        status, attempts = leads.lead(lead) or ("", 0)
        assert status == "RETRYING", status
        assert attempts >= 3, attempts
        assert all(s is None and e and "connection" in e for _, s, e, _ in leads.attempts(lead))
    leads.crm.serve("p-down")
    for lead in down:
        await leads.until_status(lead, "DELIVERED", timeout_s=30)
        assert len(leads.crm.received(lead)) == 1


async def test_the_same_lead_three_times_is_one_row_and_one_delivery(leads: Leads) -> None:
    lead = leads.send_lead("p-none", times=3)
    await leads.until_status(lead, "DELIVERED")
    await asyncio.sleep(2)  # the copies after the first have been consumed by now
    assert leads.query("SELECT count(*) FROM leads WHERE lead_id = %s", lead) == [(1,)]
    copies = leads.crm.received(lead)
    assert len(copies) == 1
    assert leads.attempts(lead) == [(1, 200, None, "delivery")]


async def test_delivery_disabled_holds_the_lead_without_using_attempts(leads: Leads) -> None:
    lead = leads.send_lead("p-held")

    def held_cycles() -> int:
        return len(read_topic(leads.bootstrap, "retry.5s", key=lead, timeout_s=5))

    await leads.wait_for("three held cycles", lambda: held_cycles() >= 3, timeout_s=60)
    assert leads.lead(lead) == ("RECEIVED", 0)
    assert leads.attempts(lead) == []
    assert leads.crm.received(lead) == []
    assert leads.dead_letters(lead) == []


async def test_deliver_now_commands(leads: Leads) -> None:
    # Unknown lead; a lead of another partner.
    status, body = await leads.reply(leads.send_command(str(uuid.uuid4()), "p-none"))
    assert status == 404
    assert body["error"] == "lead_not_found"

    delivered = leads.send_lead("p-none")
    await leads.until_status(delivered, "DELIVERED")
    status, body = await leads.reply(leads.send_command(delivered, "p-bearer"))
    assert status == 409
    assert body["error"] == "partner_mismatch"

    # Already delivered, not forced: no call.
    assert await leads.reply(leads.send_command(delivered, "p-none")) == (
        200,
        {"delivered": True, "attempt": 1},
    )
    # Forced, but the caller's attempt 1 is made already: no call, the current state.
    assert await leads.reply(leads.send_command(delivered, "p-none", force=True, attempt=1)) == (
        200,
        {"delivered": True, "attempt": 1},
    )
    assert len(leads.crm.received(delivered)) == 1
    # Forced: one call now.
    assert await leads.reply(leads.send_command(delivered, "p-none", force=True)) == (
        200,
        {"delivered": True, "attempt": 2},
    )
    assert len(leads.crm.received(delivered)) == 2
    assert leads.attempts(delivered)[-1] == (2, 200, None, "request")

    # A refused lead delivered on request.
    refused_ext, refused = _new("p-flaky")
    leads.crm.script(refused, Answer(400))
    leads.send_lead("p-flaky", refused_ext)
    await leads.until_status(refused, "DELIVERY_FAILED")
    assert await leads.reply(leads.send_command(refused, "p-flaky")) == (
        200,
        {"delivered": True, "attempt": 2},
    )
    assert leads.lead(refused) == ("DELIVERED", 2)

    # A transient failure on request: answered delivered:false, the lead goes on retrying.
    again_ext, again = _new("p-flaky")
    leads.crm.script(again, Answer(400), Answer(500))
    leads.send_lead("p-flaky", again_ext)
    await leads.until_status(again, "DELIVERY_FAILED")
    assert await leads.reply(leads.send_command(again, "p-flaky")) == (
        200,
        {"delivered": False, "attempt": 2},
    )
    await leads.until_status(again, "DELIVERED")
    assert [(a, s, t) for a, s, _, t in leads.attempts(again)] == [
        (1, 400, "delivery"),
        (2, 500, "request"),
        (3, 200, "retry"),
    ]


async def test_sigkill_mid_delivery_redelivers_under_the_same_key(leads: Leads) -> None:
    release = threading.Event()
    lead_ext, lead = _new("p-none")
    leads.crm.script(lead, Answer(release=release))
    try:
        leads.send_lead("p-none", lead_ext)
        await leads.wait_for("the CRM to hold a copy", lambda: bool(leads.crm.received(lead)))
        leads.worker.kill()
        leads.worker.start()
        await leads.until_status(lead, "DELIVERED", timeout_s=120)
    finally:
        release.set()
    assert leads.query("SELECT count(*) FROM leads WHERE lead_id = %s", lead) == [(1,)]
    copies = leads.crm.received(lead)
    assert len(copies) >= 2
    assert {_header(c, "Idempotency-Key") for c in copies} == {lead}
    assert leads.attempts(lead) == [(1, 200, None, "delivery")]


def _new(partner: str) -> tuple[str, str]:
    """A fresh external lead id of ``partner`` and its lead id (to script before sending)."""
    external = uuid.uuid4().hex[:12]
    return external, lead_id(partner, external)


def test_a_bad_partner_entry_stops_the_worker_with_clear_lines(tmp_path: Path) -> None:
    partners = tmp_path / "partners.json"
    partners.write_text(
        json.dumps(
            {
                "partners": {
                    "acme": {
                        "auth": "hmac",
                        "secrets": ["s"],
                        "delivery": {"url": "ftp://crm", "max_attempts": 0},
                    }
                }
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "PARTNER_"))}
    env |= {
        "SLUICE_PARTNERS_FILE": str(partners),
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "sluice", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "partner acme: delivery.url: must be an http:// or https:// URL" in done.stderr
    assert "partner acme: delivery.max_attempts:" in done.stderr
