"""Razorpay webhook bodies shaped like Razorpay's documented payloads, for tests.

A Razorpay webhook body is an envelope (``entity: "event"``, ``account_id``, ``event``,
``contains``, ``payload``, ``created_at``) around the affected entities, each under
``payload.<name>.entity``: a payment for ``payment.*``; the refund and its payment for
``refund.*``; the subscription (and, for ``subscription.charged``, the payment) for
``subscription.*``. Amounts are in paise, currency upper-case ``INR``; our order and
user ids travel in ``notes``.

Two Razorpay habits worth knowing, both reproduced here: empty ``notes`` are sent as a
JSON array ``[]``, not an object; and ``order_id`` on a payment is Razorpay's own order
(``order_...``), not ours. The event id is not in the body: it travels in the
``X-Razorpay-Event-Id`` header, which ``signed_razorpay_request`` sets.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ingress.verify.razorpay import EVENT_ID_HEADER, SIGNATURE_HEADER, sign
from tests.payloads import (
    DEFAULT_AMOUNT,
    DEFAULT_CREATED,
    DEFAULT_ORDER_ID,
    DEFAULT_USER_ID,
    base62_token,
    compact_json,
    derived_id,
)

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "RAZORPAY_EVENT_TYPES",
    "razorpay_body",
    "razorpay_event",
    "signed_razorpay_request",
]

DEFAULT_ACCOUNT_ID = derived_id("acc", "sluice-tests", length=14)

#: Razorpay's status for a subscription after each ``subscription.*`` event.
_SUBSCRIPTION_STATUS = {
    "authenticated": "authenticated",
    "activated": "active",
    "charged": "active",
    "pending": "pending",
    "halted": "halted",
    "paused": "paused",
    "resumed": "active",
    "updated": "active",
    "completed": "completed",
    "cancelled": "cancelled",
}

_PAYMENT_STATUS = {"authorized": "authorized", "captured": "captured", "failed": "failed"}
_REFUND_STATUS = {"created": "pending", "processed": "processed", "failed": "failed"}

#: The Razorpay event types DESIGN §5 normalises (``subscription.*`` spelled out).
RAZORPAY_EVENT_TYPES: tuple[str, ...] = (
    "payment.captured",
    "payment.failed",
    "refund.processed",
    "refund.failed",
    *(f"subscription.{action}" for action in _SUBSCRIPTION_STATUS),
)

_MONTH = 30 * 86_400
_TOTAL_COUNT = 12  # billing cycles of the sample subscription


@dataclass(frozen=True)
class _Order:
    event_type: str
    created_at: int
    order_id: str | None
    user_id: str | None
    amount: int
    refund_amount: int
    currency: str
    seed: str

    def id(self, prefix: str) -> str:
        """A Razorpay-style id (``pay_`` + 14 base62 characters) for this order."""
        return derived_id(prefix, self.seed, length=14)

    @property
    def notes(self) -> dict[str, str] | list[str]:
        notes = {}
        if self.order_id is not None:
            notes["orderId"] = self.order_id
        if self.user_id is not None:
            notes["userId"] = self.user_id
        return notes or []  # Razorpay sends empty notes as [].

    @property
    def action(self) -> str:
        return self.event_type.split(".", 1)[1]


def razorpay_event(
    event_type: str,
    *,
    created_at: int | None = None,
    order_id: str | None = DEFAULT_ORDER_ID,
    user_id: str | None = DEFAULT_USER_ID,
    amount: int | None = None,
    currency: str = "INR",
    refund_amount: int | None = None,
    account_id: str = DEFAULT_ACCOUNT_ID,
    **overrides: Any,
) -> dict[str, Any]:
    """A Razorpay webhook body for ``event_type`` (``payment.*``, ``refund.*``,
    ``subscription.*``).

    :param created_at: the event's (and its entities') time; defaults to
        ``DEFAULT_CREATED``.
    :param order_id: ``notes.orderId``; ``None`` leaves it out. Also seeds the entity
        ids, so events of one order share their payment id.
    :param user_id: ``notes.userId``; ``None`` leaves it out. With both ``None``,
        ``notes`` is ``[]``, as Razorpay sends it.
    :param amount: the payment's amount in paise; defaults to ``DEFAULT_AMOUNT``.
    :param refund_amount: for refund events, the amount refunded; defaults to ``amount``
        (full). Less than ``amount`` makes a partial refund.
    :param overrides: top-level fields of the event's main entity (the payment, refund
        or subscription) to set last, as given.
    :raises ValueError: no payload shape for the type: payment ``authorized``/``captured``/
        ``failed``, refund ``created``/``processed``/``failed`` and the ``subscription.*``
        types in ``RAZORPAY_EVENT_TYPES`` are built.
    """
    created_at = DEFAULT_CREATED if created_at is None else created_at
    amount = DEFAULT_AMOUNT if amount is None else amount
    order = _Order(
        event_type=event_type,
        created_at=created_at,
        order_id=order_id,
        user_id=user_id,
        amount=amount,
        refund_amount=amount if refund_amount is None else refund_amount,
        currency=currency,
        seed=order_id if order_id is not None else uuid.uuid4().hex,
    )
    entity_name = event_type.split(".", 1)[0]
    if entity_name == "payment" and order.action in _PAYMENT_STATUS:
        payload = {"payment": _payment(order, _PAYMENT_STATUS[order.action])}
    elif entity_name == "refund" and order.action in _REFUND_STATUS:
        payload = {"refund": _refund(order), "payment": _refunded_payment(order)}
    elif entity_name == "subscription" and order.action in _SUBSCRIPTION_STATUS:
        payload = {"subscription": _subscription(order)}
        if order.action == "charged":
            payload["payment"] = _payment(
                order,
                "captured",
                invoice_id=order.id("inv"),
                description="Recurring payment via subscription",
            )
    else:
        raise ValueError(f"no Razorpay payload shape for events of type {event_type!r}")
    payload[entity_name].update(overrides)
    return {
        "entity": "event",
        "account_id": account_id,
        "event": event_type,
        "contains": list(payload),
        "payload": {name: {"entity": entity} for name, entity in payload.items()},
        "created_at": created_at,
    }


def razorpay_body(event: Mapping[str, Any]) -> bytes:
    """The body as JSON bytes: compact, stable for the same dict."""
    return compact_json(event)


def signed_razorpay_request(
    event: Mapping[str, Any], secret: str, event_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """``(body, headers)`` for POSTing ``event``, signed with ``secret``.

    :param event_id: the ``X-Razorpay-Event-Id`` header; a fresh one by default. Pass
        the same id to simulate Razorpay retrying the same event.
    """
    body = razorpay_body(event)
    headers = {
        SIGNATURE_HEADER: sign(body, secret),
        EVENT_ID_HEADER: event_id if event_id is not None else base62_token(uuid.uuid4().hex, 14),
        "Content-Type": "application/json",
    }
    return body, headers


# -- entities -------------------------------------------------------------------------


def _payment(order: _Order, status: str, **fields: Any) -> dict[str, Any]:
    failed = status == "failed"
    fee = None if failed else order.amount * 2 // 100
    payment: dict[str, Any] = {
        "id": order.id("pay"),
        "entity": "payment",
        "amount": order.amount,
        "currency": order.currency,
        "status": status,
        "order_id": order.id("order"),
        "invoice_id": None,
        "international": False,
        "method": "card",
        "amount_refunded": 0,
        "refund_status": None,
        "captured": status in ("captured", "refunded"),
        "description": None,
        "card_id": order.id("card"),
        "card": {
            "id": order.id("card"),
            "entity": "card",
            "name": "Gaurav Kumar",
            "last4": "1111",
            "network": "Visa",
            "type": "debit",
            "issuer": None,
            "international": False,
            "emi": False,
            "sub_type": "consumer",
        },
        "bank": None,
        "wallet": None,
        "vpa": None,
        "email": "gaurav.kumar@example.com",
        "contact": "+919000090000",
        "notes": order.notes,
        "fee": fee,
        "tax": None if fee is None else fee * 18 // 118,
        "error_code": "BAD_REQUEST_ERROR" if failed else None,
        "error_description": (
            "Payment failed because the card issuer declined it." if failed else None
        ),
        "error_source": "bank" if failed else None,
        "error_step": "payment_authorization" if failed else None,
        "error_reason": "payment_failed" if failed else None,
        "acquirer_data": {} if failed else {"auth_code": "828553"},
        "created_at": order.created_at,
    }
    payment.update(fields)
    return payment


def _refund(order: _Order) -> dict[str, Any]:
    status = _REFUND_STATUS[order.action]
    return {
        "id": order.id("rfnd"),
        "entity": "refund",
        "amount": order.refund_amount,
        "currency": order.currency,
        "payment_id": order.id("pay"),
        "notes": order.notes,
        "receipt": None,
        "acquirer_data": {"arn": "10000000000000"} if status == "processed" else {},
        "created_at": order.created_at,
        "batch_id": None,
        "status": status,
        "speed_processed": "normal",
        "speed_requested": "normal",
    }


def _refunded_payment(order: _Order) -> dict[str, Any]:
    """The payment as it stands after the refund event."""
    if order.action != "processed":
        return _payment(order, "captured")
    full = order.refund_amount >= order.amount
    return _payment(
        order,
        "refunded" if full else "captured",
        amount_refunded=order.refund_amount,
        refund_status="full" if full else "partial",
    )


def _subscription(order: _Order) -> dict[str, Any]:
    status = _SUBSCRIPTION_STATUS[order.action]
    started = status != "authenticated"
    ended = status in ("cancelled", "completed")
    paid_count = _TOTAL_COUNT if status == "completed" else int(started)
    return {
        "id": order.id("sub"),
        "entity": "subscription",
        "plan_id": order.id("plan"),
        "customer_id": derived_id("cust", order.user_id or order.seed, length=14),
        "status": status,
        "current_start": order.created_at if started else None,
        "current_end": order.created_at + _MONTH if started else None,
        "ended_at": order.created_at if ended else None,
        "quantity": 1,
        "notes": order.notes,
        "charge_at": None if ended else order.created_at + _MONTH,
        "start_at": order.created_at,
        "end_at": order.created_at + _TOTAL_COUNT * _MONTH,
        "auth_attempts": 0,
        "total_count": _TOTAL_COUNT,
        "paid_count": paid_count,
        "customer_notify": True,
        "created_at": order.created_at,
        "expire_by": None,
        "short_url": None,
        "has_scheduled_changes": False,
        "change_scheduled_at": None,
        "source": "api",
        "payment_method": "card",
        "offer_id": None,
        "remaining_count": _TOTAL_COUNT - paid_count,
    }
