"""The operator commands against the real broker: topics, tail, and kcat's view."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from schemas.catalog import all_topics
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

    listed = dict(
        line.split("\t") for line in _sluice(catalog_topics, "topics", "list").stdout.splitlines()
    )
    for spec in all_topics():
        assert listed[spec.name] == str(spec.partitions)


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
