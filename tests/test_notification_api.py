"""The internal notifications API and contact events through the real ingress, broker and
PostgreSQL.

``POST /internal/v1/notifications/send`` publishes a ``NotificationRequest`` on
``notifications.requested`` (read back here and decoded); ``GET
/internal/v1/notifications/{id}`` reads rows this test inserts; ``user.contact_updated``
goes through ``POST /internal/v1/events`` onto ``users.contacts``. No worker runs: what
happens to a request after it is durable is the notify agent's tests' business.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import pytest_asyncio

from base.errors import InvalidEvent
from devstack import free_port
from ingress.notifications import check_notification_id, parse_send
from schemas.codec import make_codec
from schemas.notifications import Channel, notification_id_for_request
from schemas.notify_templates import default_catalog
from tests.fixtures.ingress import (
    MAX_BODY,
    IngressUnderTest,
    ingress_settings,
    internal_headers,
    started_ingress,
)
from tests.fixtures.kafka import end_offsets, header_map, key_of, read_topic, value_of

CODEC = make_codec(None)
TOPIC = "notifications.requested"
CONTACTS = "users.contacts"
ORDER_PAID = {"order_id": "ord_1", "amount_minor": 2500, "currency": "usd"}


def _user() -> str:
    return f"user_{uuid.uuid4().hex[:12]}"


def _email() -> str:
    return f"ana.{uuid.uuid4().hex[:8]}@Example.COM"


def _send_body(to: Any, channel: str = "EMAIL", **more: Any) -> dict[str, Any]:
    return {"to": to, "channel": channel, "template": "ORDER_PAID", "data": ORDER_PAID, **more}


@pytest_asyncio.fixture(scope="module")
async def notify_ingress(catalog_topics: str, migrated_db: str) -> AsyncIterator[IngressUnderTest]:
    """An ingress with this module's database."""
    settings = ingress_settings(catalog_topics, {"DATABASE_URL": migrated_db})
    async with started_ingress(settings) as running:
        yield running


async def _send(
    ingress: IngressUnderTest, body: Any, *, content_type: str = "application/json", **headers: str
) -> tuple[int, Any]:
    async with ingress.http.post(
        f"{ingress.internal}/internal/v1/notifications/send",
        data=body if isinstance(body, bytes) else json.dumps(body).encode(),
        headers=internal_headers(**{"Content-Type": content_type, **headers}),
    ) as response:
        return response.status, await response.json(content_type=None)


async def _get(ingress: IngressUnderTest, notification_id: str) -> tuple[int, Any]:
    async with ingress.http.get(
        f"{ingress.internal}/internal/v1/notifications/{notification_id}",
        headers=internal_headers(),
    ) as response:
        return response.status, await response.json()


def _published(ingress: IngressUnderTest, key: str) -> list[dict[str, Any]]:
    return [
        CODEC.decode(value_of(message), topic=TOPIC).record
        for message in read_topic(ingress.bootstrap, TOPIC, key=key)
    ]


# --- request checks (pure) ----------------------------------------------------------------


def test_a_send_request_is_checked_and_normalised() -> None:
    request = parse_send(
        {
            "to": "Ana@Example.COM",
            "channel": "EMAIL",
            "template": "ORDER_PAID",
            "data": {**ORDER_PAID, "name": "Ana <b>", "unused": [1, 2]},
        },
        default_catalog(),
    )
    assert (request.to, request.channel, request.template) == (
        "Ana@example.com",
        Channel.EMAIL,
        "ORDER_PAID",
    )
    # What the template saw: declared variables only, the currency upper-cased.
    assert json.loads(request.data_json) == {
        "name": "Ana <b>",
        "order_id": "ord_1",
        "amount_minor": 2500,
        "currency": "USD",
    }
    assert " " not in request.data_json.replace("Ana <b>", "")  # compact


@pytest.mark.parametrize(
    ("to", "channel", "published"),
    [
        ("user_1", "EMAIL", "user_1"),
        ("user_1", "SMS", "user_1"),
        ("+14155550100", "SMS", "+14155550100"),
        ("push:tok-123", "PUSH", "push:tok-123"),
        ("user_1", "PUSH", "user_1"),
    ],
)
def test_to_is_published_as_checked(to: str, channel: str, published: str) -> None:
    assert parse_send(_send_body(to, channel), default_catalog()).to == published


