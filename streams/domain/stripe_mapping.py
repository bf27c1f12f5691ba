"""Stripe events → billing topics: which types map where, and where each value lives.

Structure only: this module finds the object, ids, amounts, status and metadata in a
Stripe event body and returns them as an :class:`~streams.domain.normalise.Extracted`;
``normalise`` applies the provider-neutral rules (currency case, amount types, order and
user ids, attributes as strings, key, envelope).

Stripe facts relied on here:

- The object is ``data.object``, a snapshot at event time; ``data.object.object`` names
  its kind (``payment_intent``, ``charge``, ...).
- Linked objects are ids or, when expanded, objects with an ``id`` (both accepted).
- Lists (``charge.refunds``) are newest first, and since API version 2022-11-15
  ``charge.refunds`` is absent unless expanded.
- Since API version 2025-03-31 an invoice names its payment intent only in the
  ``payments`` list (``payment_intent`` before) and its subscription under
  ``parent.subscription_details`` (``subscription`` before); both spellings are read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from base.errors import InvalidEvent

if TYPE_CHECKING:  # type-only: normalise imports this module at run time
    from streams.domain.normalise import Extracted

__all__ = ["EVENT_TOPICS", "map_event", "topic_for"]

EVENT_TOPICS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "payment_intent.succeeded": "billing.payment.succeeded",
        "payment_intent.payment_failed": "billing.payment.failed",
        "payment_intent.canceled": "billing.payment.failed",
        "payment_intent.processing": "billing.payment.pending",
        "payment_intent.requires_action": "billing.payment.pending",
        "charge.refunded": "billing.payment.refunded",
        "refund.created": "billing.payment.refunded",
        "refund.updated": "billing.payment.refunded",
        "refund.failed": "billing.payment.refunded",
        "checkout.session.completed": "billing.checkout.completed",
        "checkout.session.async_payment_succeeded": "billing.checkout.completed",
        "checkout.session.async_payment_failed": "billing.checkout.failed",
        "checkout.session.expired": "billing.checkout.expired",
        "invoice.paid": "billing.invoice.updated",
        "invoice.payment_succeeded": "billing.invoice.updated",
        "invoice.payment_failed": "billing.invoice.updated",
        "invoice.finalized": "billing.invoice.updated",
        "customer.subscription.created": "billing.subscription.updated",
        "customer.subscription.updated": "billing.subscription.updated",
        "customer.subscription.deleted": "billing.subscription.updated",
        "customer.subscription.paused": "billing.subscription.updated",
        "customer.subscription.resumed": "billing.subscription.updated",
    }
)
"""Every Stripe event type DESIGN §5 maps, and its topic. Any other type is unmapped."""

# A payment intent's status is taken from the event type, not the object: a
# payment_failed intent is back in requires_payment_method, which says nothing useful.
_PAYMENT_STATUS: Final = {
    "succeeded": "succeeded",
    "payment_failed": "failed",
    "canceled": "canceled",
    "processing": "pending",
    "requires_action": "requires_action",
}
# Likewise a checkout session: async_payment_failed leaves it "complete" but unpaid.
_CHECKOUT_STATUS: Final = {
    "completed": "complete",
    "async_payment_succeeded": "complete",
    "async_payment_failed": "failed",
    "expired": "expired",
}
_UNKNOWN_STATUS: Final = "unknown"


def topic_for(event_type: str) -> str | None:
    """The billing topic of a Stripe event type, or ``None`` when it is not mapped."""
    return EVENT_TOPICS.get(event_type)


def map_event(event: Mapping[str, Any]) -> Extracted | None:
    """Read one Stripe event body (the parsed JSON object).

    :returns: the extracted values, or ``None`` when the event type is not mapped
        (its body is not looked at further).
    :raises InvalidEvent: the body has no ``type``, or a mapped event has no usable
        ``data.object`` (missing, not an object, of the wrong kind, or without an id).
        Nothing else is raised for any JSON value.
    """
    event_type = event.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise InvalidEvent("the event has no type", field="type")
    topic = EVENT_TOPICS.get(event_type)
    if topic is None:
        return None
    data = event.get("data")
    obj = data.get("object") if isinstance(data, Mapping) else None
    if not isinstance(obj, Mapping):
        raise InvalidEvent(f"{event_type} has no data.object", field="data.object")
    prefix, _, action = event_type.rpartition(".")
    kind, mapper = _OBJECTS[prefix]
    found = obj.get("object")
    if found is not None and found != kind:
        raise InvalidEvent(
            f"{event_type} carries a {found!r} object, not a {kind}", field="data.object.object"
        )
    object_id = _id_of(obj.get("id"))
    if object_id is None:
        raise InvalidEvent(f"{event_type} object has no id", field="data.object.id")
    extracted = mapper(obj, object_id, action, topic, _mapping(data))
    extracted["created"] = event.get("created")
    extracted["attributes"].update(
        provider_event_type=event_type,
        livemode=event.get("livemode"),
        account_id=event.get("account"),  # Connect: the connected account
        api_version=event.get("api_version"),
    )
    return extracted


# -- one mapper per object kind ------------------------------------------------------
# Each returns the object's values; map_event adds the event-level ones. ``data`` is
# the event's data (for ``previous_attributes``).


def _payment_intent(
    pi: Mapping[str, Any], pi_id: str, action: str, topic: str, data: Mapping[str, Any]
) -> Extracted:
    error = _mapping(pi.get("last_payment_error"))
    return _extracted(
        topic,
        provider_object_id=pi_id,
        status=_PAYMENT_STATUS[action],
        # The intent is the payment: set paymentId too, so every payment-related
        # record names its payment in the same field.
        payment_id=pi_id,
        amount=pi.get("amount"),
        currency=pi.get("currency"),
        notes=(pi.get("metadata"),),
        attributes={
            "customer_id": _id_of(pi.get("customer")),
            "charge_id": _id_of(pi.get("latest_charge")),
            "failure_code": error.get("code"),
            "decline_code": error.get("decline_code"),
            "failure_type": error.get("type"),
            "cancellation_reason": pi.get("cancellation_reason"),
        },
    )


def _charge(
    charge: Mapping[str, Any], charge_id: str, action: str, topic: str, data: Mapping[str, Any]
) -> Extracted:
    # Only charge.refunded maps. The refund it reports is the charge's newest; without
    # an expanded refunds list the charge itself is the object.
    refund = _latest_refund(charge)
    refund_id = _id_of(refund.get("id"))
    amount = charge.get("amount")
    refunded = charge.get("amount_refunded")
    if type(amount) is int and type(refunded) is int:
        full = refunded >= amount
    else:
        full = charge.get("refunded") is True
    return _extracted(
        topic,
        provider_object_id=refund_id or charge_id,
        status="refunded" if full else "partially_refunded",
        payment_id=_id_of(charge.get("payment_intent")),
        refund_id=refund_id,
        # This refund's amount when known; else the charge's total refunded.
        amount=refund.get("amount") if refund_id else refunded,
        amount_refunded=refunded,
        currency=charge.get("currency"),
        notes=(charge.get("metadata"), refund.get("metadata")),
        attributes={
            "charge_id": charge_id,
            "customer_id": _id_of(charge.get("customer")),
            "refund_status": _lower(refund.get("status")),
            "refund_reason": refund.get("reason"),
        },
    )


def _refund(
    refund: Mapping[str, Any], refund_id: str, action: str, topic: str, data: Mapping[str, Any]
) -> Extracted:
    status = _lower(refund.get("status")) or ("failed" if action == "failed" else _UNKNOWN_STATUS)
    return _extracted(
        topic,
        provider_object_id=refund_id,
        status=status,
        payment_id=_id_of(refund.get("payment_intent")),
        refund_id=refund_id,
        amount=refund.get("amount"),
        currency=refund.get("currency"),
        notes=(refund.get("metadata"),),
        attributes={
            "charge_id": _id_of(refund.get("charge")),
            "customer_id": _id_of(refund.get("customer")),
            "refund_reason": refund.get("reason"),
            "failure_reason": refund.get("failure_reason"),
        },
    )


def _checkout_session(
    session: Mapping[str, Any], session_id: str, action: str, topic: str, data: Mapping[str, Any]
) -> Extracted:
    return _extracted(
        topic,
        provider_object_id=session_id,
        status=_CHECKOUT_STATUS[action],
        payment_id=_id_of(session.get("payment_intent")),
        amount=session.get("amount_total"),
        currency=session.get("currency"),
        notes=(session.get("metadata"),),
        attributes={
            "payment_status": session.get("payment_status"),
            "mode": session.get("mode"),
            "customer_id": _id_of(session.get("customer")),
            # Not used as the order id (DESIGN: ids come from metadata), but kept: many
            # integrations put their order reference here.
            "client_reference_id": session.get("client_reference_id"),
            "subscription_id": _id_of(session.get("subscription")),
            "invoice_id": _id_of(session.get("invoice")),
        },
    )


def _invoice(
    invoice: Mapping[str, Any], invoice_id: str, action: str, topic: str, data: Mapping[str, Any]
) -> Extracted:
    details = _mapping(_mapping(invoice.get("parent")).get("subscription_details"))
    return _extracted(
        topic,
        provider_object_id=invoice_id,
        status=_lower(invoice.get("status")) or _UNKNOWN_STATUS,
        payment_id=_id_of(invoice.get("payment_intent")) or _invoice_payment_intent(invoice),
        # What the customer owes (total less credits); amount_paid/remaining say how much
        # of it is settled.
        amount=invoice.get("amount_due"),
        currency=invoice.get("currency"),
        # A subscription invoice carries the subscription's metadata under its parent.
        notes=(invoice.get("metadata"), details.get("metadata")),
        attributes={
            "customer_id": _id_of(invoice.get("customer")),
            "subscription_id": _id_of(invoice.get("subscription"))
            or _id_of(details.get("subscription")),
            "billing_reason": invoice.get("billing_reason"),
            "amount_paid": invoice.get("amount_paid"),
            "amount_remaining": invoice.get("amount_remaining"),
            "attempt_count": invoice.get("attempt_count"),
        },
    )


def _subscription(
    sub: Mapping[str, Any], sub_id: str, action: str, topic: str, data: Mapping[str, Any]
) -> Extracted:
    previous = _mapping(data.get("previous_attributes"))
    return _extracted(
        topic,
        provider_object_id=sub_id,
        status=_lower(sub.get("status")) or _UNKNOWN_STATUS,
        # A subscription has prices, not one amount: amountMinor stays null.
        amount=None,
        currency=sub.get("currency"),
        notes=(sub.get("metadata"),),
        attributes={
            "customer_id": _id_of(sub.get("customer")),
            "invoice_id": _id_of(sub.get("latest_invoice")),
            "cancel_at_period_end": sub.get("cancel_at_period_end"),
            "cancellation_reason": _mapping(sub.get("cancellation_details")).get("reason"),
            "previous_status": _lower(previous.get("status")),
        },
    )


_Mapper = Callable[[Mapping[str, Any], str, str, str, Mapping[str, Any]], "Extracted"]
# Event type prefix (the type without its action) -> (object kind, mapper).
_OBJECTS: Final[Mapping[str, tuple[str, _Mapper]]] = {
    "payment_intent": ("payment_intent", _payment_intent),
    "charge": ("charge", _charge),
    "refund": ("refund", _refund),
    "checkout.session": ("checkout.session", _checkout_session),
    "invoice": ("invoice", _invoice),
    "customer.subscription": ("subscription", _subscription),
}


# -- helpers ---------------------------------------------------------------------------


def _extracted(
    topic: str,
    *,
    provider_object_id: str,
    status: str,
    amount: object,
    currency: object,
    notes: tuple[object, ...],
    attributes: dict[str, object],
    payment_id: str | None = None,
    refund_id: str | None = None,
    amount_refunded: object = None,
) -> Extracted:
    return {
        "topic": topic,
        "created": None,
        "providerObjectId": provider_object_id,
        "status": status,
        "paymentId": payment_id,
        "refundId": refund_id,
        "amountMinor": amount,
        "amountRefundedMinor": amount_refunded,
        "currency": currency,
        "notes": notes,
        "attributes": attributes,
    }


_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


def _mapping(value: object) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one (absent, null, wrong type)."""
    return value if isinstance(value, Mapping) else _EMPTY


