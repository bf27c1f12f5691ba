"""Stripe webhook events built from real Stripe object samples, for tests.

``stripe_event(type)`` wraps a deep copy of the matching sample object from
``stripe_objects.json`` in the event envelope Stripe sends, then makes the object say
what the event type says: statuses, amounts, refund flags, ``metadata.orderId`` /
``metadata.userId``, and ids that link the objects of one order (its payment intent,
charge, refund, checkout session, invoice and subscription). Placeholder values in the
samples that would contradict the event (a succeeded intent with a ``last_payment_error``,
an active subscription with ``ended_at``) are cleared.

Any event type whose object is one of the samples builds (``customer.created``,
``charge.succeeded`` ...); ``STRIPE_EVENT_TYPES`` lists the ones DESIGN §5 normalises.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingress.verify.stripe import SIGNATURE_HEADER, sign
from tests.payloads import (
    DEFAULT_AMOUNT,
    DEFAULT_CREATED,
    DEFAULT_ORDER_ID,
    DEFAULT_USER_ID,
    compact_json,
    derived_id,
    random_id,
)

__all__ = [
    "API_VERSION",
    "STRIPE_EVENT_TYPES",
    "signed_stripe_request",
    "stripe_body",
    "stripe_event",
    "stripe_object",
]

#: The API version of the installed ``stripe`` library (16.1).
API_VERSION = "2026-10-28.endive"

#: Every Stripe event type in DESIGN §5's normalisation table.
STRIPE_EVENT_TYPES: tuple[str, ...] = (
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "payment_intent.processing",
    "payment_intent.requires_action",
    "charge.refunded",
    "refund.created",
    "refund.updated",
    "refund.failed",
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
    "invoice.paid",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
    "invoice.finalized",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
)

_OBJECTS_FILE = Path(__file__).with_name("stripe_objects.json")
# Event type prefix (the type without its last part) -> sample object name.
_OBJECT_FOR_PREFIX = {
    "payment_intent": "payment_intent",
    "charge": "charge",
    "refund": "refund",
    "checkout.session": "checkout.session",
    "invoice": "invoice",
    "customer.subscription": "subscription",
    "customer": "customer",
}
_MONTH = 30 * 86_400


@functools.cache
def _samples() -> Mapping[str, Any]:
    samples: Mapping[str, Any] = json.loads(_OBJECTS_FILE.read_text(encoding="utf-8"))
    return samples


def _id_first(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with ``id`` and ``object`` leading, as Stripe orders its JSON."""
    return {"id": obj.pop("id"), "object": obj.pop("object"), **obj}


def stripe_object(name: str) -> dict[str, Any]:
    """A deep copy of the unmodified sample object ``name`` (``payment_intent``, ``event``...).

    :raises KeyError: no sample of that name.
    """
    sample: dict[str, Any] = copy.deepcopy(_samples()[name])
    return sample


@dataclass(frozen=True)
class _Order:
    """What one event says about its order; the ids of every object linked to it."""

    event_type: str
    created: int
    order_id: str | None
    user_id: str | None
    amount: int
    refund_amount: int
    currency: str
    seed: str

    def id(self, prefix: str) -> str:
        return derived_id(prefix, self.seed)

    @property
    def metadata(self) -> dict[str, str]:
        metadata = {}
        if self.order_id is not None:
            metadata["orderId"] = self.order_id
        if self.user_id is not None:
            metadata["userId"] = self.user_id
        return metadata

    @property
    def customer_id(self) -> str:
        return derived_id("cus", self.user_id or self.seed, length=14)

    @property
    def action(self) -> str:
        return self.event_type.rsplit(".", 1)[1]