BAD_SENDS: dict[str, tuple[Any, str | None]] = {
    "not an object": (["to"], None),
    "unknown field": (_send_body("u1", priority="high"), "priority"),
    "no channel": ({"to": "u1", "template": "ORDER_PAID", "data": ORDER_PAID}, "channel"),
    "unknown channel": (_send_body("u1", "FAX"), "channel"),
    "lower-case channel": (_send_body("u1", "email"), "channel"),
    "no template": ({"to": "u1", "channel": "SMS", "data": ORDER_PAID}, "template"),
    "template not a code": (_send_body("u1", template=42), "template"),
    "unknown template": (_send_body("u1", template="ORDER_PAYD"), "template"),
    "no data": ({"to": "u1", "channel": "SMS", "template": "ORDER_PAID"}, "data"),
    "data not an object": (_send_body("u1", data=[1]), "data"),
    "missing variable": (_send_body("u1", data={"order_id": "o"}), "data.amount_minor"),
    "variable of the wrong kind": (
        _send_body("u1", data={**ORDER_PAID, "amount_minor": "25.00"}),
        "data.amount_minor",
    ),
    "bad currency": (_send_body("u1", data={**ORDER_PAID, "currency": "dollars"}), "data.currency"),
    "no to": ({"channel": "SMS", "template": "ORDER_PAID", "data": ORDER_PAID}, "to"),
    "to not a string": (_send_body(42), "to"),
    "blank to": (_send_body("  "), "to"),
    "bad email": (_send_body("ana@@example.com"), "to"),
    "bad phone": (_send_body("+1 415 555 0100", "SMS"), "to"),
    "empty push token": (_send_body("push:", "PUSH"), "to"),
    "push token with a space": (_send_body("push:a b", "PUSH"), "to"),
    "to with a control character": (_send_body("user\x1b1"), "to"),
}


@pytest.mark.parametrize("case", BAD_SENDS, ids=list(BAD_SENDS))
def test_bad_send_requests_name_the_field(case: str) -> None:
    body, field = BAD_SENDS[case]
    with pytest.raises(InvalidEvent) as caught:
        parse_send(body, default_catalog())
    assert caught.value.field == field
    if field is not None:
        assert field in str(caught.value)


def test_notification_ids_are_uuids() -> None:
    given = str(uuid.uuid4()).upper()
    assert check_notification_id(given) == given.lower()
    for bad in ("n1", "", str(uuid.uuid4()).replace("-", ""), "{" + str(uuid.uuid4()) + "}"):
        with pytest.raises(InvalidEvent) as caught:
            check_notification_id(bad)
        assert caught.value.field == "id"


# --- POST /internal/v1/notifications/send ----------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("case", BAD_SENDS, ids=list(BAD_SENDS))
async def test_bad_sends_are_400_and_publish_nothing(
    notify_ingress: IngressUnderTest, case: str
) -> None:
    body, field = BAD_SENDS[case]
    before = end_offsets(notify_ingress.bootstrap, TOPIC)
    status, answer = await _send(notify_ingress, body)
    assert status == 400, answer
    assert answer["error"] == "invalid"
    assert answer.get("field") == field
    assert end_offsets(notify_ingress.bootstrap, TOPIC) == before


@pytest.mark.integration
@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b'{"to": ', {}, 400),
        (b"", {}, 400),
        (_send_body("u1"), {"Idempotency-Key": "has a space"}, 400),
        (_send_body("u1"), {"Idempotency-Key": "k" * 256}, 400),
        (_send_body("u1"), {"content_type": "text/plain"}, 415),
        (_send_body("u1", data={**ORDER_PAID, "name": "n" * (MAX_BODY + 1)}), {}, 413),
    ],
    ids=["malformed", "empty", "key with a space", "key too long", "not JSON", "too big"],
)
async def test_malformed_or_oversized_sends_publish_nothing(
    notify_ingress: IngressUnderTest, body: Any, headers: dict[str, str], status: int
) -> None:
    before = end_offsets(notify_ingress.bootstrap, TOPIC)
    got, answer = await _send(notify_ingress, body, **headers)
    assert got == status, answer
    assert answer["error"]
    if "Idempotency-Key" in headers:
        assert answer["field"] == "Idempotency-Key"
    assert end_offsets(notify_ingress.bootstrap, TOPIC) == before


