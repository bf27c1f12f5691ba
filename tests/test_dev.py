"""`sluice dev`: writes dev.env, serves signed webhooks, and stops cleanly on Ctrl-C.

The session's services are passed in through their URLs, which is also the documented
way to make `sluice dev` reuse services it did not start; the embedded stack's own start
and stop are covered in test_embedded_stack.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from base.partners import load_partners
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
        # A consumer group of its own on the shared broker.
        "SLUICE_APP_ID": f"sluice-dev-test-{uuid.uuid4().hex[:8]}",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "sluice", "dev", "--data-dir", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = _Lines(process)
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
        # The banner with every setting comes once the worker consumes too.
        lines.wait_for(lambda line: '"event": "dev.ready"' in line, timeout_s=240)
        # Three demo partners, delivering to the local CRM, which is up.
        assert written["SLUICE_PARTNERS_FILE"] == str(tmp_path / "partners.json")
        partners = load_partners(Path(written["SLUICE_PARTNERS_FILE"]), {})
        assert sorted(p.id for p in partners) == ["demo-bearer", "demo-hmac", "demo-sw"]
        crm_url = partners.get("demo-hmac").delivery.url  # type: ignore[union-attr]
        assert crm_url is not None
        assert crm_url.startswith("http://127.0.0.1:")
        delivery = urllib.request.Request(crm_url, data=b'{"leadId": "l-1"}')  # noqa: S310
        with urllib.request.urlopen(delivery, timeout=30) as response:  # noqa: S310 - loopback
            assert response.status == 200
        assert "l-1" in (tmp_path / "crm" / "demo-hmac.jsonl").read_text()
        # The local SMTP server and SMS/push sink, named in dev.env for the worker.
        smtp_url, sms_url = written["SMTP_URL"], written["SMS_WEBHOOK_URL"]
        assert written["PUSH_WEBHOOK_URL"] == sms_url.removesuffix("/sms") + "/push"
        _send_mail(smtp_url)
        assert len(list((tmp_path / "mail").glob("*.eml"))) == 1
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    output = "\n".join(lines.join())
    assert process.returncode == 0, output
    assert "STRIPE_WEBHOOK_SECRET=" in output
    assert "sluice leads send --partner demo-sw" in output
    assert "X-Partner-Signature" in output
    assert "/internal/v1/notifications/send" in output
    assert f"{tmp_path / 'mail'}/" in output
    # The CRM stopped with the rest.
    with pytest.raises(urllib.error.URLError, match="refused"):
        urllib.request.urlopen(crm_url, data=b"{}", timeout=5)  # noqa: S310 - loopback
    # So did the mail server and the message sink.
    with pytest.raises(ConnectionRefusedError):
        _send_mail(smtp_url)
    with pytest.raises(urllib.error.URLError, match="refused"):
        urllib.request.urlopen(sms_url, data=b"To=x&Body=y", timeout=5)  # noqa: S310 - loopback


def _send_mail(smtp_url: str) -> None:
    parsed = urllib.parse.urlsplit(smtp_url)
    assert parsed.hostname is not None
    assert parsed.port is not None
    with smtplib.SMTP(parsed.hostname, parsed.port, timeout=10) as client:
        client.sendmail("shop@example.com", ["ana@example.com"], b"Subject: hi\r\n\r\nhello\r\n")


def _wait_for(url: str, process: subprocess.Popen[str], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"sluice dev exited with {process.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} not ready after {timeout_s}s")


# --------------------------------------------------------------------------- output and
# the README's Try-it block, against a `sluice dev` that starts its own stack.

_SERVICE_SETTINGS = (
    "KAFKA_BOOTSTRAP_SERVERS",
    "DATABASE_URL",
    "REDIS_URL",
    "ELASTICSEARCH_URL",
    "STRIPE_API_KEY",
    "STRIPE_API_BASE",
    "SCHEMA_REGISTRY_URL",
)
README = Path(__file__).resolve().parent.parent / "README.md"
_TRY_IT_MARKER = "<!-- tests/test_dev.py runs this block against `sluice dev` -->"


def readme_try_it_block() -> str:
    """The fenced block right after the marker in the README's "Try it" section."""
    text = README.read_text()
    after = text[text.index(_TRY_IT_MARKER) + len(_TRY_IT_MARKER) :]
    opening = after.index("```sh\n") + len("```sh\n")
    return after[opening : after.index("\n```", opening)]


class _Lines:
    """Every line ``process`` writes, collected by a thread, waited on with a bound."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._process = process
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], timeout_s: float) -> int:
        """Index of the first line matching ``predicate``; fails after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for index, line in enumerate(self.lines):
                    if predicate(line):
                        return index
                left = deadline - time.monotonic()
                so_far = "no such line; output so far:\n" + "\n".join(self.lines[-40:])
                assert left > 0, so_far
                assert self._process.poll() is None, so_far
                self._changed.wait(min(left, 1.0))

    def quiet_for(self, seconds: float) -> list[str]:
        """The lines that arrive within ``seconds`` (a bounded wait for nothing to come)."""
        with self._changed:
            count = len(self.lines)
            self._changed.wait_for(lambda: len(self.lines) > count, timeout=seconds)
            return self.lines[count:]

    def join(self) -> list[str]:
        self._thread.join(timeout=60)
        return self.lines


def _json_or_none(line: str) -> dict[str, object] | None:
    try:
        parsed = json.loads(line)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


@pytest.fixture
def tmp_path_outside_pytest() -> Iterator[Path]:
    """A fresh directory directly under the system's temp directory.

    PostgreSQL runs as its own user and must traverse every parent of its data
    directory; pytest resets its base temp directory to 0700 whenever a session starts,
    which another pytest session on the machine may do at any moment.
    """
    path = Path(tempfile.mkdtemp(prefix="sluice-dev-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_sluice_dev_logs_only_json_says_ready_last_and_the_readme_runs(
    tmp_path_outside_pytest: Path,
) -> None:
    # As a developer runs it: `make dev` from the repository root, its own stack.
    tmp_path = tmp_path_outside_pytest
    data_dir = tmp_path / ".data" / "dev"
    (tmp_path / ".venv").symlink_to(sys.prefix)  # the venv running the tests
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith(("_SECRET", "_TOKEN"))
        and not k.startswith(("INGRESS_", "SLUICE_"))
        and k not in _SERVICE_SETTINGS
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "sluice", "dev", "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = _Lines(process)
    try:
        banner = output.wait_for(
            lambda line: (_json_or_none(line) or {}).get("event") == "dev.ready", timeout_s=600
        )
        # Nothing else follows the banner once everything is ready.
        assert output.quiet_for(3.0) == []
        lines = output.lines[: banner + 1]
        assert [line for line in lines if _json_or_none(line) is None] == []
        ready = [i for i, line in enumerate(lines) if '"event": "worker.ready"' in line]
        assert ready, "the worker never said it consumes"
        assert ready[0] < banner, "the banner came before the worker consumed"
        assert len(lines) < 60, f"{len(lines)} start-up lines bury the banner"

        tried = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", readme_try_it_block()],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert tried.returncode == 0, tried.stdout + tried.stderr
        assert '{"received": true}' in tried.stdout.replace(
            '{"received":true}', '{"received": true}'
        )
        assert " PAID" in tried.stdout
        assert "order.paid" in tried.stdout
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    everything = output.join()
    assert [line for line in everything if _json_or_none(line) is None] == []
    assert process.returncode == 0, "\n".join(everything[-40:])
