"""The notification contract shared by the ingress and the worker: the channels.

The send route checks a request against it (the channel, the template, the recipient)
before it publishes anything; the worker renders and sends with the same definitions, so
a request the route accepted is one the worker can render.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Final

__all__ = [
    "NOTIFICATION_NAMESPACE",
    "Channel",
    "NotificationStatus",
    "notification_id_for_cause",
    "notification_id_for_request",
]


class Channel(StrEnum):
    """How a notification reaches its recipient (``channel`` of the send route)."""

    EMAIL = "EMAIL"
    SMS = "SMS"
    PUSH = "PUSH"


NOTIFICATION_NAMESPACE: Final = uuid.UUID("9e2f4c1a-6b3d-4e8f-a0c5-7d1b2e3f4a56")
"""uuid5 namespace of notification ids. Fixed forever: a new namespace would give a
retried request or a redelivered cause a new id, and the user a second message."""


def notification_id_for_request(idempotency_key: str) -> str:
    """The id of a send request made with ``Idempotency-Key: idempotency_key``: the same
    key always names the same notification, so a retried call enqueues nothing new."""
    return str(uuid.uuid5(NOTIFICATION_NAMESPACE, f"request:{idempotency_key}"))


def notification_id_for_cause(cause_event_id: str, template: str, channel: Channel) -> str:
    """The id of the ``template`` notification on ``channel`` that event
    ``cause_event_id`` (``order.paid``, say) causes: one per (cause, template, channel),
    whatever redeliveries happen."""
    return str(uuid.uuid5(NOTIFICATION_NAMESPACE, f"cause:{cause_event_id}:{template}:{channel}"))


class NotificationStatus(StrEnum):
    """``notifications.status`` (DESIGN §6)."""

    QUEUED = "QUEUED"
    """Stored; not sent yet."""
    RETRYING = "RETRYING"
    """A send failed transiently; the next one waits on a delay topic."""
    SENT = "SENT"
    """The provider accepted it (SMTP 250, HTTP 2xx). Final."""
    FAILED = "FAILED"
    """Refused (SMTP 5xx, HTTP 4xx, no contact, over the per-user cap) or retries ran
    out; dead-lettered. Final."""
