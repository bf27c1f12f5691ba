"""Every line a `sluice ingress` and a `sluice worker` process write is one JSON object
with the log keys, through a broker outage (librdkafka's, aiokafka's and faust's lines
included), and the lines about a request or a record carry its correlation id, event id
and trace id."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from confluent_kafka import Producer

from devstack import KafkaBroker
from devstack.ports import free_port
from tests.fixtures.ingress import STRIPE_SECRET
from tests.fixtures.worker import Pipeline
from tests.payloads.stripe import signed_stripe_request, stripe_event

pytestmark = pytest.mark.integration

LOG_KEYS = {"ts", "level", "logger", "msg"}


def lines_of(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` as JSON (fails naming the first line that is not)."""
    parsed = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            found = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path.name}:{number} is not JSON: {line[:300]!r}") from None
        assert isinstance(found, dict), f"{path.name}:{number}: {line[:300]!r}"
        assert found.keys() >= LOG_KEYS, f"{path.name}:{number} lacks log keys: {line[:300]}"
        parsed.append(found)
    return parsed


async def test_every_line_of_ingress_and_worker_is_json_through_a_broker_outage(
    pipeline: Pipeline, kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    public, internal = free_port(), free_port()
    env = dict(pipeline.env) | {
        "STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
        "RAZORPAY_WEBHOOK_SECRET": "rzp_test_secret",
        "INGRESS_PUBLIC_HOST": "127.0.0.1",
        "INGRESS_PUBLIC_PORT": str(public),
        "INGRESS_INTERNAL_PORT": str(internal),
        "SLUICE_PUBLISH_TIMEOUT_S": "3",
    }
    out, err = tmp_path / "ingress.out", tmp_path / "ingress.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        ingress = subprocess.Popen(
            [sys.executable, "-m", "sluice", "ingress"],
            env=env,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

            async def ready() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{internal}/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            async def wait_ready(timeout_s: float) -> None:
                deadline = time.monotonic() + timeout_s
                while not await ready():
                    assert ingress.poll() is None, err.read_text()[-2000:]
                    assert time.monotonic() < deadline, err.read_text()[-2000:]
                    await asyncio.sleep(0.3)

            await wait_ready(60)
            await pipeline.wait_for(
                "the worker ready",
                lambda: "worker.ready" in pipeline.worker.log_path.read_text(errors="replace"),
            )

            # A refused request: its line carries the correlation id and the caller's trace.
            trace_id = uuid.uuid4().hex
            async with http.post(
                f"http://127.0.0.1:{public}/v1/webhooks/stripe",
                data=b"{}",
                headers={
                    "Content-Type": "application/json",
                    "X-Correlation-Id": "corr-refused-1",
                    "traceparent": f"00-{trace_id}-{'1' * 16}-01",
                },
            ) as refused:
                assert refused.status == 401
            event = stripe_event("payment_intent.succeeded", event_id=f"evt_{uuid.uuid4().hex}")
            body, headers = signed_stripe_request(event, STRIPE_SECRET, int(time.time()))
            async with http.post(
                f"http://127.0.0.1:{public}/v1/webhooks/stripe", data=body, headers=headers
            ) as accepted:
                assert accepted.status == 200

            # A record the worker cannot read: its dead-letter line names the record.
            bad_trace = uuid.uuid4().hex
            producer = Producer({"bootstrap.servers": pipeline.bootstrap})
            producer.produce(
                "webhooks.stripe",
                key=b"evt_unreadable",
                value=b"not avro",
                headers=[
                    ("event-id", b"evt-unreadable-1"),
                    ("correlation-id", b"corr-unreadable-1"),
                    ("traceparent", f"00-{bad_trace}-{'2' * 16}-01".encode()),
                ],
            )
            assert producer.flush(30) == 0
            await pipeline.wait_for(
                "the unreadable record dead-lettered",
                lambda: "evt-unreadable-1" in pipeline.worker.log_path.read_text(errors="replace"),
            )

            # The broker goes away for a while, then comes back.
            await asyncio.to_thread(kafka_broker.stop)
            try:
                deadline = time.monotonic() + 30
                while await ready():
                    assert time.monotonic() < deadline, "the ingress stayed ready"
                    await asyncio.sleep(0.5)
                await asyncio.sleep(3)  # the clients' reconnect attempts are logged
            finally:
                await asyncio.to_thread(kafka_broker.start)
            await wait_ready(90)
            assert await post_stripe_to(http, public) == 200
    finally:
        ingress.send_signal(signal.SIGTERM)
        try:
            ingress.wait(timeout=30)
        except subprocess.TimeoutExpired:
            ingress.kill()
            ingress.wait(timeout=10)
    pipeline.worker.stop()
    try:
        ingress_lines = lines_of(err)
        assert out.read_text() == ""  # nothing on stdout: no exporter, no prints
        worker_lines = lines_of(pipeline.worker.log_path)
    finally:
        pipeline.worker.start()  # the module's pipeline, for whoever comes next

    loggers = {line["logger"] for line in ingress_lines}
    assert "librdkafka" in loggers, sorted(loggers)
    (refusal,) = [line for line in ingress_lines if line.get("correlation_id") == "corr-refused-1"]
    assert refusal["msg"] == "request refused"
    assert refusal["trace_id"] == trace_id

    worker_loggers = {line["logger"].split(".")[0] for line in worker_lines}
    assert {"faust", "aiokafka"} & worker_loggers, sorted(worker_loggers)
    dead = [line for line in worker_lines if line.get("event_id") == "evt-unreadable-1"]
    assert dead, "no line names the unreadable record"
    for line in dead:
        assert line["correlation_id"] == "corr-unreadable-1"
        assert line["trace_id"] == bad_trace


async def post_stripe_to(http: aiohttp.ClientSession, port: int) -> int:
    event = stripe_event("payment_intent.succeeded", event_id=f"evt_{uuid.uuid4().hex}")
    body, headers = signed_stripe_request(event, STRIPE_SECRET, int(time.time()))
    async with http.post(
        f"http://127.0.0.1:{port}/v1/webhooks/stripe", data=body, headers=headers
    ) as response:
        return response.status
