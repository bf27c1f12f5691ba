"""Order and billing lifecycle events → notification requests (pure).

``SLUICE_NOTIFY_ON`` maps event types to template codes (``order.paid=ORDER_PAID,...``):

- the order lifecycle (``orders.lifecycle``): an order event type such as ``order.paid``,
  ``order.payment_failed``, ``order.refunded`` (partial and full refunds alike: the join
  emits one type, the status says which). An ``order.refunded`` whose ``reason`` is set
  reports a refund dropping out (failed, cancelled): it is no refund issued and maps to
  nothing. The recipient is the order's user (``userId``, always set by the join).
- billing invoices (``billing.invoice.updated``): the provider's event type, e.g. Stripe's
  ``invoice.payment_failed`` (the record's ``provider_event_type`` attribute). The
  recipient is the invoice's ``userId``, read from the invoice's (or its subscription's)
  metadata ``user_id``. An invoice without one names no user: :func:`cause_of` returns a
  :class:`Cause` without ``user_id`` and the agent skips it with a warning (Stripe's
  customer id is not our user id, and no table maps one to the other).

:func:`load_rules` reads and checks the setting at start-up: a malformed pair, an event
type that is not one of the above, an unknown template code or a template that needs a
variable the event does not carry → ``ConfigError`` naming it.

Per record, :func:`cause_of` says whether it maps (and what the template's variables
are), :func:`choose_channel` picks the channel from the user's stored contact, and
:func:`notification_request` builds the ``sluice.notifications.NotificationRequest``.
Its ``notificationId`` (also its ``eventId``) is derived from (cause event id, template,
channel), so every redelivery of a cause asks for the same notification.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from base.errors import ConfigError, InvalidEvent
from schemas.notifications import Channel, notification_id_for_cause
from schemas.notify_templates import TemplateCatalog
from streams.domain.stripe_mapping import EVENT_TOPICS as STRIPE_EVENT_TOPICS

__all__ = [
    "INVOICE_TOPIC",
    "LIFECYCLE_TOPIC",
    "NOTIFY_TOPIC",
    "SETTING",
    "SOURCE",
    "Cause",
    "NotifyRules",
    "UserChannels",
    "cause_of",
    "choose_channel",
    "load_rules",
    "notification_request",
    "users_of",
]

SETTING: Final = "SLUICE_NOTIFY_ON"
SOURCE: Final = "streams.notify_lifecycle"
LIFECYCLE_TOPIC: Final = "orders.lifecycle"
INVOICE_TOPIC: Final = "billing.invoice.updated"
NOTIFY_TOPIC: Final = "notifications.requested"
REQUEST_EVENT_TYPE: Final = "notification.requested"
NOTIFICATION_REQUEST_VERSION: Final = 1

# The order event types that carry the order's state (order.payment_orphaned does not:
# it is about a payment whose order is unknown, with no amount and maybe no user).
ORDER_EVENT_TYPES: Final = frozenset(
    {
        "order.pending_payment",
        "order.updated",
        "order.paid",
        "order.payment_failed",
        "order.payment_mismatch",
        "order.refunded",
        "order.cancelled",
        "order.payment_setup_failed",
    }
)
INVOICE_EVENT_TYPES: Final = frozenset(
    event for event, topic in STRIPE_EVENT_TOPICS.items() if topic == INVOICE_TOPIC
)
# The template variables each kind of event fills (templates may declare fewer).
ORDER_VARIABLES: Final = frozenset(
    {"order_id", "amount_minor", "currency", "reason", "refunded_minor"}
)
INVOICE_VARIABLES: Final = frozenset({"invoice_id", "amount_minor", "currency"})
# Without a stated preference (or a contact for it), the first channel in this order the
# user has a contact for.
FALLBACK_ORDER: Final = (Channel.EMAIL, Channel.SMS, Channel.PUSH)


@dataclass(frozen=True)
class NotifyRules:
    """Event type → template code, checked against the template catalog."""

    templates: Mapping[str, str]
    channels: Mapping[str, frozenset[Channel]]
    """Template code → the channels it has a template for."""

    def order_types(self) -> frozenset[str]:
        """The ``orders.lifecycle`` event types that map (the agent skips the others
        by their ``event-type`` header, without decoding)."""
        return frozenset(t for t in self.templates if t in ORDER_EVENT_TYPES)

    def maps_invoices(self) -> bool:
        return any(t in INVOICE_EVENT_TYPES for t in self.templates)


@dataclass(frozen=True)
class Cause:
    """A lifecycle record that maps to a template: what its notification needs."""

    event_id: str
    event_type: str
    template: str
    user_id: str | None
    data: Mapping[str, Any]
    """Every variable the event carries (the chosen template keeps those it declares)."""
    occurred_at_ms: int
    correlation_id: str
    subject: str
    """``order <id>`` or ``invoice <id>``, for logs."""


@dataclass(frozen=True)
class UserChannels:
    """What a ``user_contacts`` row says about reaching a user (no contact details)."""

    preferred: tuple[str, ...]
    has_email: bool
    has_phone: bool
    has_push: bool

    def reachable(self, channel: Channel) -> bool:
        if channel is Channel.EMAIL:
            return self.has_email
        if channel is Channel.SMS:
            return self.has_phone
        return self.has_push


def load_rules(text: str, catalog: TemplateCatalog) -> NotifyRules:
    """Read ``SLUICE_NOTIFY_ON`` (``event=TEMPLATE`` pairs, comma-separated; empty: no
    lifecycle notifications).

    :raises ConfigError: one line per problem, each naming the setting and the pair.
    """
    problems: list[str] = []
    templates: dict[str, str] = {}
    for pair in (part.strip() for part in text.split(",")):
        if not pair:
            continue
        event, sep, code = (side.strip() for side in pair.partition("="))
        if not sep or not event or not code:
            problems.append(f"{pair!r} is not event=TEMPLATE")
            continue
        if event in templates:
            problems.append(f"{event} is mapped twice")
            continue
        if event in ORDER_EVENT_TYPES:
            provided = ORDER_VARIABLES
        elif event in INVOICE_EVENT_TYPES:
            provided = INVOICE_VARIABLES
        else:
            known = ", ".join(sorted(ORDER_EVENT_TYPES | INVOICE_EVENT_TYPES))
            problems.append(f"{pair}: unknown event type {event!r} (one of {known})")
            continue
        if code not in catalog.codes():
            problems.append(f"{pair}: unknown template {code!r}")
            continue
        for template in catalog:
            if template.code != code:
                continue
            needed = sorted(
                spec.name
                for spec in template.variables.values()
                if spec.required and spec.name not in provided
            )
            if needed:
                problems.append(
                    f"{pair}: template {code} ({template.channel}) needs "
                    f"{', '.join(needed)}, which {event} does not carry"
                )
        templates[event] = code
    if problems:
        raise ConfigError("\n".join(f"malformed setting {SETTING}: {p}" for p in problems))
    channels = {
        code: frozenset(t.channel for t in catalog if t.code == code)
        for code in set(templates.values())
    }
    return NotifyRules(templates, channels)


def cause_of(topic: str, record: Mapping[str, Any], rules: NotifyRules) -> Cause | None:
    """The notification ``record`` (decoded, from ``topic``) causes, or ``None``.

    :raises InvalidEvent: a mapped record lacks what its template needs (an amount, a
        currency, an id): it is dead-lettered, not silently dropped.
    """
    if topic == LIFECYCLE_TOPIC:
        return _order_cause(record, rules)
    if topic == INVOICE_TOPIC:
        return _invoice_cause(record, rules)
    return None


def _order_cause(record: Mapping[str, Any], rules: NotifyRules) -> Cause | None:
    event_type = str(record.get("eventType"))
    template = rules.templates.get(event_type)
    if template is None or event_type not in ORDER_EVENT_TYPES:
        return None
    if event_type == "order.refunded" and record.get("reason"):
        return None  # a refund dropping out, not one issued
    order_id = str(record["orderId"])
    amount = record.get("amountMinor")
    if event_type == "order.refunded":
        # This refund's amount (the payment field of the record); the total refunded
        # when the provider reported only that.
        amount = record.get("paymentAmountMinor") or record.get("refundedMinor")
    data = {
        "order_id": order_id,
        "amount_minor": _required(amount, "amountMinor", event_type),
        "currency": _required(record.get("currency"), "currency", event_type),
        "reason": record.get("reason"),
        "refunded_minor": record.get("refundedMinor"),
    }
    return _cause(record, event_type, template, record.get("userId"), data, f"order {order_id}")


def _invoice_cause(record: Mapping[str, Any], rules: NotifyRules) -> Cause | None:
    attributes = record.get("attributes") or {}
    event_type = str(attributes.get("provider_event_type"))
    template = rules.templates.get(event_type)
    if template is None or event_type not in INVOICE_EVENT_TYPES:
        return None
    invoice_id = str(record["providerObjectId"])
    data = {
        "invoice_id": invoice_id,
        "amount_minor": _required(record.get("amountMinor"), "amountMinor", event_type),
        "currency": _required(record.get("currency"), "currency", event_type),
    }
    return _cause(record, event_type, template, record.get("userId"), data, f"invoice {invoice_id}")


def _cause(
    record: Mapping[str, Any],
    event_type: str,
    template: str,
    user_id: object,
    data: dict[str, Any],
    subject: str,
) -> Cause:
    return Cause(
        event_id=str(record["eventId"]),
        event_type=event_type,
        template=template,
        user_id=user_id if isinstance(user_id, str) and user_id.strip() else None,
        data={name: value for name, value in data.items() if value is not None},
        occurred_at_ms=int(record["occurredAt"]),
        correlation_id=str(record.get("correlationId") or record["eventId"]),
        subject=subject,
    )


def _required(value: object, field: str, event_type: str) -> object:
    if value is None:
        raise InvalidEvent(f"{event_type} has no {field}: nothing to notify with", field=field)
    return value


def choose_channel(contact: UserChannels | None, available: frozenset[Channel]) -> Channel:
    """The channel to notify a user on: the first of their preferred channels they have a
    contact for, else the first of EMAIL, SMS, PUSH they have one for; EMAIL when the
    user has no contact row or no contact at all (the send agent then fails the
    notification with that reason). Only channels in ``available`` (the template's) are
    chosen, unless none fits."""
    default = Channel.EMAIL if Channel.EMAIL in available else min(available)
    if contact is None:
        return default
    preferred = [_channel(name) for name in contact.preferred]
    for channel in (*(c for c in preferred if c is not None), *FALLBACK_ORDER):
        if channel in available and contact.reachable(channel):
            return channel
    return default


def _channel(name: str) -> Channel | None:
    try:
        return Channel(name.strip().upper())
    except ValueError:
        return None  # a channel this worker does not know: ignored


def notification_request(
    cause: Cause, channel: Channel, catalog: TemplateCatalog
) -> dict[str, Any]:
    """The ``notifications.requested`` record (keyed by its ``to``, the user id) asking
    for ``cause``'s template on ``channel``.

    ``data`` holds the variables the channel's template declares, checked
    (``NotificationTemplate.check``); every copy of the cause gives the same record.

    :raises ValueError: the cause has no user (the caller skips those).
    :raises UnknownTemplate: the template has no version for ``channel``.
    :raises TemplateDataError: the event's values do not fit the template (an
        ``InvalidEvent``: dead-lettered).
    """
    if cause.user_id is None:
        raise ValueError(f"{cause.subject}: no user to notify")
    template = catalog.get(cause.template, channel)
    checked = template.check(cause.data)
    notification_id = notification_id_for_cause(cause.event_id, cause.template, channel)
    return {
        "eventId": notification_id,
        "eventType": REQUEST_EVENT_TYPE,
        "version": NOTIFICATION_REQUEST_VERSION,
        "occurredAt": cause.occurred_at_ms,
        "correlationId": cause.correlation_id,
        "source": SOURCE,
        "notificationId": notification_id,
        "channel": str(channel),
        "template": cause.template,
        "to": cause.user_id,
        "data": json.dumps(
            {name: value for name, value in checked.items() if value is not None},
            sort_keys=True,
            separators=(",", ":"),
        ),
        "causeEventId": cause.event_id,
        "idempotencyKey": None,
    }


def users_of(causes: Sequence[Cause]) -> list[str]:
    """The distinct users ``causes`` notify, sorted (one contact lookup per batch)."""
    return sorted({cause.user_id for cause in causes if cause.user_id is not None})