@pytest.mark.integration
async def test_send_needs_the_token(notify_ingress: IngressUnderTest) -> None:
    before = end_offsets(notify_ingress.bootstrap, TOPIC)
    async with notify_ingress.http.post(
        f"{notify_ingress.internal}/internal/v1/notifications/send",
        data=json.dumps(_send_body("u1")).encode(),
        headers={"Content-Type": "application/json"},
    ) as response:
        assert response.status == 401
    assert end_offsets(notify_ingress.bootstrap, TOPIC) == before


SENDS: dict[str, tuple[str, str | None, str, dict[str, Any]]] = {
    "email to a user": ("EMAIL", None, "ORDER_PAID", ORDER_PAID),
    "email to an address": ("EMAIL", "address", "ORDER_PAID", {**ORDER_PAID, "name": "Ana"}),
    "sms to a user": ("SMS", None, "LEAD_RECEIVED", {"lead_id": "l1", "partner_id": "acme"}),
    "sms to a number": ("SMS", "phone", "PAYMENT_FAILED", ORDER_PAID),
    "push to a user": ("PUSH", None, "REFUND_ISSUED", ORDER_PAID),
    "push to a token": ("PUSH", "token", "ORDER_PAID", ORDER_PAID),
}


def _to_for(kind: str | None) -> tuple[str, str]:
    """A fresh ``to`` of this kind (so the topic has no other record with its key), and
    the key it is published under."""
    if kind == "address":
        address = _email()
        local, _, domain = address.partition("@")
        return address, f"{local}@{domain.lower()}"
    if kind == "phone":
        number = "+1415" + str(uuid.uuid4().int)[:7]
        return number, number
    if kind == "token":
        token = f"push:fcm-{uuid.uuid4().hex}"
        return token, token
    user = _user()
    return user, user


@pytest.mark.integration
@pytest.mark.parametrize("case", SENDS, ids=list(SENDS))
async def test_a_send_is_published_once_durable(
    notify_ingress: IngressUnderTest, case: str
) -> None:
    channel, kind, template, data = SENDS[case]
    to, key = _to_for(kind)
    traceparent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"

    status, answer = await _send(
        notify_ingress,
        {"to": to, "channel": channel, "template": template, "data": data},
        traceparent=traceparent,
    )

    assert status == 202, answer
    assert answer == {"enqueued": True, "id": answer["id"]}
    assert uuid.UUID(answer["id"]).version == 4
    [message] = read_topic(notify_ingress.bootstrap, TOPIC, key=key)
    assert key_of(message) == key
    record = CODEC.decode(value_of(message), topic=TOPIC).record
    expected_data = default_catalog().get(template, channel).check(data)
    assert record == record | {
        "eventId": answer["id"],
        "eventType": "notification.requested",
        "source": "ingress",
        "notificationId": answer["id"],
        "channel": channel,
        "template": template,
        "to": key,
        "causeEventId": None,
        "idempotencyKey": None,
    }
    assert json.loads(record["data"]) == expected_data
    headers = header_map(message)
    assert headers["event-type"] == "notification.requested"
    assert headers["event-id"] == answer["id"]
    assert headers["traceparent"].startswith(traceparent[:36])


@pytest.mark.integration
async def test_the_same_idempotency_key_gives_the_same_id(
    notify_ingress: IngressUnderTest,
) -> None:
    user = _user()
    key = f"send-{uuid.uuid4().hex}"

    answers = [
        await _send(notify_ingress, _send_body(user), **{"Idempotency-Key": key}) for _ in range(3)
    ]

    expected = notification_id_for_request(key)
    assert answers == [(202, {"enqueued": True, "id": expected})] * 3
    records = _published(notify_ingress, user)
    # Three copies of one event: the worker's dedupe by eventId sends it once.
    assert [(r["eventId"], r["notificationId"]) for r in records] == [(expected, expected)] * 3
    assert {r["idempotencyKey"] for r in records} == {key}
    other_status, other = await _send(
        notify_ingress, _send_body(user), **{"Idempotency-Key": key + "-2"}
    )
    assert other_status == 202
    assert other["id"] not in (expected, None)