def _id_of(value: object) -> str | None:
    """The id of an expandable field: the id string itself or the expanded object's."""
    if isinstance(value, Mapping):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def _lower(value: object) -> str | None:
    return value.lower() if isinstance(value, str) and value else None


def _latest_refund(charge: Mapping[str, Any]) -> Mapping[str, Any]:
    """The newest refund in an expanded ``charge.refunds`` list, or an empty mapping."""
    refunds = _mapping(charge.get("refunds")).get("data")
    if not isinstance(refunds, list):
        return _EMPTY
    candidates = [r for r in refunds if isinstance(r, Mapping) and _id_of(r.get("id"))]
    if not candidates:
        return _EMPTY
    # Highest ``created`` wins; on a tie (or no times) the first, as lists are newest first.
    return max(candidates, key=lambda r: r["created"] if type(r.get("created")) is int else -1)


def _invoice_payment_intent(invoice: Mapping[str, Any]) -> str | None:
    """The payment intent in an (included) ``invoice.payments`` list: a paid one first."""
    payments = _mapping(invoice.get("payments")).get("data")
    if not isinstance(payments, list):
        return None
    found: str | None = None
    for entry in payments:
        if not isinstance(entry, Mapping):
            continue
        pi_id = _id_of(_mapping(entry.get("payment")).get("payment_intent"))
        if pi_id is None:
            continue
        if entry.get("status") == "paid":
            return pi_id
        found = found or pi_id
    return found
