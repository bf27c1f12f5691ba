"""Sending notifications as pure decisions: what a request and a contact event say, where
a notification goes, whether it is sent at all, and what a send's outcome means.

The agents (``streams/agents/send_notifications.py``, ``streams/agents/project_contacts.py``)
store rows, call the channel connectors and record outcomes; everything they decide comes
from here:

- :meth:`NotificationRequest.from_record` / :meth:`ContactUpdate.from_record`: the
  decoded ``sluice.notifications.NotificationRequest`` / ``sluice.users.UserEvent``;
- :func:`plan_send`: the stored row (and whether this copy is a retry) → send, or skip;
- :func:`resolve_address`: a recipient (a direct contact, or a user id and the user's
  stored contact) → the address for the channel, or :class:`Undeliverable`;
- :func:`cap_reason`: the recipient's recent notifications against the per-user cap;
- :func:`decide_send`: a send's failure → the row's status and what the effect raises
  for the ``EffectRunner`` (delay topics for transient failures, ``dlq`` for permanent);
- :func:`redact`: an error text with the recipient's address taken out, so logs, rows'
  ``last_error`` and dead-letter reasons never carry contact details.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from base.errors import InvalidEvent, PermanentError, TransientError
from schemas.notifications import Channel, NotificationStatus
from schemas.recipients import Contact, Recipient, UserRecipient
from streams.domain.retry import clean_reason

__all__ = [
    "CONTACT_UPDATED",
    "SOURCE",
    "ContactUpdate",
    "NotificationRequest",
    "SendDecision",
    "SendPlan",
    "StoredContact",
    "Undeliverable",
    "cap_reason",
    "decide_send",
    "plan_send",
    "redact",
    "resolve_address",
]

SOURCE: Final = "streams.send_notifications"
CONTACT_UPDATED: Final = "user.contact_updated"
REDACTED: Final = "<recipient>"


class Undeliverable(PermanentError):
    """The notification cannot be sent, whatever retries happen: an unknown user, a user
    without a contact for the channel, over the per-user cap. FAILED with this reason."""


# -- records -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NotificationRequest:
    """A ``notifications.requested`` record, decoded."""

    event_id: str
    notification_id: str
    channel: Channel
    template: str
    to: str
    data: Mapping[str, Any]
    cause_event_id: str | None
    correlation_id: str

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> NotificationRequest:
        """:raises InvalidEvent: an unknown channel, or ``data`` that is not a JSON object
        text (the ingress checks both; a record from elsewhere may not)."""
        try:
            channel = Channel(record["channel"])
        except ValueError:
            raise InvalidEvent(
                f"unknown channel {record['channel']!r}: one of {', '.join(Channel)}",
                field="channel",
            ) from None
        try:
            data = json.loads(record["data"])
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise InvalidEvent("data must be a JSON object text", field="data")
        return cls(
            event_id=str(record["eventId"]),
            notification_id=str(record["notificationId"]),
            channel=channel,
            template=str(record["template"]),
            to=str(record["to"]),
            data=data,
            cause_event_id=record.get("causeEventId"),
            correlation_id=str(record.get("correlationId") or ""),
        )

    def __repr__(self) -> str:  # ``to`` and ``data`` may be contact details: not in logs
        return f"NotificationRequest({self.notification_id}, {self.channel}, {self.template})"


@dataclass(frozen=True, slots=True)
class ContactUpdate:
    """A ``user.contact_updated`` event: how to reach the user as of ``occurred_at``
    (the whole contact: a field left out is cleared)."""

    event_id: str
    user_id: str
    email: str | None
    phone: str | None
    push_tokens: tuple[str, ...]
    preferred_channels: tuple[str, ...]
    locale: str | None
    occurred_at: datetime

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ContactUpdate:
        """:raises InvalidEvent: another event type than ``user.contact_updated``."""
        if record.get("eventType") != CONTACT_UPDATED:
            raise InvalidEvent(
                f"users.contacts carries {CONTACT_UPDATED} events only, not "
                f"{record.get('eventType')!r}",
                field="eventType",
            )
        data = record["data"]
        return cls(
            event_id=str(record["eventId"]),
            user_id=str(data["userId"]),
            email=data.get("email") or None,
            phone=data.get("phone") or None,
            push_tokens=tuple(t for t in data.get("pushTokens") or () if t),
            preferred_channels=tuple(data.get("preferredChannels") or ()),
            locale=data.get("locale") or None,
            occurred_at=_utc(record["occurredAt"]),
        )

    def __repr__(self) -> str:
        return f"ContactUpdate({self.user_id}, {self.event_id})"


@dataclass(frozen=True, slots=True)
class StoredContact:
    """What a user's ``user_contacts`` row says about each channel."""

    email: str | None
    phone: str | None
    push_tokens: Sequence[str]

    def __repr__(self) -> str:
        return "StoredContact(...)"