@pytest.mark.integration
async def test_without_a_key_every_send_is_a_new_notification(
    notify_ingress: IngressUnderTest,
) -> None:
    user = _user()
    first = await _send(notify_ingress, _send_body(user))
    second = await _send(notify_ingress, _send_body(user))
    assert first[0] == second[0] == 202
    assert first[1]["id"] != second[1]["id"]
    assert len(_published(notify_ingress, user)) == 2


# --- GET /internal/v1/notifications/{id} ------------------------------------------------------


@pytest.mark.integration
async def test_a_notification_row(notify_ingress: IngressUnderTest, migrated_db: str) -> None:
    sent_id, failed_id = str(uuid.uuid4()), str(uuid.uuid4())
    created = dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=dt.UTC)
    sent = created + dt.timedelta(seconds=3)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO notifications (id, channel, template, to_ref, user_id, recipient,"
            " status, attempts, last_error, provider_message_id, cause_event_id, created_at,"
            " updated_at, sent_at) VALUES (%s, 'EMAIL', 'ORDER_PAID', 'user_7', 'user_7',"
            " 'ana@example.com', 'SENT', 2, 'SMTP 450 try later', %s, 'evt_paid_1', %s, %s,"
            " %s)",
            (sent_id, f"<{sent_id}@sluice>", created, sent, sent),
        )
        conn.execute(
            "INSERT INTO notifications (id, channel, template, to_ref, status, attempts,"
            " last_error, created_at, updated_at) VALUES (%s, 'SMS', 'PAYMENT_FAILED',"
            " '+14155550100', 'FAILED', 1, 'HTTP 400: invalid number', %s, %s)",
            (failed_id, created, created),
        )

    status, body = await _get(notify_ingress, sent_id.upper())
    assert status == 200
    assert body == {
        "id": sent_id,
        "channel": "EMAIL",
        "template": "ORDER_PAID",
        "to": "user_7",
        "userId": "user_7",
        "recipient": "ana@example.com",
        "status": "SENT",
        "attempts": 2,
        "lastError": "SMTP 450 try later",
        "providerMessageId": f"<{sent_id}@sluice>",
        "causeEventId": "evt_paid_1",
        "createdAt": "2024-05-01T12:00:00.123Z",
        "updatedAt": "2024-05-01T12:00:03.123Z",
        "sentAt": "2024-05-01T12:00:03.123Z",
    }
    status, body = await _get(notify_ingress, failed_id)
    assert status == 200
    assert (body["status"], body["lastError"], body["userId"], body["sentAt"]) == (
        "FAILED",
        "HTTP 400: invalid number",
        None,
        None,
    )


@pytest.mark.integration
async def test_an_unknown_notification_is_404(notify_ingress: IngressUnderTest) -> None:
    status, body = await _get(notify_ingress, str(uuid.uuid4()))
    assert status == 404
    assert body["error"] == "not_found"


@pytest.mark.integration
@pytest.mark.parametrize("bad", ["n1", "x%00y", "n" * 300], ids=["not a uuid", "NUL", "long"])
async def test_a_bad_notification_id_is_400(notify_ingress: IngressUnderTest, bad: str) -> None:
    status, body = await _get(notify_ingress, bad)
    assert status == 400
    assert (body["error"], body["field"]) == ("invalid", "id")


@pytest.mark.integration
async def test_notifications_without_database_url_are_503(ingress: IngressUnderTest) -> None:
    assert ingress.settings.database_url is None
    status, body = await _get(ingress, str(uuid.uuid4()))
    assert status == 503
    assert "DATABASE_URL" in body["detail"]


@pytest.mark.integration
async def test_notifications_with_postgres_unreachable_are_503(catalog_topics: str) -> None:
    unreachable = f"postgresql://sluice@127.0.0.1:{free_port()}/nowhere"
    settings = ingress_settings(catalog_topics, {"DATABASE_URL": unreachable})
    async with started_ingress(settings) as cut_off:
        async with cut_off.http.get(
            f"{cut_off.internal}/internal/v1/notifications/{uuid.uuid4()}",
            headers=internal_headers(),
        ) as response:
            body = await response.json()
            assert response.status == 503
            assert response.headers["Retry-After"]
        assert "database" in body["detail"]
        assert "127.0.0.1" not in body["detail"]


# --- user.contact_updated through POST /internal/v1/events ------------------------------------


def _contact(user: str, **data: Any) -> dict[str, Any]:
    return {
        "eventType": "user.contact_updated",
        "source": "accounts",
        "data": {"userId": user, **data},
    }


