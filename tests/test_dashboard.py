"""The on-call dashboard (``/admin``) in a real browser: Debian's Chromium, headless,
driven by Playwright with the system browser (never Playwright's own downloads).

A known run goes through a real ingress and worker: three orders (one paid, one failed,
one pending), their webhooks, and a record that is not Avro, dead-lettered on purpose.
The page is opened through its login form with an admin token, shows that run's numbers,
and its replay button puts the dead letter's original record back on its origin topic.
Screenshots are saved under ``tests/artifacts/`` (git-ignored); their paths are printed.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from confluent_kafka import Producer

from ingress.dashboard import agent_rows, funnel
from schemas.agents import AGENT_READS, agents_reading
from schemas.codec import make_codec
from streams.topology import WIRING
from tests.fixtures.ingress import IngressUnderTest, ingress_settings, post_stripe, started_ingress
from tests.fixtures.kafka import header_map, read_topic, value_of
from tests.fixtures.orders import create_order, pay_order
from tests.fixtures.worker import Pipeline
from tests.payloads.stripe import stripe_event

ADMIN_TOKEN = "adm_dashboard_test_0123456789"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = shutil.which("chromium")
CODEC = make_codec(None)


# --- pure ----------------------------------------------------------------------------------


def test_the_agent_reads_match_the_workers_wiring() -> None:
    wired = {w.agent: w.reads for w in WIRING if not w.agent.startswith("retry_")}
    assert dict(AGENT_READS) == wired
    for wire in WIRING:
        for topic in wire.reads:
            assert wire.agent in agents_reading(topic)


def test_the_funnel_and_the_agent_rows() -> None:
    statuses = {"PENDING_PAYMENT": 2, "PAID": 3, "REFUNDED": 1, "PAYMENT_FAILED": 4}
    assert funnel(statuses) == {"created": 10, "pending": 2, "paid": 4, "failed": 4}
    from connectors.group_lag import PartitionLag

    rows = {
        row["agent"]: row
        for row in agent_rows(
            [
                PartitionLag("orders.lifecycle", 0, 5, 9),
                PartitionLag("orders.lifecycle", 1, 7, 7),
                PartitionLag("retry.1s", 0, 2, 3),
            ]
        )
    }
    # One group: both agents reading orders.lifecycle share its offsets.
    for agent in ("project_orders", "notify_lifecycle"):
        assert (rows[agent]["consumed"], rows[agent]["lag"]) == (12, 4)
    assert (rows["retry_1s"]["consumed"], rows["retry_1s"]["lag"]) == (2, 1)
    assert rows["stripe_calls"] == {
        "agent": "stripe_calls",
        "topics": [],
        "consumed": 0,
        "lag": 0,
    }


# --- the run -------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module")
async def dashboard(pipeline: Pipeline) -> AsyncIterator[IngressUnderTest]:
    """An ingress reading the pipeline's database and watching its worker group."""
    settings = ingress_settings(
        pipeline.bootstrap,
        {
            "DATABASE_URL": pipeline.database_url,
            "SLUICE_APP_ID": pipeline.env["SLUICE_APP_ID"],
            "ADMIN_API_TOKEN": ADMIN_TOKEN,
        },
    )
    async with started_ingress(settings) as running:
        yield running


def _produce(bootstrap: str, topic: str, key: str, value: bytes) -> None:
    # Java's partitioner, as the ingress uses: the replay lands on the same partition.
    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "partitioner": "murmur2_random"}
    )
    producer.produce(topic, key=key.encode(), value=value)
    assert producer.flush(30) == 0


async def _known_run(pipeline: Pipeline, run: str) -> dict[str, Any]:
    paid, failed, pending = (f"ord_{run}_{name}" for name in ("paid", "failed", "pending"))
    for order_id in (paid, failed, pending):
        await create_order(pipeline, order_id, 1500)
    await pay_order(pipeline, paid, 1500)
    failure = stripe_event(
        "payment_intent.payment_failed",
        event_id=f"evt_{failed}",
        order_id=failed,
        object_id=f"pi_{failed}",
        amount=1500,
    )
    assert await post_stripe(pipeline.ingress, failure) == 200
    # Dead-lettered on purpose: not Avro, so the normalise agent cannot read it.
    bad_key = f"bad_{run}"
    _produce(pipeline.bootstrap, "webhooks.stripe", bad_key, b"dashboard: this is not avro")

    def statuses() -> dict[str, str]:
        return {str(r[0]): str(r[1]) for r in pipeline.query("SELECT order_id, status FROM orders")}

    await pipeline.wait_for(
        "the orders of the run",
        lambda: statuses() == {paid: "PAID", failed: "PAYMENT_FAILED", pending: "PENDING_PAYMENT"},
    )
    await pipeline.wait_for(
        "both webhooks processed",
        lambda: (
            pipeline.scalar("SELECT count(*) FROM webhook_events WHERE status = 'PROCESSED'") == 2
        ),
    )

    def dead_letter() -> dict[str, Any] | None:
        for message in read_topic(pipeline.bootstrap, "dlq", key=bad_key):
            return CODEC.decode(value_of(message), topic="dlq").record
        return None

    await pipeline.wait_for("the dead letter", lambda: dead_letter() is not None)
    letter = dead_letter()
    assert letter is not None
    return {"bad_key": bad_key, "letter": letter, "webhooks": [f"evt_{paid}", f"evt_{failed}"]}


