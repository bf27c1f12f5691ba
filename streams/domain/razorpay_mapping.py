"""Razorpay events → billing topics: which types map where, and where each value lives.

Structure only, like ``stripe_mapping``: ``normalise`` applies the neutral rules.

Razorpay facts relied on here:

- The body is an envelope (``event``, ``account_id``, ``created_at`` in Unix seconds,
  ``payload``); each affected entity is at ``payload.<name>.entity``. ``refund.*``
  carries the refund and its payment; ``subscription.charged`` also the payment.
- The event id is not in the body (it is the ``X-Razorpay-Event-Id`` header, already in
  the raw record).
- Amounts are integers in paise; currency is upper-case (``INR``).
- ``notes`` hold our order and user ids, and are sent as ``[]`` when empty.
- A payment's ``order_id`` is Razorpay's own order (``order_...``), not ours: it is kept
  as the ``provider_order_id`` attribute, never as ``orderId``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from base.errors import InvalidEvent

if TYPE_CHECKING:  # type-only: normalise imports this module at run time
    from streams.domain.normalise import Extracted

__all__ = ["EVENT_TOPICS", "SUBSCRIPTION_TOPIC", "map_event", "topic_for"]

EVENT_TOPICS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "payment.captured": "billing.payment.succeeded",
        "payment.failed": "billing.payment.failed",
        "refund.processed": "billing.payment.refunded",
        "refund.failed": "billing.payment.refunded",
    }
)
"""The Razorpay event types DESIGN §5 maps by name. Besides these, every
``subscription.<action>`` maps to :data:`SUBSCRIPTION_TOPIC`; anything else
(``payment.authorized``, ``refund.created``, ``order.paid``, ...) is unmapped."""

SUBSCRIPTION_TOPIC: Final = "billing.subscription.updated"

_PAYMENT_STATUS: Final = {"captured": "succeeded", "failed": "failed"}
# Razorpay refund statuses in the neutral refund vocabulary (Stripe's).
_REFUND_STATUS: Final = {
    "processed": "succeeded",
    "failed": "failed",
    "pending": "pending",
    "created": "pending",
}
# Razorpay spells it "cancelled"; Stripe (and the projections) "canceled".
_SUBSCRIPTION_STATUS: Final = {"cancelled": "canceled"}
_UNKNOWN_STATUS: Final = "unknown"


def topic_for(event_type: str) -> str | None:
    """The billing topic of a Razorpay event type, or ``None`` when it is not mapped."""
    topic = EVENT_TOPICS.get(event_type)
    if topic is None and event_type.startswith("subscription.") and len(event_type) > 13:
        topic = SUBSCRIPTION_TOPIC
    return topic


def map_event(event: Mapping[str, Any]) -> Extracted | None:
    """Read one Razorpay webhook body (the parsed JSON object).

    :returns: the extracted values, or ``None`` when the event type is not mapped.
    :raises InvalidEvent: the body has no ``event``, or a mapped event lacks its main
        entity (``payload.payment.entity``, ``payload.refund.entity`` or
        ``payload.subscription.entity``) or that entity's ``id``. Nothing else is raised
        for any JSON value.
    """
    event_type = event.get("event")
    if not isinstance(event_type, str) or not event_type:
        raise InvalidEvent("the event has no event type", field="event")
    topic = topic_for(event_type)
    if topic is None:
        return None
    payload = event.get("payload")
    if not isinstance(payload, Mapping):
        raise InvalidEvent(f"{event_type} has no payload", field="payload")
    name, _, action = event_type.partition(".")
    entity = _entity(payload, name)
    if entity is None:
        raise InvalidEvent(f"{event_type} has no {name} entity", field=f"payload.{name}.entity")
    entity_id = _str(entity.get("id"))
    if entity_id is None:
        raise InvalidEvent(
            f"{event_type} {name} entity has no id", field=f"payload.{name}.entity.id"
        )
    if name == "payment":
        extracted = _payment(entity, entity_id, action, topic)
    elif name == "refund":
        extracted = _refund(entity, entity_id, action, topic, _entity(payload, "payment"))
    else:
        extracted = _subscription(entity, entity_id, topic, _entity(payload, "payment"))
    extracted["created"] = event.get("created_at")
    extracted["attributes"].update(
        provider_event_type=event_type, account_id=event.get("account_id")
    )
    return extracted


def _payment(payment: Mapping[str, Any], payment_id: str, action: str, topic: str) -> Extracted:
    return {
        "topic": topic,
        "created": None,
        "providerObjectId": payment_id,
        "status": _PAYMENT_STATUS[action],
        # The payment is its own paymentId, as for Stripe payment intents.
        "paymentId": payment_id,
        "refundId": None,
        "amountMinor": payment.get("amount"),
        "amountRefundedMinor": None,
        "currency": payment.get("currency"),
        "notes": (payment.get("notes"),),
        "attributes": {
            "provider_order_id": payment.get("order_id"),
            "invoice_id": payment.get("invoice_id"),
            "customer_id": payment.get("customer_id"),
            "method": payment.get("method"),
            "failure_code": payment.get("error_code"),
            "failure_reason": payment.get("error_reason"),
            "error_source": payment.get("error_source"),
            "error_step": payment.get("error_step"),
        },
    }


def _refund(
    refund: Mapping[str, Any],
    refund_id: str,
    action: str,
    topic: str,
    payment: Mapping[str, Any] | None,
) -> Extracted:
    payment = payment or {}
    raw_status = _str(refund.get("status"))
    if raw_status is None:  # fall back on what the event type says
        status = _REFUND_STATUS.get(action, _UNKNOWN_STATUS)
    else:
        status = _REFUND_STATUS.get(raw_status.lower(), raw_status.lower())
    return {
        "topic": topic,
        "created": None,
        "providerObjectId": refund_id,
        "status": status,
        "paymentId": _str(refund.get("payment_id")) or _str(payment.get("id")),
        "refundId": refund_id,
        "amountMinor": refund.get("amount"),
        "amountRefundedMinor": payment.get("amount_refunded"),
        "currency": refund.get("currency") or payment.get("currency"),
        # Refund notes are the ones given when refunding; our ids are usually only on
        # the payment.
        "notes": (refund.get("notes"), payment.get("notes")),
        "attributes": {
            "provider_order_id": payment.get("order_id"),
            "payment_refund_status": payment.get("refund_status"),
            "speed_processed": refund.get("speed_processed"),
        },
    }


def _subscription(
    sub: Mapping[str, Any], sub_id: str, topic: str, payment: Mapping[str, Any] | None
) -> Extracted:
    payment = payment or {}
    raw_status = _str(sub.get("status"))
    status = (
        _SUBSCRIPTION_STATUS.get(raw_status.lower(), raw_status.lower())
        if raw_status
        else _UNKNOWN_STATUS
    )
    return {
        "topic": topic,
        "created": None,
        "providerObjectId": sub_id,
        "status": status,
        # subscription.charged carries the payment that charged the cycle: its id, amount
        # and currency. Other subscription events have no amount.
        "paymentId": _str(payment.get("id")),
        "refundId": None,
        "amountMinor": payment.get("amount"),
        "amountRefundedMinor": None,
        "currency": payment.get("currency"),
        "notes": (sub.get("notes"), payment.get("notes")),
        "attributes": {
            "plan_id": sub.get("plan_id"),
            "customer_id": sub.get("customer_id"),
            "paid_count": sub.get("paid_count"),
            "total_count": sub.get("total_count"),
        },
    }


def _entity(payload: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    """``payload.<name>.entity`` when it is an object, else ``None``."""
    wrapper = payload.get(name)
    entity = wrapper.get("entity") if isinstance(wrapper, Mapping) else None
    return entity if isinstance(entity, Mapping) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
