"""Notification sending end to end: notifications.requested and users.contacts →
`sluice worker` (a real process) → Postgres `notifications`, `user_contacts` → the local
SMTP server (aiosmtpd) and SMS/push sink (devstack/mail.py, tests/fixtures/mailboxes.py).

Requests and contact events are produced with the codec, except in the last test, which
goes through the send route; the lifecycle mapping has its own module
(tests/test_notify_lifecycle.py). Retries use the test schedule 1s,2s,5s
(tests/fixtures/worker.py). The per-user cap is 3 a minute here, so every test sends to
recipients of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer

from connectors.migrate import apply_migrations
from devstack import PostgresServer
from schemas.codec import make_codec
from schemas.headers import record_headers
from schemas.notifications import notification_id_for_request
from tests.fixtures.ingress import ingress_settings, internal_headers, started_ingress
from tests.fixtures.kafka import read_topic
from tests.fixtures.mailboxes import Mailboxes
from tests.fixtures.worker import (
    TEST_RETRY_DELAYS,
    TEST_RETRY_MAX_ATTEMPTS,
    WorkerProcess,
    start_group_at_end,
    wait_until,
)

pytestmark = pytest.mark.integration

CODEC = make_codec(None)
CAP = 3
ORDER = {"order_id": "ord_1001", "amount_minor": 2500, "currency": "usd", "name": "Ada <b>"}
SMS_DOWN_S = 30.0


@dataclass
class Notify:
    worker: WorkerProcess
    database_url: str
    bootstrap: str
    boxes: Mailboxes

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def row(self, notification_id: str) -> dict[str, Any] | None:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cursor = conn.execute("SELECT * FROM notifications WHERE id = %s", (notification_id,))
            found = cursor.fetchone()
            names = [c.name for c in cursor.description or ()]
        return dict(zip(names, found, strict=True)) if found else None

    def status(self, notification_id: str) -> str | None:
        row = self.row(notification_id)
        return row["status"] if row else None

    async def wait_for(self, what: str, check: Any, timeout_s: float = 90.0) -> None:
        await wait_until(what, check, timeout_s, on_timeout=self.worker.log_tail)

    async def until_status(self, notification_id: str, status: str, timeout_s: float = 90) -> None:
        await self.wait_for(
            f"notification {notification_id} {status}",
            lambda: self.status(notification_id) == status,
            timeout_s,
        )

    def request(
        self,
        channel: str,
        to: str,
        *,
        template: str = "ORDER_PAID",
        data: dict[str, Any] | None = None,
        times: int = 1,
    ) -> str:
        key = uuid.uuid4().hex
        notification_id = notification_id_for_request(key)
        record = {
            "eventId": str(uuid.uuid4()),
            "eventType": "notification.requested",
            "version": 1,
            "occurredAt": int(time.time() * 1000),
            "correlationId": f"corr-{key[:8]}",
            "source": "tests",
            "notificationId": notification_id,
            "channel": channel,
            "template": template,
            "to": to,
            "data": json.dumps(ORDER if data is None else data),
            "causeEventId": None,
            "idempotencyKey": key,
        }
        for _ in range(times):
            self._produce("notifications.requested", to, record)
        return notification_id

    def contact(
        self,
        user_id: str,
        *,
        email: str | None = None,
        phone: str | None = None,
        push_tokens: tuple[str, ...] = (),
    ) -> None:
        record = {
            "eventId": str(uuid.uuid4()),
            "eventType": "user.contact_updated",
            "version": 1,
            "occurredAt": int(time.time() * 1000),
            "correlationId": f"corr-{user_id}",
            "source": "accounts",
            "data": {
                "userId": user_id,
                "email": email,
                "phone": phone,
                "pushTokens": list(push_tokens),
                "preferredChannels": ["EMAIL"],
                "locale": "en-IN",
            },
        }
        self._produce("users.contacts", user_id, record)

    def dead_letters(self, key: str) -> list[dict[str, Any]]:
        return [
            CODEC.decode(m.value() or b"", topic="dlq").record
            for m in read_topic(self.bootstrap, "dlq", key=key, timeout_s=5)
        ]

    async def dead_letter(self, key: str) -> dict[str, Any]:
        await self.wait_for(f"the dead letter of {key}", lambda: bool(self.dead_letters(key)))
        [letter] = self.dead_letters(key)
        return letter

    def _produce(self, topic: str, key: str, record: dict[str, Any]) -> None:
        producer = Producer({"bootstrap.servers": self.bootstrap, "acks": "all"})
        producer.produce(
            topic,
            key=key.encode(),
            value=CODEC.encode(topic, record),
            headers=list(record_headers(topic, record)),
        )
        assert producer.flush(30) == 0


@pytest.fixture(scope="module")
def notify(
    catalog_topics: str,
    postgres_server: PostgresServer,
    mailboxes: Mailboxes,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Notify]:
    name = f"sluice_notify_{uuid.uuid4().hex[:6]}"
    database_url = postgres_server.create_database(name)
    apply_migrations(database_url)
    state = tmp_path_factory.mktemp("notify-worker")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "PARTNER_"))}
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": catalog_topics,
        "DATABASE_URL": database_url,
        "SLUICE_APP_ID": name.replace("_", "-"),
        "SLUICE_STATE_DIR": str(state / "state"),
        "SLUICE_RETRY_DELAYS": TEST_RETRY_DELAYS,
        "SLUICE_RETRY_MAX_ATTEMPTS": TEST_RETRY_MAX_ATTEMPTS,
        "SLUICE_LOG_LEVEL": "INFO",
        "SMTP_URL": mailboxes.mail.url,
        "SMS_WEBHOOK_URL": mailboxes.sink.sms_url,
        "PUSH_WEBHOOK_URL": mailboxes.sink.push_url,
        "SLUICE_NOTIFY_USER_CAP": str(CAP),
        "SLUICE_NOTIFY_USER_WINDOW": "1m",
    }
    # Start at the head: other modules' requests are not this module's business.
    start_group_at_end(env)
    worker = WorkerProcess(env, state / "worker.log")
    worker.start()
    try:
        yield Notify(worker, database_url, catalog_topics, mailboxes)
    finally:
        worker.stop()


def _unique() -> str:
    return uuid.uuid4().hex[:10]


def _phone() -> str:
    return "+1415" + str(uuid.uuid4().int)[:7]


async def test_each_channel_sends_once_to_a_direct_contact(notify: Notify) -> None:
    address, phone, token = f"ada.{_unique()}@example.com", _phone(), f"tok-{_unique()}"
    email_id = notify.request("EMAIL", address)
    sms_id = notify.request("SMS", phone)
    push_id = notify.request("PUSH", f"push:{token}")
    for notification_id in (email_id, sms_id, push_id):
        await notify.until_status(notification_id, "SENT")

    [mail] = notify.boxes.mails(email_id)
    assert mail["To"] == address
    assert mail["Subject"] == "Order ord_1001 is paid"
    text = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert text is not None
    assert html is not None
    assert "25.00 USD" in text.get_content()
    assert "Hello Ada <b>," in text.get_content()
    assert "Ada &lt;b&gt;" in html.get_content()
    [sms] = notify.boxes.messages(sms_id)
    assert sms["to"] == phone
    assert sms["body"] == "Payment of 25.00 USD received for order ord_1001. Thank you!"
    [push] = notify.boxes.messages(push_id)
    assert push["token"] == token
    assert push["title"] == "Order paid"
    assert push["body"] == "We received 25.00 USD for order ord_1001."

    email_row, sms_row, push_row = (notify.row(i) for i in (email_id, sms_id, push_id))
    assert email_row is not None
    assert sms_row is not None
    assert push_row is not None
    assert email_row["provider_message_id"] == f"<{email_id}@sluice>"
    assert sms_row["provider_message_id"] == sms["id"]
    assert push_row["provider_message_id"] == push["id"]
    for row, recipient in ((email_row, address), (sms_row, phone), (push_row, token)):
        assert row["attempts"] == 1
        assert row["sent_at"] is not None
        assert row["last_error"] is None
        assert row["recipient"] == recipient
        assert row["user_id"] is None


async def test_a_user_id_resolves_through_its_contact_event(notify: Notify) -> None:
    user = f"user-{_unique()}"
    address, phone = f"{user}@example.com", _phone()
    notify.contact(user, email=address, phone=phone, push_tokens=("newest-token", "older"))
    await notify.wait_for(
        "the contact",
        lambda: (
            notify.query("SELECT email FROM user_contacts WHERE user_id = %s", user) == [(address,)]
        ),
    )
    ids = {channel: notify.request(channel, user) for channel in ("EMAIL", "SMS", "PUSH")}
    for notification_id in ids.values():
        await notify.until_status(notification_id, "SENT")
    [mail] = notify.boxes.mails(ids["EMAIL"])
    assert mail["To"] == address
    [sms] = notify.boxes.messages(ids["SMS"])
    assert sms["to"] == phone
    [push] = notify.boxes.messages(ids["PUSH"])
    assert push["token"] == "newest-token"
    for notification_id in ids.values():
        row = notify.row(notification_id)
        assert row is not None
        assert row["user_id"] == user
        assert row["to_ref"] == user


async def test_unknown_user_or_no_contact_for_the_channel_fails_with_a_dead_letter(
    notify: Notify,
) -> None:
    unknown = f"user-{_unique()}"
    missing = notify.request("EMAIL", unknown)
    await notify.until_status(missing, "FAILED")
    row = notify.row(missing)
    assert row is not None
    assert row["last_error"] == f"unknown user {unknown}: no contact stored"
    assert row["attempts"] == 0
    letter = await notify.dead_letter(unknown)
    assert letter["errorClass"] == "PermanentError"
    assert f"unknown user {unknown}" in letter["reason"]

    emailonly = f"user-{_unique()}"
    notify.contact(emailonly, email=f"{emailonly}@example.com")
    await notify.wait_for(
        "the contact",
        lambda: bool(notify.query("SELECT 1 FROM user_contacts WHERE user_id = %s", emailonly)),
    )
    no_phone = notify.request("SMS", emailonly)
    await notify.until_status(no_phone, "FAILED")
    row = notify.row(no_phone)
    assert row is not None
    assert row["last_error"] == f"user {emailonly} has no phone for SMS"
    letter = await notify.dead_letter(emailonly)
    assert "has no phone for SMS" in letter["reason"]
    assert notify.boxes.messages(no_phone) == []
    assert notify.worker.alive()


async def test_smtp_450_then_250_is_sent_on_the_second_attempt(notify: Notify) -> None:
    address = f"retry.{_unique()}@example.com"
    notify.boxes.mail.fail_next("450 4.3.0 mailbox busy, try later")
    notification_id = notify.request("EMAIL", address)
    await notify.until_status(notification_id, "SENT")
    row = notify.row(notification_id)
    assert row is not None
    assert row["attempts"] == 2
    assert row["last_error"] is None
    assert len(notify.boxes.mails(notification_id)) == 1


async def test_smtp_550_fails_with_a_dead_letter(notify: Notify) -> None:
    address = f"nobody.{_unique()}@example.com"
    notify.boxes.mail.fail_next(f"550 5.1.1 <{address}>: no such user")
    notification_id = notify.request("EMAIL", address)
    await notify.until_status(notification_id, "FAILED")
    row = notify.row(notification_id)
    assert row is not None
    assert row["attempts"] == 1
    assert "550" in row["last_error"]
    # The server echoed the address; the recorded error does not.
    assert address not in row["last_error"]
    letter = await notify.dead_letter(address)
    assert letter["errorClass"] == "PermanentError"
    assert "550" in letter["reason"]
    assert notify.boxes.mails(notification_id) == []


async def test_the_per_user_cap_fails_what_is_past_it(notify: Notify) -> None:
    address = f"busy.{_unique()}@example.com"
    ids = [notify.request("EMAIL", address) for _ in range(CAP + 1)]
    for notification_id in ids[:CAP]:
        await notify.until_status(notification_id, "SENT")
    await notify.until_status(ids[CAP], "FAILED")
    row = notify.row(ids[CAP])
    assert row is not None
    assert row["last_error"].startswith("per-user cap:")
    assert row["attempts"] == 0
    assert notify.boxes.mails(ids[CAP]) == []
    letter = await notify.dead_letter(address)
    assert "per-user cap" in letter["reason"]


async def test_sms_api_down_for_30s_then_back_is_delivered_once(notify: Notify) -> None:
    phone = _phone()
    notify.boxes.stop_sink()
    try:
        down_at = time.monotonic()
        notification_id = notify.request("SMS", phone)
        await notify.wait_for(
            "retries while the SMS API is down",
            lambda: (notify.row(notification_id) or {}).get("attempts", 0) >= 3,
        )
        row = notify.row(notification_id)
        assert row is not None
        assert row["status"] == "RETRYING"
        assert "sms" in row["last_error"]
        # The outage lasts its 30 s, however fast the retries came.
        await asyncio.sleep(max(0.0, SMS_DOWN_S - (time.monotonic() - down_at)))
    finally:
        notify.boxes.start_sink()
    await notify.until_status(notification_id, "SENT", timeout_s=60)
    assert len(notify.boxes.messages(notification_id)) == 1
    assert notify.dead_letters(phone) == []


async def test_the_same_request_three_times_and_a_kill_mid_send_is_one_row(
    notify: Notify,
) -> None:
    address = f"once.{_unique()}@example.com"
    release = notify.boxes.hold_next_mail()
    try:
        notification_id = notify.request("EMAIL", address, times=3)
        # The server stored the message and holds its 250: the worker has not heard.
        await notify.wait_for("the held mail", lambda: bool(notify.boxes.mails(notification_id)))
        assert notify.status(notification_id) == "QUEUED"
        notify.worker.kill()
        notify.worker.start()
        await notify.until_status(notification_id, "SENT", timeout_s=120)
    finally:
        release.set()
    await asyncio.sleep(2)  # the copies after the first have been consumed by now
    assert notify.query("SELECT count(*) FROM notifications WHERE id = %s", notification_id) == [
        (1,)
    ]
    row = notify.row(notification_id)
    assert row is not None
    assert row["attempts"] == 1
    copies = notify.boxes.mails(notification_id)
    # The kill fell between the server's acceptance and our record: a second copy, with
    # the same Message-ID (mails() matches on it); never a third.
    assert len(copies) == 2
    assert {m["Message-ID"] for m in copies} == {f"<{notification_id}@sluice>"}


async def test_the_send_route_end_to_end_each_channel_once_and_its_status(
    notify: Notify, catalog_topics: str
) -> None:
    """Through the front door: ``POST /internal/v1/notifications/send`` → the worker →
    the local servers; the same call three times (one Idempotency-Key) is one
    notification; ``GET /internal/v1/notifications/{id}`` reads its row."""
    settings = ingress_settings(catalog_topics, {"DATABASE_URL": notify.database_url})
    address, phone, token = f"route.{_unique()}@example.com", _phone(), f"tok-{_unique()}"
    sends = {"EMAIL": address, "SMS": phone, "PUSH": f"push:{token}"}
    async with started_ingress(settings) as ingress:
        ids: dict[str, str] = {}
        for channel, to in sends.items():
            key = f"send-{channel}-{_unique()}"
            body = {"to": to, "channel": channel, "template": "ORDER_PAID", "data": ORDER}
            answers = []
            for _ in range(3):
                async with ingress.http.post(
                    f"{ingress.internal}/internal/v1/notifications/send",
                    json=body,
                    headers=internal_headers(**{"Idempotency-Key": key}),
                ) as response:
                    answers.append((response.status, await response.json()))
            assert {status for status, _ in answers} == {202}, answers
            [ids[channel]] = {answer["id"] for _, answer in answers}
            assert ids[channel] == notification_id_for_request(key)
        for notification_id in ids.values():
            await notify.until_status(notification_id, "SENT")
        assert len(notify.boxes.mails(ids["EMAIL"])) == 1
        assert len(notify.boxes.messages(ids["SMS"])) == 1
        assert len(notify.boxes.messages(ids["PUSH"])) == 1
        for notification_id in ids.values():
            assert (
                notify.query("SELECT count(*) FROM notifications WHERE id = %s", notification_id)[
                    0
                ][0]
                == 1
            )

        async with ingress.http.get(
            f"{ingress.internal}/internal/v1/notifications/{ids['EMAIL']}",
            headers=internal_headers(),
        ) as response:
            assert response.status == 200
            shown = await response.json()
    assert (shown["status"], shown["attempts"], shown["channel"]) == ("SENT", 1, "EMAIL")
    assert shown["providerMessageId"] == f"<{ids['EMAIL']}@sluice>"