async def _cells(page: Any, box: str) -> list[list[str]]:
    rows: list[list[str]] = await page.eval_on_selector_all(
        f"#{box} tr",
        "rows => rows.map(r => [...r.children].map(c => c.textContent.trim()))",
    )
    return rows


@pytest.mark.integration
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make tools, as root)")
async def test_the_dashboard_in_a_real_browser(
    pipeline: Pipeline, dashboard: IngressUnderTest
) -> None:
    from playwright.async_api import async_playwright

    run = uuid.uuid4().hex[:8]
    known = await _known_run(pipeline, run)
    ARTIFACTS.mkdir(exist_ok=True)
    base = dashboard.internal

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1600})
            # Without a token: the login form (401), never the data.
            response = await page.goto(f"{base}/admin")
            assert response is not None
            assert response.status == 401
            await page.fill("input[name=token]", ADMIN_TOKEN)
            async with page.expect_navigation():
                await page.click("button[type=submit]")
            assert page.url == f"{base}/admin"
            cookie = next(c for c in await page.context.cookies() if c["name"] == "sluice_admin")
            assert cookie["httpOnly"]
            assert cookie["sameSite"] == "Strict"

            await page.wait_for_selector("#funnel table")
            assert await _cells(page, "funnel") == [
                ["created", "pending", "paid", "failed"],
                ["3", "1", "1", "1"],
            ]
            assert ["PROCESSED", "2"] in await _cells(page, "webhook-statuses")
            webhooks = await _cells(page, "webhooks")
            listed = {row[2] for row in webhooks[1:]}
            assert set(known["webhooks"]) <= listed
            agents = {row[0]: row for row in (await _cells(page, "agents"))[1:]}
            assert int(agents["normalise_webhooks"][2]) > 0  # consumed
            assert int(agents["join_orders"][4]) >= 0  # lag
            assert await page.locator(".notice").count() == 0  # every source is up

            letter = known["letter"]
            row = page.locator("#dead-letters tr", has_text=known["bad_key"])
            await row.wait_for()
            assert "webhooks.stripe" in await row.inner_text()
            assert letter["reason"][:40] in await row.inner_text()
            shot = ARTIFACTS / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)
            print(f"dashboard screenshot: {shot}")

            # The cookie alone cannot replay: the CSRF header is required.
            refused = await page.request.post(
                f"{base}/admin/replay",
                data=json.dumps({"eventId": letter["eventId"]}),
                headers={"Content-Type": "application/json"},
            )
            assert refused.status == 403, await refused.text()

            before = len(read_topic(pipeline.bootstrap, "webhooks.stripe", key=known["bad_key"]))
            await row.locator("button").click()
            # A locator, not wait_for_function: the page's CSP forbids evaluating strings.
            await page.locator("#replay-result", has_text="replayed").wait_for()
            assert letter["eventId"] in await page.inner_text("#replay-result")
            shot = ARTIFACTS / "dashboard-replayed.png"
            await page.screenshot(path=str(shot), full_page=True)
            print(f"dashboard screenshot after the replay: {shot}")
        finally:
            await browser.close()

    again = read_topic(pipeline.bootstrap, "webhooks.stripe", key=known["bad_key"])
    assert len(again) == before + 1
    assert len({message.partition() for message in again}) == 1
    [replayed] = [m for m in again if header_map(m).get("sluice-replay") == "1"]
    assert value_of(replayed) == b"dashboard: this is not avro"
    assert replayed.offset() == max(m.offset() or 0 for m in again)


@pytest.mark.integration
async def test_routes_refuse_and_a_source_down_is_a_notice_not_a_500(
    pipeline: Pipeline, dashboard: IngressUnderTest
) -> None:
    url = dashboard.internal
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/admin/data") as response:
            assert response.status == 401
            assert (await response.json())["error"] == "unauthorized"
        async with http.get(f"{url}/admin", headers={"Accept": "text/html"}) as response:
            assert response.status == 401
            assert "<form" in await response.text()
        internal = {"X-Internal-Token": "tok_current"}  # every scope but admin
        async with http.get(f"{url}/admin/data", headers=internal) as response:
            assert response.status == 403
            assert (await response.json())["scope"] == "admin"
        admin = {"X-Internal-Token": ADMIN_TOKEN}
        for body in ({}, {"probeUnknownField": True}):
            for path in ("/admin/replay", "/admin/login"):
                async with http.post(f"{url}{path}", json=body, headers=admin) as response:
                    answer = await response.json()
                    assert response.status == 400, answer
                    assert answer["field"]
        async with http.post(
            f"{url}/admin/replay", json={"eventId": "no-such-letter"}, headers=admin
        ) as response:
            assert response.status == 404

    # Postgres unreachable: the data still answers 200, naming the source that is down.
    settings = ingress_settings(
        pipeline.bootstrap,
        {"DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none", "ADMIN_API_TOKEN": ADMIN_TOKEN},
    )
    async with (
        started_ingress(settings) as broken,
        broken.http.get(
            f"{broken.internal}/admin/data", headers={"X-Internal-Token": ADMIN_TOKEN}
        ) as response,
    ):
        assert response.status == 200
        data = await response.json()
        assert data["sources"]["postgres"]["ok"] is False
        assert data["sources"]["kafka"]["ok"] is True
        assert "funnel" not in data
