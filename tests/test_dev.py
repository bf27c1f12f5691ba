"""`sluice dev`: writes dev.env, serves signed webhooks, and stops cleanly on Ctrl-C.

The session's services are passed in through their URLs, which is also the documented
way to make `sluice dev` reuse services it did not start; the embedded stack's own start
and stop are covered in test_embedded_stack.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from devstack import PostgresServer, RedisServer, free_port
from sluice.dev import dev_secrets, read_env_file, write_env_file
from tests.fixtures.kafka import read_topic
from tests.payloads.stripe import signed_stripe_request, stripe_event


def test_env_file_round_trips_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "dev.env"
    write_env_file(path, {"B": "2", "A": "x=y"})
    assert read_env_file(path) == {"A": "x=y", "B": "2"}
    assert path.stat().st_mode & 0o777 == 0o600


def test_dev_secrets_keep_given_values_and_generate_the_rest() -> None:
    made = dev_secrets({"STRIPE_WEBHOOK_SECRET": "whsec_mine"})
    assert made["STRIPE_WEBHOOK_SECRET"] == "whsec_mine"
    assert made["RAZORPAY_WEBHOOK_SECRET"] != dev_secrets({})["RAZORPAY_WEBHOOK_SECRET"]


@pytest.mark.integration
def test_sluice_dev_serves_webhooks_and_stops_on_ctrl_c(
    tmp_path: Path,
    catalog_topics: str,
    postgres_server: PostgresServer,
    redis_server: RedisServer,
) -> None:
    public_port, internal_port = free_port(0), free_port(0)
    env = {k: v for k, v in os.environ.items() if not k.endswith(("_SECRET", "_TOKEN"))}
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": catalog_topics,
        "DATABASE_URL": postgres_server.url,
        "REDIS_URL": redis_server.url,
        "INGRESS_PUBLIC_PORT": str(public_port),
        "INGRESS_INTERNAL_PORT": str(internal_port),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "sluice", "dev", "--data-dir", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(f"http://127.0.0.1:{internal_port}/readyz", process)
        written = read_env_file(tmp_path / "dev.env")
        assert written["KAFKA_BOOTSTRAP_SERVERS"] == catalog_topics
        assert written["STRIPE_WEBHOOK_SECRET"].startswith("whsec_")
        # A local Stripe-compatible API for the payment commands, with its key.
        assert written["STRIPE_API_KEY"].startswith("sk_test_")
        stripe_api = urllib.request.Request(  # noqa: S310 - loopback
            f"{written['STRIPE_API_BASE']}/v1/payment_intents?limit=1",
            headers={"Authorization": f"Bearer {written['STRIPE_API_KEY']}"},
        )
        with urllib.request.urlopen(stripe_api, timeout=30) as response:  # noqa: S310 - loopback
            assert response.status == 200

        event = stripe_event("payment_intent.succeeded", event_id=f"evt_{uuid.uuid4().hex[:16]}")
        body, headers = signed_stripe_request(
            event, written["STRIPE_WEBHOOK_SECRET"], int(time.time())
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{public_port}/v1/webhooks/stripe", data=body, headers=headers
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            assert response.status == 200
        assert len(read_topic(catalog_topics, "webhooks.stripe", key=str(event["id"]))) == 1
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "STRIPE_WEBHOOK_SECRET=" in output


def _wait_for(url: str, process: subprocess.Popen[str], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} not ready after {timeout_s}s")
