"""Lifecycle notifications end to end: an order paid through the orders flow → one
ORDER_PAID request on ``notifications.requested`` → one ORDER_PAID email in the local
SMTP server's mailbox (aiosmtpd, tests/fixtures/mailboxes.py), the row SENT.

Real ingress (the order over ``POST /internal/v1/events``, the payment as a signed Stripe
webhook), broker, PostgreSQL and ``sluice worker`` process. The worker's group starts at
the head of every topic (``start_group_at_end``), and each test uses its own user and
order ids, since every worker of the session writes requests to the same topic.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from connectors.migrate import apply_migrations
from devstack import PostgresServer
from schemas.codec import make_codec
from schemas.notifications import Channel, notification_id_for_cause
from tests.fixtures.ingress import INTERNAL_TOKEN, IngressUnderTest, post_stripe
from tests.fixtures.kafka import end_offsets, key_of, read_topic, value_of
from tests.fixtures.mailboxes import Mailboxes
from tests.fixtures.worker import (
    TEST_RETRY_DELAYS,
    TEST_RETRY_MAX_ATTEMPTS,
    Pipeline,
    WorkerProcess,
    start_group_at_end,
    wait_until,
)
from tests.payloads.stripe import stripe_event

pytestmark = pytest.mark.integration

CODEC = make_codec(None)
NOTIFY_TOPIC = "notifications.requested"
LIFECYCLE_TOPIC = "orders.lifecycle"


@dataclass
class Notify:
    pipeline: Pipeline

    async def paid_order(self, user_id: str, amount: int, *, order_id: str | None = None) -> str:
        """Create an order for ``user_id`` and pay it; its id once the join paid it."""
        order_id = order_id or f"ord_{uuid.uuid4().hex[:12]}"
        body = {
            "eventId": f"evt-created-{uuid.uuid4().hex[:12]}",
            "eventType": "order.created",
            "source": "shop",
            "data": {
                "orderId": order_id,
                "userId": user_id,
                "amount": amount,
                "currency": "eur",
                "items": [{"productId": "sku_n", "quantity": 1}],
            },
        }
        ingress = self.pipeline.ingress
        async with ingress.http.post(
            f"{ingress.internal}/internal/v1/events",
            json=body,
            headers={"X-Internal-Token": INTERNAL_TOKEN},
        ) as response:
            assert response.status == 202, await response.text()
        payment = stripe_event(
            "payment_intent.succeeded",
            event_id=f"evt_{uuid.uuid4().hex[:16]}",
            order_id=order_id,
            object_id=f"pi_{uuid.uuid4().hex[:16]}",
            amount=amount,
            currency="eur",
        )
        assert await post_stripe(ingress, payment) == 200
        return order_id

    def paid_record(self, order_id: str) -> Any:
        """The ``order.paid`` message of the order on ``orders.lifecycle``, or None."""
        for message in read_topic(self.pipeline.bootstrap, LIFECYCLE_TOPIC, key=order_id):
            record = CODEC.decode(value_of(message), topic=LIFECYCLE_TOPIC).record
            if record["eventType"] == "order.paid":
                return message
        return None

    def requests(self, user_id: str) -> list[dict[str, Any]]:
        return [
            dict(CODEC.decode(value_of(m), topic=NOTIFY_TOPIC).record)
            for m in read_topic(self.pipeline.bootstrap, NOTIFY_TOPIC, key=user_id)
        ]

    async def until_requested(self, user_id: str) -> list[dict[str, Any]]:
        await self.pipeline.wait_for(
            f"a request for {user_id}", lambda: bool(self.requests(user_id))
        )
        return self.requests(user_id)

    def redeliver(self, message: Any) -> None:
        """Produce the lifecycle record again, as a redelivery after a crash would."""
        producer = Producer({"bootstrap.servers": self.pipeline.bootstrap})
        producer.produce(
            LIFECYCLE_TOPIC,
            key=message.key(),
            value=message.value(),
            headers=message.headers() or [],
            partition=message.partition(),
        )
        assert producer.flush(10) == 0

    async def until_consumed(self) -> None:
        """Until the worker's group committed the end of ``orders.lifecycle``."""
        wanted = end_offsets(self.pipeline.bootstrap, LIFECYCLE_TOPIC)
        consumer = Consumer(
            {
                "bootstrap.servers": self.pipeline.bootstrap,
                "group.id": self.pipeline.env["SLUICE_APP_ID"],
            }
        )
        try:

            def done() -> bool:
                committed = consumer.committed(
                    [TopicPartition(LIFECYCLE_TOPIC, p) for p in wanted], timeout=10
                )
                return all(
                    tp.offset >= wanted[tp.partition] for tp in committed if wanted[tp.partition]
                )

            await wait_until(
                "orders.lifecycle consumed", done, 90, on_timeout=self.pipeline.worker.log_tail
            )
        finally:
            consumer.close()