# -- decisions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendPlan:
    """Whether this copy of a request sends; ``reason`` says why not."""

    send: bool
    reason: str = ""


def plan_send(status: NotificationStatus | str, *, retried: bool) -> SendPlan:
    """What a copy of a request does, given its stored row's ``status``.

    - SENT or FAILED: nothing (final: a later copy, a replay, never sends again);
    - RETRYING and this copy is fresh from ``notifications.requested`` (a duplicate
      request): nothing, the retry chain on the delay topics owns the notification;
    - otherwise (QUEUED: new, or a copy redelivered after a crash mid-send; or a retry
      of the chain): send.
    """
    status = NotificationStatus(status)
    if status in (NotificationStatus.SENT, NotificationStatus.FAILED):
        return SendPlan(False, f"already {status}")
    if status is NotificationStatus.RETRYING and not retried:
        return SendPlan(False, "a retry is under way")
    return SendPlan(True)


def resolve_address(recipient: Recipient, channel: Channel, contact: StoredContact | None) -> str:
    """The address, phone number or push token to send to.

    A direct contact is used as is; a user id takes the user's contact for the channel:
    the email, the phone, the first (newest) push token.

    :raises Undeliverable: the user is not known, or has no contact for ``channel``.
    """
    if isinstance(recipient, Contact):
        return recipient.address
    assert isinstance(recipient, UserRecipient)
    if contact is None:
        raise Undeliverable(f"unknown user {recipient.user_id}: no contact stored")
    if channel is Channel.EMAIL:
        address = contact.email
    elif channel is Channel.SMS:
        address = contact.phone
    else:
        address = contact.push_tokens[0] if contact.push_tokens else None
    if not address:
        what = {Channel.EMAIL: "email", Channel.SMS: "phone", Channel.PUSH: "push token"}
        raise Undeliverable(f"user {recipient.user_id} has no {what[channel]} for {channel}")
    return address


def cap_reason(recent: int, *, cap: int, window_s: float) -> str | None:
    """Why a notification is refused by the per-user cap, or ``None`` when it is under.

    :param recent: the recipient's notifications created within ``window_s`` before
        this one (not counting it, nor those the cap or a missing contact refused).
    """
    if recent < cap:
        return None
    return (
        f"per-user cap: {recent} notifications to this recipient within {window_s:g}s (cap {cap})"
    )


@dataclass(frozen=True, slots=True)
class SendDecision:
    """What a failed send means: the row's new status, the error recorded, and the
    exception the effect raises after recording it."""

    status: NotificationStatus
    error: str
    failure: TransientError | PermanentError


def decide_send(
    error: TransientError | PermanentError, *, retry_attempt: int, max_retries: int, address: str
) -> SendDecision:
    """The decision for a send that raised ``error`` (the connectors' taxonomy: SMTP 4xx,
    HTTP 408/425/429/5xx, timeouts, refused connections are transient; SMTP 5xx, other
    HTTP 4xx are permanent).

    - transient, retries left (``retry_attempt < max_retries``) → RETRYING, a
      ``TransientError`` (its ``retry_after`` kept: the runner honours it);
    - transient on the chain's last allowed retry → FAILED, still a ``TransientError``:
      the runner's exhausted retries dead-letter it with an alert;
    - permanent → FAILED, a ``PermanentError``: dead letter (no alert: a refused recipient
      is the request's problem, not the operator's).

    :param retry_attempt: the record's retry number (0 for a fresh record).
    :param max_retries: the retry policy's ``max_attempts``.
    :param address: the recipient's contact, removed from the recorded error.
    """
    text = redact(str(error), address)
    if isinstance(error, TransientError):
        last = retry_attempt >= max_retries
        status = NotificationStatus.FAILED if last else NotificationStatus.RETRYING
        return SendDecision(status, text, TransientError(text, retry_after=error.retry_after))
    return SendDecision(NotificationStatus.FAILED, text, PermanentError(text, expected=True))


def redact(text: str, *addresses: str | None) -> str:
    """``text`` without the given contact details (an SMTP reply may echo the address),
    cleaned for a header, a row or a dead letter (``clean_reason``)."""
    for address in addresses:
        if address:
            text = re.sub(re.escape(address), REDACTED, text, flags=re.IGNORECASE)
    return clean_reason(text)


def _utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(int(value) / 1000, UTC)
