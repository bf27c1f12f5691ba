"""The status vocabularies of the Postgres projections and their rank tables.

The contract between the rules that decide a row's status (``streams.domain.status``,
``streams.domain.projection``) and the connector whose SQL enforces them atomically
(``connectors.postgres``): an event moves a row only to a status of strictly higher
rank, so a projection never regresses (DESIGN §5). Both read the tables here, so
Python and Postgres cannot disagree. ``streams.domain.status`` documents each order and
re-exports every name.

Data only: no rules, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final

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
    "WebhookStatus",
]


class PaymentStatus(StrEnum):
    PENDING = "PENDING"
    FAILED = "FAILED"
    SUCCEEDED = "SUCCEEDED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"


class RefundStatus(StrEnum):
    UNKNOWN = "UNKNOWN"
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


class InvoiceStatus(StrEnum):
    UNKNOWN = "UNKNOWN"
    DRAFT = "DRAFT"
    OPEN = "OPEN"
    UNCOLLECTIBLE = "UNCOLLECTIBLE"
    PAID = "PAID"
    VOID = "VOID"


class CheckoutStatus(StrEnum):
    OPEN = "OPEN"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    EXPIRED = "EXPIRED"


class SubscriptionStatus(StrEnum):
    """Stripe's and Razorpay's subscription statuses, in one upper-case vocabulary."""

    UNKNOWN = "UNKNOWN"
    # Stripe
    INCOMPLETE = "INCOMPLETE"
    INCOMPLETE_EXPIRED = "INCOMPLETE_EXPIRED"
    TRIALING = "TRIALING"
    ACTIVE = "ACTIVE"
    PAST_DUE = "PAST_DUE"
    UNPAID = "UNPAID"
    PAUSED = "PAUSED"
    CANCELED = "CANCELED"
    # Razorpay only
    CREATED = "CREATED"
    AUTHENTICATED = "AUTHENTICATED"
    PENDING = "PENDING"
    HALTED = "HALTED"
    COMPLETED = "COMPLETED"
    EXPIRED = "EXPIRED"


class WebhookStatus(StrEnum):
    RECEIVED = "RECEIVED"
    FAILED = "FAILED"
    IGNORED = "IGNORED"
    PROCESSED = "PROCESSED"


RankedStatus = PaymentStatus | RefundStatus | InvoiceStatus | CheckoutStatus | WebhookStatus
"""The vocabularies ordered by rank (subscriptions are ordered by time instead)."""


PAYMENT_RANK: Final[Mapping[PaymentStatus, int]] = MappingProxyType(
    {
        PaymentStatus.PENDING: 0,
        PaymentStatus.FAILED: 1,
        PaymentStatus.SUCCEEDED: 2,
        PaymentStatus.PARTIALLY_REFUNDED: 3,
        PaymentStatus.REFUNDED: 4,
    }
)
REFUND_RANK: Final[Mapping[RefundStatus, int]] = MappingProxyType(
    {
        RefundStatus.UNKNOWN: -1,
        RefundStatus.PENDING: 0,
        RefundStatus.SUCCEEDED: 1,
        RefundStatus.CANCELED: 2,
        RefundStatus.FAILED: 3,
    }
)
INVOICE_RANK: Final[Mapping[InvoiceStatus, int]] = MappingProxyType(
    {
        InvoiceStatus.UNKNOWN: -1,
        InvoiceStatus.DRAFT: 0,
        InvoiceStatus.OPEN: 1,
        InvoiceStatus.UNCOLLECTIBLE: 2,
        InvoiceStatus.VOID: 3,
        InvoiceStatus.PAID: 4,
    }
)
CHECKOUT_RANK: Final[Mapping[CheckoutStatus, int]] = MappingProxyType(
    {
        CheckoutStatus.OPEN: 0,
        CheckoutStatus.COMPLETED: 1,
        CheckoutStatus.EXPIRED: 2,
        CheckoutStatus.FAILED: 3,
    }
)
WEBHOOK_RANK: Final[Mapping[WebhookStatus, int]] = MappingProxyType(
    {
        WebhookStatus.RECEIVED: 0,
        WebhookStatus.FAILED: 1,
        WebhookStatus.IGNORED: 2,
        WebhookStatus.PROCESSED: 3,
    }
)
_TERMINAL_SUBSCRIPTION: Final = frozenset(
    {
        SubscriptionStatus.CANCELED,
        SubscriptionStatus.INCOMPLETE_EXPIRED,
        SubscriptionStatus.COMPLETED,
        SubscriptionStatus.EXPIRED,
    }
)
SUBSCRIPTION_TIE_RANK: Final[Mapping[SubscriptionStatus, int]] = MappingProxyType(
    {
        status: -1
        if status is SubscriptionStatus.UNKNOWN
        else (1 if status in _TERMINAL_SUBSCRIPTION else 0)
        for status in SubscriptionStatus
    }
)
"""Subscription tie-break for events with the same timestamp: a terminal status
(canceled, expired, completed) beats a live one; ``UNKNOWN`` (-1) never beats a known one."""