@pytest.fixture(scope="module")
def notify(
    ingress: IngressUnderTest,
    postgres_server: PostgresServer,
    mailboxes: Mailboxes,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Notify]:
    name = f"sluice_notify_lifecycle_{uuid.uuid4().hex[:6]}"
    database_url = postgres_server.create_database(name)
    apply_migrations(database_url)
    state = tmp_path_factory.mktemp("notify-worker")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLUICE_", "PARTNER_"))}
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": ingress.bootstrap,
        "DATABASE_URL": database_url,
        "SLUICE_APP_ID": name.replace("_", "-"),
        "SLUICE_STATE_DIR": str(state / "state"),
        "SLUICE_RETRY_DELAYS": TEST_RETRY_DELAYS,
        "SLUICE_RETRY_MAX_ATTEMPTS": TEST_RETRY_MAX_ATTEMPTS,
        "SLUICE_LOG_LEVEL": "INFO",
        "SMTP_URL": mailboxes.mail.url,
        "SMS_WEBHOOK_URL": mailboxes.sink.sms_url,
        "PUSH_WEBHOOK_URL": mailboxes.sink.push_url,
    }
    start_group_at_end(env)
    worker = WorkerProcess(env, state / "worker.log")
    worker.start()
    try:
        yield Notify(Pipeline(ingress, worker, database_url, ingress.bootstrap, env))
    finally:
        worker.stop()


async def test_an_order_paid_asks_once_for_order_paid_even_when_redelivered(
    notify: Notify,
) -> None:
    user_id = f"user_{uuid.uuid4().hex[:10]}"
    order_id = await notify.paid_order(user_id, 4250)
    [request] = await notify.until_requested(user_id)
    paid = notify.paid_record(order_id)
    assert paid is not None
    cause_id = CODEC.decode(value_of(paid), topic=LIFECYCLE_TOPIC).record["eventId"]
    # No contact row for the user yet: EMAIL (the send agent fails it if none turns up).
    assert request["notificationId"] == notification_id_for_cause(
        cause_id, "ORDER_PAID", Channel.EMAIL
    )
    assert request["eventId"] == request["notificationId"]
    assert (request["template"], request["channel"], request["to"]) == (
        "ORDER_PAID",
        "EMAIL",
        user_id,
    )
    assert request["causeEventId"] == cause_id
    assert json.loads(request["data"]) == {
        "order_id": order_id,
        "amount_minor": 4250,
        "currency": "EUR",
    }

    notify.redeliver(paid)
    notify.redeliver(paid)
    await notify.until_consumed()
    assert [r["notificationId"] for r in notify.requests(user_id)] == [request["notificationId"]]
    assert key_of(read_topic(notify.pipeline.bootstrap, NOTIFY_TOPIC, key=user_id)[0]) == user_id


async def test_the_users_preferred_channel_with_a_contact_is_used(notify: Notify) -> None:
    user_id = f"user_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(notify.pipeline.database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO user_contacts (user_id, email, phone, preferred_channels, occurred_at, "
            "last_event_id) VALUES (%s, NULL, '+14155550100', ARRAY['PUSH', 'SMS'], now(), 'e1')",
            (user_id,),
        )
    await notify.paid_order(user_id, 990)
    [request] = await notify.until_requested(user_id)
    # PUSH is preferred but the user has no push token: the next preference, SMS.
    assert (request["template"], request["channel"]) == ("ORDER_PAID", "SMS")
    assert json.loads(request["data"])["amount_minor"] == 990


async def test_an_order_paid_end_to_end_sends_one_order_paid_email(
    notify: Notify, mailboxes: Mailboxes
) -> None:
    user_id = f"user_{uuid.uuid4().hex[:10]}"
    ingress = notify.pipeline.ingress
    contact = {
        "eventId": f"evt-contact-{user_id}",
        "eventType": "user.contact_updated",
        "source": "accounts",
        "data": {"userId": user_id, "email": "asha@example.com", "preferredChannels": ["EMAIL"]},
    }
    async with ingress.http.post(
        f"{ingress.internal}/internal/v1/events",
        json=contact,
        headers={"X-Internal-Token": INTERNAL_TOKEN},
    ) as response:
        assert response.status == 202, await response.text()

    def has_contact() -> bool:
        with psycopg.connect(notify.pipeline.database_url, autocommit=True) as conn:
            return bool(
                conn.execute(
                    "SELECT 1 FROM user_contacts WHERE user_id = %s", (user_id,)
                ).fetchone()
            )

    await notify.pipeline.wait_for(f"the contact of {user_id}", has_contact)
    # User data with markup in it: the HTML body must show it, not run it.
    order_id = await notify.paid_order(
        user_id, 4250, order_id=f"ord_<b>{uuid.uuid4().hex[:8]}</b>&co"
    )
    [request] = await notify.until_requested(user_id)
    notification_id = request["notificationId"]

    def status() -> str | None:
        with psycopg.connect(notify.pipeline.database_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT status FROM notifications WHERE id = %s", (notification_id,)
            ).fetchone()
        return row[0] if row else None

    await notify.pipeline.wait_for("the notification SENT", lambda: status() == "SENT")
    [mail] = mailboxes.mails(notification_id)
    assert mail["To"] == "asha@example.com"
    assert mail["Subject"] == f"Order {order_id} is paid"
    text = mail.get_body(preferencelist=("plain",))
    html = mail.get_body(preferencelist=("html",))
    assert text is not None
    assert html is not None
    assert "42.50 EUR" in text.get_content()
    assert order_id in text.get_content()
    html_body = html.get_content()
    assert "42.50 EUR" in html_body
    assert "<b>" not in html_body
    assert "ord_&lt;b&gt;" in html_body
    assert "&amp;co" in html_body

    # The paid record again (a redelivery): no second request, no second mail.
    paid = notify.paid_record(order_id)
    notify.redeliver(paid)
    await notify.until_consumed()
    assert len(notify.requests(user_id)) == 1
    assert len(mailboxes.mails(notification_id)) == 1