async def _event(ingress: IngressUnderTest, body: Any) -> tuple[int, Any]:
    async with ingress.http.post(
        f"{ingress.internal}/internal/v1/events",
        data=json.dumps(body).encode(),
        headers=internal_headers(**{"Content-Type": "application/json"}),
    ) as response:
        return response.status, await response.json(content_type=None)


@pytest.mark.integration
async def test_a_full_contact_lands_on_users_contacts(ingress: IngressUnderTest) -> None:
    user = _user()
    status, answer = await _event(
        ingress,
        _contact(
            user,
            email="Ana@Example.COM",
            phone="+919876543210",
            pushTokens=["fcm:abc", "apns-0f1e"],
            preferredChannels=["PUSH", "EMAIL"],
            locale="en-IN",
        ),
    )

    assert status == 202, answer
    [message] = read_topic(ingress.bootstrap, CONTACTS, key=user)
    record = CODEC.decode(value_of(message), topic=CONTACTS).record
    assert record["eventId"] == answer["eventId"]
    assert record["eventType"] == "user.contact_updated"
    assert record["data"] == {
        "userId": user,
        "email": "Ana@example.com",
        "phone": "+919876543210",
        "pushTokens": ["fcm:abc", "apns-0f1e"],
        "preferredChannels": ["PUSH", "EMAIL"],
        "locale": "en-IN",
    }
    assert header_map(message)["event-type"] == "user.contact_updated"


@pytest.mark.integration
async def test_a_bare_contact_clears_everything(ingress: IngressUnderTest) -> None:
    user = _user()
    status, _ = await _event(ingress, _contact(user))
    assert status == 202
    [message] = read_topic(ingress.bootstrap, CONTACTS, key=user)
    assert CODEC.decode(value_of(message), topic=CONTACTS).record["data"] == {
        "userId": user,
        "email": None,
        "phone": None,
        "pushTokens": [],
        "preferredChannels": [],
        "locale": None,
    }


BAD_CONTACTS: dict[str, tuple[dict[str, Any], str]] = {
    "no user": ({}, "data.userId"),
    "blank user": ({"userId": " "}, "data.userId"),
    "bad email": ({"email": "ana@@example.com"}, "data.email"),
    "email not a string": ({"email": 7}, "data.email"),
    "phone with spaces": ({"phone": "+1 415 555 0100"}, "data.phone"),
    "phone without +": ({"phone": "4155550100"}, "data.phone"),
    "unknown channel": ({"preferredChannels": ["EMAIL", "FAX"]}, "data.preferredChannels[1]"),
    "repeated channel": ({"preferredChannels": ["SMS", "SMS"]}, "data.preferredChannels[1]"),
    "empty push token": ({"pushTokens": ["ok", ""]}, "data.pushTokens[1]"),
    "push token with a space": ({"pushTokens": ["a b"]}, "data.pushTokens[0]"),
    "push token too long": ({"pushTokens": ["t" * 4097]}, "data.pushTokens[0]"),
    "too many push tokens": ({"pushTokens": [f"t{i}" for i in range(21)]}, "data.pushTokens"),
    "bad locale": ({"locale": "english please"}, "data.locale"),
    "unknown field": ({"fax": "+1"}, "data.fax"),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", BAD_CONTACTS, ids=list(BAD_CONTACTS))
async def test_bad_contacts_are_400_naming_the_field(ingress: IngressUnderTest, case: str) -> None:
    data, field = BAD_CONTACTS[case]
    body = _contact(_user(), **data)
    if "userId" in data or case == "no user":
        body["data"] = data
    before = end_offsets(ingress.bootstrap, CONTACTS)
    status, answer = await _event(ingress, body)
    assert status == 400, answer
    assert answer["field"] == field
    assert field in answer["detail"]
    assert end_offsets(ingress.bootstrap, CONTACTS) == before


@pytest.mark.integration
async def test_a_send_without_a_broker_is_503() -> None:
    """Nothing is acknowledged that is not durable: no broker, no 202."""
    settings = ingress_settings(f"127.0.0.1:{free_port()}")
    async with started_ingress(settings) as cut_off:
        status, body = await _send(cut_off, _send_body(_user()))
    assert status == 503, body
    assert body["error"]
