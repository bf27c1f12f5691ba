"""Status vocabularies of the Postgres projections and the rules that keep them monotonic.

Out-of-order delivery is normal (Stripe does not order events), so a projection never
takes a status just because its event arrived last (DESIGN §5). Each vocabulary has a
*rank*; an event moves a row only to a status of strictly higher rank, so applying the
same events in any order, any number of times, ends in the same row. The vocabularies and
their rank tables live in ``schemas/statuses.py`` (re-exported here), where the SQL guards
of ``connectors/postgres/`` are generated from them too, so Python and Postgres cannot
disagree.

- **Payments** — ``PENDING < FAILED < SUCCEEDED < PARTIALLY_REFUNDED < REFUNDED``. A
  success after a failure wins (the customer retried), a late ``processing`` or a late
  failure never undoes a success, and refunds only ever add up. The status comes from
  the topic (``billing.payment.succeeded`` ...), not the record's ``status`` string: the
  mapper already derived that string from the event type.
- **Refunds** — ``UNKNOWN < PENDING < SUCCEEDED < CANCELED < FAILED``. ``failed`` and
  ``canceled`` are terminal, and Stripe documents that a refund can still fail after it
  was reported ``succeeded``, so the terminal states outrank success.
- **Invoices** — ``UNKNOWN < DRAFT < OPEN < UNCOLLECTIBLE < VOID < PAID`` (Stripe's
  lifecycle: an uncollectible invoice can still be paid or voided).
- **Checkout sessions** — ``OPEN < COMPLETED < EXPIRED < FAILED``. An async payment can
  fail after the session completed, never the other way round. Like payments, the
  status comes from the topic.
- **Subscriptions** are *not* ranked: they legitimately move back and forth (active →
  past_due → active, paused → active). The newest event wins, compared by
  :func:`subscription_order_key` — event time first, then a tie-break that makes equal
  timestamps (Stripe's are in whole seconds) converge on the same row whatever the
  arrival order. An event whose status the mapper could not read (``unknown``) never
  replaces a known status.
- **Webhook events** — ``RECEIVED < FAILED < IGNORED < PROCESSED``: a replay that
  succeeds after a failure moves the row on; a late failure of a redelivery does not
  undo a success.

Every order is *strict*, even between states that exclude each other in reality (a
refund is failed or canceled, never both; an invoice paid or void): with no ties, the
final row cannot depend on which of two contradicting events came first.

``UNKNOWN`` is what the mapper writes when a provider object had no readable status; it
ranks lowest, so the first real status replaces it, and it keeps the row's other data.

Everything here is pure: no I/O, microseconds per call.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final, TypeVar

from base.errors import InvalidEvent
from schemas.statuses import (
    CHECKOUT_RANK,
    INVOICE_RANK,
    PAYMENT_RANK,
    REFUND_RANK,
    SUBSCRIPTION_TIE_RANK,
    WEBHOOK_RANK,
    CheckoutStatus,
    InvoiceStatus,
    PaymentStatus,
    RankedStatus,
    RefundStatus,
    SubscriptionStatus,
    WebhookStatus,
)

__all__ = [
    "CHECKOUT_RANK",
    "INVOICE_RANK",
    "PAYMENT_RANK",
    "REFUND_RANK",
    "SUBSCRIPTION_TIE_RANK",
    "WEBHOOK_RANK",
    "CheckoutStatus",
    "InvoiceStatus",
    "PaymentStatus",
    "RankedStatus",
    "RefundStatus",
    "SubscriptionStatus",
    "UnknownStatus",
    "WebhookStatus",
    "checkout_status_for_event",
    "invoice_status",
    "payment_status",
    "payment_status_for_event",
    "payment_status_hint_from_refund",
    "rank",
    "refund_status",
    "refunded_payment_status",
    "strongest",
    "subscription_order_key",
    "subscription_status",
    "supersedes",
    "webhook_status",
]


class UnknownStatus(InvalidEvent):
    """A status string (or topic) that no rule here knows; the record is not projectable."""

    def __init__(self, kind: str, value: str) -> None:
        super().__init__(f"unknown {kind} status {value!r}", field="status")
        self.kind = kind
        self.value = value


_S = TypeVar("_S", PaymentStatus, RefundStatus, InvoiceStatus, CheckoutStatus, WebhookStatus)


def rank(status: RankedStatus) -> int:
    """The rank of ``status`` within its vocabulary; higher never gives way to lower."""
    match status:
        case PaymentStatus():
            return PAYMENT_RANK[status]
        case RefundStatus():
            return REFUND_RANK[status]
        case InvoiceStatus():
            return INVOICE_RANK[status]
        case CheckoutStatus():
            return CHECKOUT_RANK[status]
        case WebhookStatus():
            return WEBHOOK_RANK[status]


def supersedes(new: RankedStatus, old: RankedStatus) -> bool:
    """Whether a row in ``old`` moves to ``new``: strictly higher rank only.

    Every vocabulary is strictly ordered, so only the same status ranks equal.
    Raises ``TypeError`` when the two belong to different vocabularies.
    """
    if type(new) is not type(old):
        raise TypeError(f"cannot compare {type(new).__name__} with {type(old).__name__}")
    return rank(new) > rank(old)


def strongest(first: _S, *others: _S) -> _S:
    """The status a row ends in after all of these were applied, in any order."""
    best = first
    for status in others:
        if supersedes(status, best):
            best = status
    return best


# -- BillingEvent status strings (lower-case, as streams/domain/normalise writes them) --

_PAYMENT_TOPIC_STATUS: Final[Mapping[str, PaymentStatus]] = MappingProxyType(
    {
        "billing.payment.succeeded": PaymentStatus.SUCCEEDED,
        "billing.payment.failed": PaymentStatus.FAILED,
        "billing.payment.pending": PaymentStatus.PENDING,
    }
)
_PAYMENT_STATUS: Final[Mapping[str, PaymentStatus]] = MappingProxyType(
    {
        "succeeded": PaymentStatus.SUCCEEDED,
        "captured": PaymentStatus.SUCCEEDED,
        "failed": PaymentStatus.FAILED,
        "canceled": PaymentStatus.FAILED,
        "cancelled": PaymentStatus.FAILED,
        "pending": PaymentStatus.PENDING,
        "processing": PaymentStatus.PENDING,
        "requires_action": PaymentStatus.PENDING,
        "authorized": PaymentStatus.PENDING,
        "partially_refunded": PaymentStatus.PARTIALLY_REFUNDED,
        "refunded": PaymentStatus.REFUNDED,
    }
)
_REFUND_STATUS: Final[Mapping[str, RefundStatus]] = MappingProxyType(
    {
        "succeeded": RefundStatus.SUCCEEDED,
        "processed": RefundStatus.SUCCEEDED,
        "pending": RefundStatus.PENDING,
        "requires_action": RefundStatus.PENDING,
        "created": RefundStatus.PENDING,
        "failed": RefundStatus.FAILED,
        "refund_failed": RefundStatus.FAILED,
        "canceled": RefundStatus.CANCELED,
        "cancelled": RefundStatus.CANCELED,
        "unknown": RefundStatus.UNKNOWN,
    }
)
# charge.refunded reports the *payment's* refund state; the refund itself went through.
_PAYMENT_HINT: Final[Mapping[str, PaymentStatus]] = MappingProxyType(
    {
        "refunded": PaymentStatus.REFUNDED,
        "partially_refunded": PaymentStatus.PARTIALLY_REFUNDED,
    }
)
_INVOICE_STATUS: Final[Mapping[str, InvoiceStatus]] = MappingProxyType(
    {
        "draft": InvoiceStatus.DRAFT,
        "open": InvoiceStatus.OPEN,
        "finalized": InvoiceStatus.OPEN,
        "uncollectible": InvoiceStatus.UNCOLLECTIBLE,
        "paid": InvoiceStatus.PAID,
        "void": InvoiceStatus.VOID,
        "voided": InvoiceStatus.VOID,
        "unknown": InvoiceStatus.UNKNOWN,
    }
)
_CHECKOUT_TOPIC_STATUS: Final[Mapping[str, CheckoutStatus]] = MappingProxyType(
    {
        "billing.checkout.completed": CheckoutStatus.COMPLETED,
        "billing.checkout.failed": CheckoutStatus.FAILED,
        "billing.checkout.expired": CheckoutStatus.EXPIRED,
    }
)
_SUBSCRIPTION_ALIASES: Final[Mapping[str, SubscriptionStatus]] = MappingProxyType(
    {
        "cancelled": SubscriptionStatus.CANCELED,
        "deleted": SubscriptionStatus.CANCELED,
        "resumed": SubscriptionStatus.ACTIVE,
        "activated": SubscriptionStatus.ACTIVE,
    }
)


def payment_status(raw: str) -> PaymentStatus:
    """Map a lower-case payment status string to the projection's status.

    ``canceled`` counts as failed (DESIGN §5 maps a cancelled intent to
    ``billing.payment.failed``); ``processing``/``requires_action`` are pending.
    Raises ``UnknownStatus`` for anything else.
    """
    try:
        return _PAYMENT_STATUS[raw]
    except KeyError:
        raise UnknownStatus("payment", raw) from None


def payment_status_for_event(event_type: str) -> PaymentStatus:
    """The payment status a ``billing.payment.{succeeded,failed,pending}`` event sets.

    The topic decides, not the record's status string (a failed Stripe intent is back in
    ``requires_payment_method``; the mapper already read the event type for us).
    Raises ``UnknownStatus`` for any other topic, including ``billing.payment.refunded``
    (see :func:`refund_status` and :func:`refunded_payment_status`).
    """
    try:
        return _PAYMENT_TOPIC_STATUS[event_type]
    except KeyError:
        raise UnknownStatus("payment event", event_type) from None


def refund_status(raw: str, refund_status_attribute: str | None = None) -> RefundStatus:
    """The refund's own status for a ``billing.payment.refunded`` record.

    ``raw`` is the record's ``status``. Stripe ``charge.refunded`` records say
    ``refunded``/``partially_refunded`` — the payment's state — and carry the refund's own
    status in ``attributes["refund_status"]`` (pass it as ``refund_status_attribute``);
    without one the refund is taken as succeeded, since the charge reports it refunded.
    Raises ``UnknownStatus`` for an unknown string.
    """
    if raw in _PAYMENT_HINT:
        if refund_status_attribute and refund_status_attribute.lower() in _REFUND_STATUS:
            return _REFUND_STATUS[refund_status_attribute.lower()]
        return RefundStatus.SUCCEEDED
    try:
        return _REFUND_STATUS[raw]
    except KeyError:
        raise UnknownStatus("refund", raw) from None


def payment_status_hint_from_refund(raw: str) -> PaymentStatus | None:
    """What a refund record's status says about its payment, if anything.

    ``refunded`` → ``REFUNDED`` and ``partially_refunded`` → ``PARTIALLY_REFUNDED``
    (Stripe ``charge.refunded``); a refund object's own status says nothing → ``None``.
    """
    return _PAYMENT_HINT.get(raw)


def refunded_payment_status(amount_minor: int | None, refunded_minor: int) -> PaymentStatus | None:
    """A payment's status as its refunds alone determine it.

    ``REFUNDED`` once the refunded total reaches a known amount, ``PARTIALLY_REFUNDED``
    while it is below it or the amount is not known yet, ``None`` with nothing refunded.
    The projection combines this with the event statuses via :func:`strongest`.
    """
    if refunded_minor <= 0:
        return None
    if amount_minor is not None and refunded_minor >= amount_minor:
        return PaymentStatus.REFUNDED
    return PaymentStatus.PARTIALLY_REFUNDED


def invoice_status(raw: str) -> InvoiceStatus:
    """Map an invoice status string (Stripe's vocabulary); raises ``UnknownStatus``."""
    try:
        return _INVOICE_STATUS[raw]
    except KeyError:
        raise UnknownStatus("invoice", raw) from None


def checkout_status_for_event(event_type: str) -> CheckoutStatus:
    """The status a ``billing.checkout.*`` event sets; the topic decides.

    (The record's status string is ``complete`` for both completed and failed async
    payments, so it cannot.) Raises ``UnknownStatus`` for any other topic.
    """
    try:
        return _CHECKOUT_TOPIC_STATUS[event_type]
    except KeyError:
        raise UnknownStatus("checkout event", event_type) from None


def subscription_status(raw: str) -> SubscriptionStatus:
    """Map a Stripe or Razorpay subscription status; raises ``UnknownStatus``.

    ``cancelled`` (Razorpay) and ``canceled`` are one status; ``resumed`` is ``ACTIVE``.
    """
    alias = _SUBSCRIPTION_ALIASES.get(raw)
    if alias is not None:
        return alias
    try:
        return SubscriptionStatus(raw.upper())
    except ValueError:
        raise UnknownStatus("subscription", raw) from None


def subscription_order_key(
    occurred_at_ms: int, status: SubscriptionStatus, event_id: str
) -> tuple[bool, int, int, str]:
    """Sort key of subscription events: the greatest key is the row's state.

    A known status beats ``UNKNOWN``; then the later event wins; on equal times a
    terminal status beats a live one; last, the event id, so any two events are ordered
    and every arrival order converges on the same row.
    """
    tie = SUBSCRIPTION_TIE_RANK[status]
    return (tie >= 0, occurred_at_ms, tie, event_id)


def webhook_status(raw: str) -> WebhookStatus:
    """Parse a webhook status name (``RECEIVED``, ...; any case); raises ``UnknownStatus``."""
    try:
        return WebhookStatus(raw.upper())
    except ValueError:
        raise UnknownStatus("webhook", raw) from None
