"""Runtime configuration: the declared keys (pure), and against the real broker a running
ingress (in this process) and a running `sluice worker` (a child process) that both follow
the config topic: a change is obeyed by both within 2 s, measured against a deadline; the
routes' answers (version, updatedBy, 409, 428, 400, 404); restarted processes start from
the latest values.

Each module run follows a config topic of its own (``SLUICE_CONFIG_TOPIC``), so nothing
set here reaches another test's processes through the session's ``config.runtime``.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from confluent_kafka import Producer

from base.partners import load_partners
from base.settings import load_settings
from connectors.kafka_admin import create_topics
from connectors.migrate import apply_migrations
from connectors.runtime_config import config_topic_spec
from devstack import PostgresServer
from ingress.scopes import ROUTE_SCOPES
from ingress.verify.partner import sign_hmac
from schemas.codec import make_codec
from schemas.leads import lead_id
from schemas.runtime_keys import (
    DEDUPE_WINDOW,
    NOTIFY_USER_CAP,
    RATE_LIMITED_ROUTES,
    RETRY_DELAYS_KEY,
    BadValue,
    declared_keys,
    format_duration,
    partner_delivery_key,
    partner_enabled_key,
    ratelimit_key,
)
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

RUN = uuid.uuid4().hex[:6]
PARTNER = f"cfg-{RUN}"
HMAC_SECRET = "cfg-inbound-secret"
CONFIG_TOPIC = f"config.runtime.test.{RUN}"
# INTERNAL_API_TOKEN tokens lack config:write; the writes go with an admin token.
CONFIG_WRITER_TOKEN = "tok_cfg_admin_0123456789"
APPLY_WITHIN_S = 2.0
CODEC = make_codec(None)


# -- the declared keys (pure) ------------------------------------------------------------


def _keys(**env: str) -> Any:
    settings = load_settings({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", **env})
    registry = load_partners(None, {"acme": {"auth": "hmac", "secret": "s", "enabled": "true"}})
    return declared_keys(settings, registry)


def test_every_required_key_is_declared_with_its_default_from_settings() -> None:
    keys = _keys(
        SLUICE_DEDUPE_WINDOW="2d",
        SLUICE_NOTIFY_USER_CAP="7",
        SLUICE_FEATURE_FLAGS="new-checkout,beta=false",
    )
    assert keys[DEDUPE_WINDOW].default == 2 * 86400
    assert keys[NOTIFY_USER_CAP].default == 7
    assert keys[RETRY_DELAYS_KEY].default == (5.0, 30.0, 300.0, 1800.0)
    assert keys[RETRY_DELAYS_KEY].live is False
    assert keys[partner_enabled_key("acme")].default is True
    assert keys[partner_delivery_key("acme")].default is False  # no delivery configured
    assert keys["feature.new-checkout"].default is True
    assert keys["feature.beta"].default is False
    assert keys[ratelimit_key("internal.events")].default == 0
    assert "feature.other" not in keys


def test_every_route_has_a_rate_limit_key() -> None:
    # The worker may not import the ingress, so the route names are listed twice.
    public = {"webhook.stripe", "webhook.razorpay", "webhook.partner.leads"}
    assert set(RATE_LIMITED_ROUTES) == public | set(ROUTE_SCOPES)


def test_values_are_checked_against_type_and_bounds() -> None:
    keys = _keys()
    cap = keys[NOTIFY_USER_CAP]
    assert cap.parse(3) == 3
    for bad, why in (
        (0, "at least 1"),
        (10_001, "at most 10000"),
        (True, "integer"),
        ("3", "integer"),
    ):
        with pytest.raises(BadValue, match=why):
            cap.parse(bad)
    window = keys[DEDUPE_WINDOW]
    assert window.parse("3d") == window.parse(259200) == 3 * 86400
    assert window.to_json(window.parse("90m")) == "90m"
    with pytest.raises(BadValue, match="at least 1m"):
        window.parse("30s")
    with pytest.raises(BadValue, match="at most 35d"):  # the Postgres retention backs it
        window.parse("40d")
    with pytest.raises(BadValue, match="true or false"):
        keys[partner_enabled_key("acme")].parse("false")
    delays = keys[RETRY_DELAYS_KEY]
    assert delays.parse(["5s", "5m"]) == delays.parse("5s,5m") == (5.0, 300.0)
    assert delays.to_text((5.0, 300.0)) == '["5s","5m"]'
    with pytest.raises(BadValue, match="no catalog retry topic"):
        delays.parse(["5s", "7s"])
    with pytest.raises(BadValue, match="strictly increasing"):
        delays.parse(["30s", "5s"])
    assert format_duration(0.25) == "250ms"


# -- two running processes ---------------------------------------------------------------


@dataclass
class Stack:
    ingress: IngressUnderTest
    worker: WorkerProcess
    database_url: str
    crm: CrmFarm
    bootstrap: str

    async def get(self, key: str | None = None) -> tuple[int, Any]:
        query = "" if key is None else f"?key={key}"
        async with self.ingress.http.get(
            f"{self.ingress.internal}/internal/v1/config{query}", headers=internal_headers()
        ) as response:
            return response.status, await response.json(content_type=None)

    async def set(self, key: str, value: Any, if_match: int | str | None) -> tuple[int, Any]:
        extra = {} if if_match is None else {"If-Match": str(if_match)}
        async with self.ingress.http.post(
            f"{self.ingress.internal}/internal/v1/config",
            json={"key": key, "value": value},
            headers=internal_headers(CONFIG_WRITER_TOKEN, **extra),
        ) as response:
            return response.status, await response.json(content_type=None)

    async def post_lead(self, external: str) -> int:
        body = json.dumps(
            {
                "partnerId": PARTNER,
                "externalLeadId": external,
                "payload": {"contact": {"email": "cfg@example.com"}},
            }
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Partner-Signature": sign_hmac(body, HMAC_SECRET),
        }
        async with self.ingress.http.post(
            f"{self.ingress.public}/v1/webhooks/partner/leads", data=body, headers=headers
        ) as response:
            return response.status

    def produce_lead(self, external: str) -> str:
        """A lead straight onto leads.received (as if the door had taken it earlier)."""
        the_id = lead_id(PARTNER, external)
        now_ms = int(time.time() * 1000)
        record = {
            "eventId": the_id,
            "eventType": "lead.received",
            "version": 1,
            "occurredAt": now_ms,
            "correlationId": f"corr-{the_id[:8]}",
            "source": "tests",
            "leadId": the_id,
            "partnerId": PARTNER,
            "externalLeadId": external,
            "name": None,
            "email": "cfg@example.com",
            "phone": None,
            "listingId": None,
            "message": None,
            "payload": "{}",
            "idempotencyKey": None,
            "receivedAt": now_ms,
        }
        producer = Producer({"bootstrap.servers": self.bootstrap})
        producer.produce("leads.received", key=the_id, value=CODEC.encode("leads.received", record))
        assert producer.flush(30) == 0
        return the_id

    def lead(self, the_id: str) -> tuple[str, int] | None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT status, attempts FROM leads WHERE lead_id = %s", (the_id,)
            ).fetchone()
        return (row[0], row[1]) if row else None

    def worker_log_has(self, *needles: str) -> bool:
        return any(
            all(n in line for n in needles) for line in self.worker.log_tail(4000).splitlines()
        )

    async def until_delivered(self, the_id: str) -> None:
        await wait_until(
            f"lead {the_id} DELIVERED",
            lambda: (self.lead(the_id) or ("",))[0] == "DELIVERED",
            120,
            on_timeout=self.worker.log_tail,
        )


@pytest.fixture(scope="module")
def partners_file(crm_farm: CrmFarm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg-partners") / "partners.json"
    partners = {
        PARTNER: {
            "auth": "hmac",
            "secrets": [HMAC_SECRET],
            "mapping": {"email": "contact.email"},
            "delivery": {"url": crm_farm.serve(PARTNER), "timeout": "2s"},
        }
    }
    path.write_text(json.dumps({"partners": partners}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def config_topic(catalog_topics: str) -> str:
    create_topics(catalog_topics, [config_topic_spec(CONFIG_TOPIC)])
    return CONFIG_TOPIC


@pytest.fixture(scope="module")
def cfg_worker(
    catalog_topics: str,
    config_topic: str,
    postgres_server: PostgresServer,
    partners_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[WorkerProcess, str]]:
    database_url = postgres_server.create_database(f"sluice_cfg_{RUN}")
    apply_migrations(database_url)
    state = tmp_path_factory.mktemp("cfg-worker")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "PARTNER_"))}
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": catalog_topics,
        "DATABASE_URL": database_url,
        "SLUICE_APP_ID": f"sluice-cfg-{RUN}",
        "SLUICE_STATE_DIR": str(state / "state"),
        "SLUICE_RETRY_DELAYS": TEST_RETRY_DELAYS,
        "SLUICE_RETRY_MAX_ATTEMPTS": TEST_RETRY_MAX_ATTEMPTS,
        "SLUICE_PARTNERS_FILE": str(partners_file),
        "SLUICE_CONFIG_TOPIC": config_topic,
        "SLUICE_NOTIFY_ON": "",
        "SLUICE_LOG_LEVEL": "INFO",
    }
    start_group_at_end(env)
    worker = WorkerProcess(env, state / "worker.log")
    worker.start()
    try:
        yield worker, database_url
    finally:
        worker.stop()


@pytest_asyncio.fixture(scope="module")
async def stack(
    catalog_topics: str,
    config_topic: str,
    partners_file: Path,
    cfg_worker: tuple[WorkerProcess, str],
    crm_farm: CrmFarm,
) -> AsyncIterator[Stack]:
    worker, database_url = cfg_worker
    settings = ingress_settings(
        catalog_topics,
        {
            "SLUICE_PARTNERS_FILE": str(partners_file),
            "SLUICE_CONFIG_TOPIC": config_topic,
            "ADMIN_API_TOKEN": CONFIG_WRITER_TOKEN,
        },
    )
    async with started_ingress(settings) as ingress:
        yield Stack(ingress, worker, database_url, crm_farm, catalog_topics)


@pytest.mark.integration
async def test_get_shows_defaults_at_version_0(stack: Stack) -> None:
    status, body = await stack.get(NOTIFY_USER_CAP)
    assert status == 200
    assert body == {
        "key": NOTIFY_USER_CAP,
        "value": 10,
        "version": 0,
        "updatedAt": None,
        "updatedBy": None,
        "type": "int",
        "live": True,
    }
    status, listing = await stack.get()
    assert status == 200
    keys = [entry["key"] for entry in listing["entries"]]
    assert keys == sorted(keys)
    assert {DEDUPE_WINDOW, RETRY_DELAYS_KEY, partner_enabled_key(PARTNER)} <= set(keys)
    assert (await stack.get("no.such.key"))[0] == 404


@pytest.mark.integration
async def test_a_write_is_versioned_and_names_who_wrote_it(stack: Stack) -> None:
    key = ratelimit_key("internal.events")
    status, body = await stack.set(key, 50, 0)
    assert (status, body) == (200, {"key": key, "value": 50, "version": 1})
    status, body = await stack.get(key)
    assert status == 200
    assert (body["value"], body["version"]) == (50, 1)
    assert body["updatedAt"].endswith("Z")
    # The token's name (the first ADMIN_API_TOKEN is admin-1), never the token.
    assert body["updatedBy"] == "admin-1"
    # The version the caller read is the one to send; quoted (an ETag) works too.
    assert (await stack.set(key, 60, '"1"'))[0] == 200
    assert (await stack.get(key))[1]["version"] == 2


@pytest.mark.integration
async def test_stale_missing_or_bad_preconditions_and_values_are_refused(stack: Stack) -> None:
    key = ratelimit_key("internal.leads.deliver")
    assert (await stack.set(key, 5, 0))[0] == 200
    status, body = await stack.set(key, 6, 0)  # stale: it is at 1 now
    assert status == 409
    assert (body["error"], body["version"]) == ("conflict", 1)
    status, body = await stack.set(key, 6, None)
    assert (status, body["error"]) == (428, "precondition_required")
    status, body = await stack.set(key, 6, "latest")
    assert (status, body["field"]) == (400, "If-Match")
    status, body = await stack.set(NOTIFY_USER_CAP, 0, 0)
    assert (status, body["field"]) == (400, "value")
    assert "at least 1" in body["detail"]
    status, body = await stack.set(DEDUPE_WINDOW, "5 fortnights", 0)
    assert (status, body["field"]) == (400, "value")
    status, body = await stack.set("feature.nope", True, 0)
    assert (status, body["field"]) == (400, "key")
    assert "unknown config key" in body["detail"]
    # Nothing refused was written.
    assert (await stack.get(key))[1]["version"] == 1
    assert (await stack.get(NOTIFY_USER_CAP))[1]["version"] == 0


@pytest.mark.integration
async def test_disabling_a_partner_is_obeyed_by_the_ingress_and_the_worker_within_2s(
    stack: Stack,
) -> None:
    # Both processes work before: a lead through the door is delivered.
    assert await stack.post_lead(f"before-{RUN}") == 202
    await stack.until_delivered(lead_id(PARTNER, f"before-{RUN}"))

    key = partner_enabled_key(PARTNER)
    version = (await stack.get(key))[1]["version"]
    status, body = await stack.set(key, False, version)
    assert status == 200, body
    written = time.monotonic()
    deadline = written + APPLY_WITHIN_S
    new_version = body["version"]

    # The ingress: its next lead is refused, by the deadline.
    refused_at = None
    n = 0
    while refused_at is None and time.monotonic() < deadline + 1.0:
        n += 1
        if await stack.post_lead(f"door-{RUN}-{n}") == 403:
            refused_at = time.monotonic()
    assert refused_at is not None, "the ingress never refused the lead"
    assert refused_at <= deadline, f"the ingress obeyed after {refused_at - written:.2f}s"

    # The worker: it logs the change it applied, by the deadline.
    applied_at = None
    needles = ('"runtime config applied"', f'"key": "{key}"', f'"version": {new_version}')
    while time.monotonic() < deadline + 1.0:
        if stack.worker_log_has(*needles):
            applied_at = time.monotonic()
            break
        await asyncio.sleep(0.05)
    assert applied_at is not None, stack.worker.log_tail()
    assert applied_at <= deadline, f"the worker applied it after {applied_at - written:.2f}s"

    # ... and obeys it: a lead taken earlier is held, not delivered.
    held = stack.produce_lead(f"held-{RUN}")
    await wait_until(
        "the held lead's hold",
        lambda: stack.worker_log_has(f"partner {PARTNER} or its delivery is disabled"),
        60,
        on_timeout=stack.worker.log_tail,
    )
    assert stack.lead(held) == ("RECEIVED", 0)
    assert stack.crm.received(held) == []

    # Switched back on: the held lead goes out (no restart).
    assert (await stack.set(key, True, new_version))[0] == 200
    await stack.until_delivered(held)
    assert await stack.post_lead(f"after-{RUN}") == 202


@pytest.mark.integration
async def test_restarted_processes_start_from_the_latest_values(
    stack: Stack, catalog_topics: str, partners_file: Path, config_topic: str
) -> None:
    key = partner_enabled_key(PARTNER)
    version = (await stack.get(key))[1]["version"]
    assert (await stack.set(key, False, version))[0] == 200
    cap_version = (await stack.get(NOTIFY_USER_CAP))[1]["version"]
    assert (await stack.set(NOTIFY_USER_CAP, 3, cap_version))[0] == 200

    # A new ingress: the latest values before it serves its first request.
    settings = ingress_settings(
        catalog_topics,
        {"SLUICE_PARTNERS_FILE": str(partners_file), "SLUICE_CONFIG_TOPIC": config_topic},
    )
    async with started_ingress(settings) as fresh:
        other = dataclasses.replace(stack, ingress=fresh)
        assert await other.post_lead(f"fresh-{RUN}") == 403
        status, body = await other.get(NOTIFY_USER_CAP)
        assert (status, body["value"], body["version"]) == (200, 3, cap_version + 1)

    # The worker, restarted: it reads the topic to its end before it consumes.
    stack.worker.stop()
    log_size = stack.worker.log_path.stat().st_size
    stack.worker.start()

    def since_restart() -> str:
        return stack.worker.log_path.read_text(errors="replace")[log_size:]

    await wait_until(
        "the restarted worker ready",
        lambda: '"worker ready"' in since_restart(),
        120,
        on_timeout=stack.worker.log_tail,
    )
    text = since_restart()
    assert text.index(f'"key": "{key}"') < text.index('"worker ready"')
    held = stack.produce_lead(f"restart-held-{RUN}")
    await wait_until(
        "the held lead's hold after the restart",
        lambda: f"partner {PARTNER} or its delivery is disabled" in since_restart(),
        60,
        on_timeout=stack.worker.log_tail,
    )
    assert stack.lead(held) == ("RECEIVED", 0)
    # Back on for whoever runs next in this module.
    version = (await stack.get(key))[1]["version"]
    assert (await stack.set(key, True, version))[0] == 200
    await stack.until_delivered(held)


@pytest.mark.integration
async def test_a_value_a_process_cannot_apply_is_logged_not_fatal(stack: Stack) -> None:
    before = (await stack.get(NOTIFY_USER_CAP))[1]
    now_ms = int(time.time() * 1000)
    record = {
        "eventId": str(uuid.uuid4()),
        "eventType": "config.updated",
        "version": 2,
        "occurredAt": now_ms,
        "correlationId": "corr-bad-config",
        "source": "tests",
        "key": NOTIFY_USER_CAP,
        "value": "0",  # below the key's bound: written by something other than the route
        "configVersion": 99,
        "updatedAt": now_ms,
        "updatedBy": "tests",
    }
    producer = Producer({"bootstrap.servers": stack.bootstrap})
    producer.produce(
        CONFIG_TOPIC, key=NOTIFY_USER_CAP, value=CODEC.encode("config.runtime", record)
    )
    assert producer.flush(30) == 0
    await wait_until(
        "the worker refusing the entry",
        lambda: stack.worker_log_has("runtime config entry cannot be applied", NOTIFY_USER_CAP),
        30,
        on_timeout=stack.worker.log_tail,
    )
    assert stack.worker.alive()
    after = (await stack.get(NOTIFY_USER_CAP))[1]
    assert (after["value"], after["version"]) == (before["value"], before["version"])