def stripe_event(
    event_type: str,
    *,
    event_id: str | None = None,
    created: int | None = None,
    order_id: str | None = DEFAULT_ORDER_ID,
    user_id: str | None = DEFAULT_USER_ID,
    amount: int | None = None,
    currency: str = "usd",
    refund_amount: int | None = None,
    object_id: str | None = None,
    previous_attributes: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A Stripe event of ``event_type``, shaped like a real webhook body.

    :param event_id: defaults to a fresh, unique ``evt_...``.
    :param created: the event's (and object's) creation time; defaults to
        ``DEFAULT_CREATED``.
    :param order_id: ``metadata.orderId``; ``None`` leaves it out. Also seeds the ids of
        the linked objects, so events of one order share their payment intent id.
    :param user_id: ``metadata.userId``; ``None`` leaves it out.
    :param amount: the payment's amount in minor units; defaults to ``DEFAULT_AMOUNT``.
    :param currency: lower-case, as Stripe sends it.
    :param refund_amount: for refund events, the amount refunded; defaults to ``amount``
        (a full refund). Less than ``amount`` makes a partial refund.
    :param object_id: the id of ``data.object``; defaults to one derived from the order.
    :param previous_attributes: set as ``data.previous_attributes`` (``*.updated``).
    :param overrides: top-level fields of ``data.object`` to set last, as given.
    :raises ValueError: no sample object for the event type's prefix.
    """
    prefix = event_type.rsplit(".", 1)[0]
    if prefix not in _OBJECT_FOR_PREFIX:
        raise ValueError(f"no sample Stripe object for events of type {event_type!r}")
    created = DEFAULT_CREATED if created is None else created
    amount = DEFAULT_AMOUNT if amount is None else amount
    order = _Order(
        event_type=event_type,
        created=created,
        order_id=order_id,
        user_id=user_id,
        amount=amount,
        refund_amount=amount if refund_amount is None else refund_amount,
        currency=currency,
        seed=order_id if order_id is not None else random_id("seed"),
    )
    name = _OBJECT_FOR_PREFIX[prefix]
    body = stripe_object(name)
    body.update(metadata=order.metadata, livemode=False, created=created)
    if "currency" in body:
        body["currency"] = currency
    _SHAPERS[name](body, order)
    if object_id is not None:
        body["id"] = object_id
    body.update(overrides)

    data: dict[str, Any] = {"object": _id_first(body)}
    if previous_attributes is not None:
        data["previous_attributes"] = dict(previous_attributes)
    envelope = stripe_object("event")
    envelope.update(
        id=event_id if event_id is not None else random_id("evt"),
        api_version=API_VERSION,
        created=created,
        data=data,
        livemode=False,
        pending_webhooks=1,
        type=event_type,
    )
    return _id_first(envelope)


def stripe_body(event: Mapping[str, Any]) -> bytes:
    """The event as Stripe-style JSON bytes: compact, stable for the same dict."""
    return compact_json(event)


def signed_stripe_request(
    event: Mapping[str, Any], secret: str, timestamp: int
) -> tuple[bytes, dict[str, str]]:
    """``(body, headers)`` for POSTing ``event``, signed at ``timestamp`` with ``secret``."""
    body = stripe_body(event)
    headers = {
        SIGNATURE_HEADER: sign(body, secret, timestamp),
        "Content-Type": "application/json; charset=utf-8",
    }
    return body, headers


# -- one shaper per object: make the sample say what the event type says --------------


def _payment_intent(pi: dict[str, Any], order: _Order) -> None:
    pi_id = order.id("pi")
    pi.update(
        id=pi_id,
        amount=order.amount,
        amount_capturable=0,
        amount_received=0,
        canceled_at=None,
        cancellation_reason=None,
        client_secret=f"{pi_id}_secret_{order.id('s')[2:]}",
        customer=order.customer_id,
        last_payment_error=None,
        latest_charge=None,
        next_action=None,
        payment_method=None,
        processing=None,
        status="requires_payment_method",
        transfer_data=None,
    )
    action = order.action
    if action == "succeeded":
        pi.update(
            status="succeeded",
            amount_received=order.amount,
            latest_charge=order.id("ch"),
            payment_method=order.id("pm"),
        )
    elif action == "payment_failed":
        pi.update(
            latest_charge=order.id("ch"),
            last_payment_error={
                "charge": order.id("ch"),
                "code": "card_declined",
                "decline_code": "generic_decline",
                "message": "Your card was declined.",
                "type": "card_error",
            },
        )
    elif action == "canceled":
        pi.update(
            status="canceled",
            canceled_at=order.created,
            cancellation_reason="requested_by_customer",
        )
    elif action == "processing":
        pi.update(status="processing", payment_method=order.id("pm"))
    elif action == "requires_action":
        pi.update(
            status="requires_action",
            payment_method=order.id("pm"),
            next_action={"type": "use_stripe_sdk", "use_stripe_sdk": {}},
        )


def _charge(charge: dict[str, Any], order: _Order) -> None:
    charge_id = order.id("ch")
    refunded = order.refund_amount if order.action == "refunded" else 0
    refunds = []
    if refunded:
        refund = stripe_object("refund")
        refund.update(metadata=order.metadata, created=order.created)
        _refund(refund, order)
        refunds.append(_id_first(refund))
    charge.update(
        id=charge_id,
        amount=order.amount,
        amount_captured=order.amount,
        amount_refunded=refunded,
        balance_transaction=order.id("txn"),
        captured=True,
        customer=order.customer_id,
        outcome={
            "advice_code": None,
            "network_advice_code": None,
            "network_decline_code": None,
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "seller_message": "Payment complete.",
            "type": "authorized",
        },
        paid=True,
        payment_intent=order.id("pi"),
        payment_method=order.id("pm"),
        refunded=refunded == order.amount,
        refunds={
            "data": refunds,
            "has_more": False,
            "object": "list",
            "url": f"/v1/charges/{charge_id}/refunds",
        },
        source=None,
        status="succeeded",
        transfer_data=None,
    )


def _refund(refund: dict[str, Any], order: _Order) -> None:
    refund.update(
        id=order.id("re"),
        amount=order.refund_amount,
        balance_transaction=order.id("txn_re"),
        charge=order.id("ch"),
        currency=order.currency,
        payment_intent=order.id("pi"),
        reason="requested_by_customer",
        status="succeeded",
    )
    if order.event_type == "refund.failed":
        refund.update(
            status="failed",
            failure_reason="expired_or_canceled_card",
            failure_balance_transaction=order.id("txn_rf"),
        )


def _checkout_session(session: dict[str, Any], order: _Order) -> None:
    session_id = f"cs_test_{order.id('cs')[3:]}"
    session.update(
        id=session_id,
        amount_subtotal=order.amount,
        amount_total=order.amount,
        client_reference_id=order.order_id,
        currency_conversion=None,
        customer=order.customer_id,
        expires_at=order.created + 86_400,
        mode="payment",
        payment_intent=order.id("pi"),
        payment_status="unpaid",
        shipping_cost=None,
        status="open",
        total_details={"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        url=f"https://checkout.stripe.com/c/pay/{session_id}",
    )
    action = order.action
    if action in ("completed", "async_payment_succeeded"):
        session.update(status="complete", payment_status="paid", url=None)
    elif action == "async_payment_failed":
        session.update(status="complete", payment_status="unpaid", url=None)
    elif action == "expired":
        session.update(status="expired", payment_status="unpaid", payment_intent=None, url=None)


def _invoice(invoice: dict[str, Any], order: _Order) -> None:
    invoice_id = order.id("in")
    line = invoice["lines"]["data"][0]
    line.update(
        amount=order.amount, currency=order.currency, invoice=invoice_id, subtotal=order.amount
    )
    invoice.update(
        id=invoice_id,
        amount_due=order.amount,
        amount_overpaid=0,
        amount_paid=0,
        amount_remaining=order.amount,
        attempt_count=0,
        attempted=False,
        billing_reason="subscription_cycle",
        customer=order.customer_id,
        from_invoice=None,
        last_finalization_error=None,
        parent={
            "quote_details": None,
            "subscription_details": {
                "metadata": order.metadata,
                "subscription": order.id("sub"),
            },
            "type": "subscription_details",
        },
        shipping_cost=None,
        status="draft",
        subtotal=order.amount,
        subtotal_excluding_tax=order.amount,
        total=order.amount,
        total_excluding_tax=order.amount,
    )
    invoice["lines"]["url"] = f"/v1/invoices/{invoice_id}/lines"
    transitions = invoice["status_transitions"]
    action = order.action
    if action in ("paid", "payment_succeeded"):
        invoice.update(
            status="paid",
            amount_paid=order.amount,
            amount_remaining=0,
            attempted=True,
            attempt_count=1,
        )
        transitions.update(finalized_at=order.created, paid_at=order.created)
    elif action == "payment_failed":
        invoice.update(status="open", attempted=True, attempt_count=1)
        transitions["finalized_at"] = order.created
    elif action == "finalized":
        invoice["status"] = "open"
        transitions["finalized_at"] = order.created


def _subscription(subscription: dict[str, Any], order: _Order) -> None:
    subscription_id = order.id("sub")
    item = subscription["items"]["data"][0]
    price = item["price"]
    price.update(
        created=order.created,
        currency=order.currency,
        custom_unit_amount=None,
        transform_quantity=None,
        unit_amount=order.amount,
        unit_amount_decimal=str(order.amount),
    )
    item.update(
        created=order.created,
        current_period_end=order.created + _MONTH,
        current_period_start=order.created,
        subscription=subscription_id,
        # The legacy ``plan`` mirrors the price it was made from.
        plan={
            "id": price["id"],
            "object": "plan",
            "active": True,
            "amount": order.amount,
            "amount_decimal": str(order.amount),
            "billing_scheme": "per_unit",
            "created": order.created,
            "currency": order.currency,
            "interval": "month",
            "interval_count": 1,
            "livemode": False,
            "metadata": {},
            "meter": None,
            "nickname": None,
            "product": price["product"],
            "tiers_mode": None,
            "transform_usage": None,
            "trial_period_days": None,
            "usage_type": "licensed",
        },
    )
    subscription["items"]["url"] = f"/v1/subscription_items?subscription={subscription_id}"
    subscription.update(
        id=subscription_id,
        billing_cycle_anchor=order.created,
        billing_cycle_anchor_config=None,
        cancel_at=None,
        cancel_at_period_end=False,
        canceled_at=None,
        cancellation_details={"comment": None, "feedback": None, "reason": None},
        customer=order.customer_id,
        ended_at=None,
        latest_invoice=order.id("in"),
        next_pending_invoice_item_invoice=None,
        pause_collection=None,
        pending_invoice_item_interval=None,
        pending_update=None,
        start_date=order.created,
        status="active",
        transfer_data=None,
        trial_end=None,
        trial_start=None,
    )
    action = order.action
    if action == "deleted":
        subscription.update(status="canceled", canceled_at=order.created, ended_at=order.created)
        subscription["cancellation_details"]["reason"] = "cancellation_requested"
    elif action == "paused":
        subscription["status"] = "paused"


def _customer(customer: dict[str, Any], order: _Order) -> None:
    customer.update(id=order.customer_id, discount=None)


_SHAPERS: dict[str, Callable[[dict[str, Any], _Order], None]] = {
    "payment_intent": _payment_intent,
    "charge": _charge,
    "refund": _refund,
    "checkout.session": _checkout_session,
    "invoice": _invoice,
    "subscription": _subscription,
    "customer": _customer,
}
