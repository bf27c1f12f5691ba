"""The pure notification decisions (streams/domain/notifications.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from base.errors import InvalidEvent, PermanentError, TransientError
from schemas.notifications import Channel, NotificationStatus
from schemas.recipients import Contact, UserRecipient
from streams.domain.notifications import (
    ContactUpdate,
    NotificationRequest,
    StoredContact,
    Undeliverable,
    cap_reason,
    decide_send,
    plan_send,
    redact,
    resolve_address,
)

CONTACT = StoredContact(email="ada@example.com", phone="+14155550100", push_tokens=["t1", "t2"])


def _request(**fields: object) -> dict[str, object]:
    return {
        "eventId": "e-1",
        "eventType": "notification.requested",
        "occurredAt": 1_700_000_000_000,
        "correlationId": "c-1",
        "notificationId": "n-1",
        "channel": "EMAIL",
        "template": "ORDER_PAID",
        "to": "ada@example.com",
        "data": json.dumps({"order_id": "o-1"}),
        "causeEventId": None,
        **fields,
    }


def test_a_request_record_is_read_and_its_repr_hides_the_recipient() -> None:
    request = NotificationRequest.from_record(_request())
    assert request.channel is Channel.EMAIL
    assert request.data == {"order_id": "o-1"}
    assert "ada@" not in repr(request)
    assert "o-1" not in repr(request)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"channel": "FAX"}, "channel"),
        ({"data": "[1, 2]"}, "data"),
        ({"data": "not json"}, "data"),
    ],
)
def test_a_bad_request_record_is_invalid(fields: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidEvent) as raised:
        NotificationRequest.from_record(_request(**fields))
    assert raised.value.field == field


def test_a_contact_event_is_read_whole() -> None:
    update = ContactUpdate.from_record(
        {
            "eventId": "e-9",
            "eventType": "user.contact_updated",
            "occurredAt": datetime(2026, 1, 2, tzinfo=UTC),
            "data": {"userId": "u-1", "email": "", "phone": None, "pushTokens": ["a", ""]},
        }
    )
    assert (update.user_id, update.email, update.phone) == ("u-1", None, None)
    assert update.push_tokens == ("a",)
    assert update.occurred_at == datetime(2026, 1, 2, tzinfo=UTC)
    millis = ContactUpdate.from_record(
        {
            "eventId": "e-9",
            "eventType": "user.contact_updated",
            "occurredAt": 1_700_000_000_000,
            "data": {"userId": "u-1"},
        }
    )
    assert millis.occurred_at == datetime.fromtimestamp(1_700_000_000, UTC)


def test_another_event_type_on_the_contacts_topic_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match=r"user\.contact_updated"):
        ContactUpdate.from_record({"eventId": "e", "eventType": "user.deleted", "data": {}})


@pytest.mark.parametrize(
    ("status", "retried", "send"),
    [
        ("QUEUED", False, True),  # new, or redelivered after a crash mid-send
        ("QUEUED", True, True),  # a held record back
        ("RETRYING", True, True),  # the retry chain
        ("RETRYING", False, False),  # a duplicate request while the chain runs
        ("SENT", False, False),
        ("SENT", True, False),
        ("FAILED", False, False),
        ("FAILED", True, False),
    ],
)
def test_plan_send(status: str, retried: bool, send: bool) -> None:
    plan = plan_send(status, retried=retried)
    assert plan.send is send
    assert bool(plan.reason) is not send


def test_a_direct_contact_is_used_as_is() -> None:
    assert resolve_address(Contact(Channel.SMS, "+14155550199"), Channel.SMS, None) == (
        "+14155550199"
    )


@pytest.mark.parametrize(
    ("channel", "address"),
    [(Channel.EMAIL, "ada@example.com"), (Channel.SMS, "+14155550100"), (Channel.PUSH, "t1")],
)
def test_a_user_id_takes_the_contact_for_the_channel(channel: Channel, address: str) -> None:
    assert resolve_address(UserRecipient("u-1"), channel, CONTACT) == address


def test_an_unknown_user_is_undeliverable() -> None:
    with pytest.raises(Undeliverable, match="unknown user u-1"):
        resolve_address(UserRecipient("u-1"), Channel.EMAIL, None)


@pytest.mark.parametrize(
    ("channel", "what"),
    [(Channel.EMAIL, "email"), (Channel.SMS, "phone"), (Channel.PUSH, "push token")],
)
def test_a_user_without_a_contact_for_the_channel_is_undeliverable(
    channel: Channel, what: str
) -> None:
    empty = StoredContact(email=None, phone=None, push_tokens=[])
    with pytest.raises(Undeliverable, match=f"user u-1 has no {what} for {channel}"):
        resolve_address(UserRecipient("u-1"), channel, empty)
    assert issubclass(Undeliverable, PermanentError)


def test_the_cap() -> None:
    assert cap_reason(9, cap=10, window_s=60) is None
    reason = cap_reason(10, cap=10, window_s=60)
    assert reason is not None
    assert reason.startswith("per-user cap: 10 notifications")
    assert "60s" in reason


def test_a_transient_failure_retries_until_the_last_retry() -> None:
    error = TransientError("smtp 450: <ada@example.com> busy", retry_after=7.0)
    first = decide_send(error, retry_attempt=0, max_retries=3, address="ada@example.com")
    assert first.status is NotificationStatus.RETRYING
    assert isinstance(first.failure, TransientError)
    assert first.failure.retry_after == 7.0
    assert first.error == "smtp 450: <<recipient>> busy"
    last = decide_send(error, retry_attempt=3, max_retries=3, address="ada@example.com")
    assert last.status is NotificationStatus.FAILED
    # Still transient: the runner's exhausted retries dead-letter it with an alert.
    assert isinstance(last.failure, TransientError)


def test_a_permanent_failure_fails_at_once() -> None:
    decision = decide_send(
        PermanentError("sms http://127.0.0.1/sms: HTTP 400: bad To +14155550100"),
        retry_attempt=0,
        max_retries=5,
        address="+14155550100",
    )
    assert decision.status is NotificationStatus.FAILED
    assert type(decision.failure) is PermanentError
    assert "+14155550100" not in decision.error
    assert "+14155550100" not in str(decision.failure)


def test_redact_is_case_blind_and_cleans() -> None:
    assert redact("550 <Ada@Example.com>\nno such user", "ada@example.com") == (
        "550 <<recipient>> no such user"
    )
    assert redact("nothing to hide", None, "") == "nothing to hide"
