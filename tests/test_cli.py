"""The operator commands against the real broker: topics, tail, and kcat's view."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from connectors.kafka_admin import create_topics
from schemas.catalog import all_topics, topic_spec
from schemas.codec import make_codec
from sluice.dlq import list_lines, print_dead_letters
from tests.fixtures.ingress import STRIPE_SECRET, IngressUnderTest
from tests.payloads.stripe import signed_stripe_request, stripe_event

pytestmark = pytest.mark.integration


def _sluice(bootstrap: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    return subprocess.run(
        [sys.executable, "-m", "sluice", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )


def test_topics_create_is_idempotent_and_list_shows_the_catalog(catalog_topics: str) -> None:
    created = _sluice(catalog_topics, "topics", "create")
    assert f"0 created, {len(all_topics())} already present" in created.stdout

    rows = [
        line.split("\t") for line in _sluice(catalog_topics, "topics", "list").stdout.splitlines()
    ]
    listed = {name: partitions for name, partitions, _status in rows}
    for spec in all_topics():
        assert listed[spec.name] == str(spec.partitions)
    # Catalog topics nothing reads or writes yet are marked planned, not passed off as built.
    status = {name: state for name, _partitions, state in rows}
    assert status["webhooks.stripe"] == status["orders"] == status["dlq"] == "built"
    assert status["leads.received"] == status["commands.leads.deliver"] == "built"
    assert status["users.contacts"] == status["notifications.requested"] == "built"
    assert status["commands.search.index"] == status["commands.cache.invalidate"] == "built"
    assert status["config.runtime"] == "built"
    assert {spec.name for spec in all_topics() if status[spec.name] == "planned"} == set()


def test_dlq_list_says_so_when_the_dlq_is_empty(catalog_topics: str) -> None:
    # A fresh topic stands in for an empty dlq (the session's dlq holds other tests' letters).
    empty = f"dlq.empty.{uuid.uuid4().hex[:8]}"
    create_topics(catalog_topics, [dataclasses.replace(topic_spec("dlq"), name=empty)])
    out, err = io.StringIO(), io.StringIO()
    lines = list_lines(catalog_topics, make_codec(None), empty)
    assert print_dead_letters(lines, out, topic=empty, err=err) == 0
    assert out.getvalue() == ""  # stdout stays JSON lines only
    assert err.getvalue() == f"no dead letters on {empty}\n"


def test_dlq_list_prints_one_json_line_per_dead_letter() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert print_dead_letters([{"eventId": "a"}, {"eventId": "b"}], out, err=err) == 2
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [
        {"eventId": "a"},
        {"eventId": "b"},
    ]
    assert err.getvalue() == ""


async def _post_stripe(ingress: IngressUnderTest) -> tuple[str, bytes]:
    event = stripe_event("payment_intent.succeeded", event_id=f"evt_{uuid.uuid4().hex[:16]}")
    body, headers = signed_stripe_request(event, STRIPE_SECRET, int(time.time()))
    async with ingress.http.post(
        f"{ingress.public}/v1/webhooks/stripe", data=body, headers=headers
    ) as response:
        assert response.status == 200
    return str(event["id"]), body


async def test_tail_decodes_the_record_with_a_byte_identical_body(
    ingress: IngressUnderTest,
) -> None:
    event_id, body = await _post_stripe(ingress)

    out = _sluice(ingress.bootstrap, "tail", "webhooks.stripe", "--idle-timeout", "3").stdout

    lines = [json.loads(line) for line in out.splitlines()]
    [line] = [line for line in lines if line["key"] == event_id]
    assert line["value"]["rawBody"].encode() == body
    assert line["headers"]["event-type"] == "payment_intent.succeeded"
    assert {"topic", "partition", "offset", "schemaId"} <= line.keys()


async def test_kcat_reads_keys_and_headers_without_decoding_avro(
    ingress: IngressUnderTest,
) -> None:
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.skip("kcat is not installed (make test installs it where apt is available)")
    event_id, _ = await _post_stripe(ingress)

    out = subprocess.run(
        [kcat, "-b", ingress.bootstrap, "-C", "-t", "webhooks.stripe", "-e", "-q", "-f", "%k %h\n"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout

    [line] = [line for line in out.splitlines() if line.startswith(f"{event_id} ")]
    assert "event-type=payment_intent.succeeded" in line
    assert "correlation-id=" in line
