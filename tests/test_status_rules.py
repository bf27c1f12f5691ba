"""Unit tests of the projection status rules (streams/domain/status.py): pure, no I/O."""

from __future__ import annotations

import itertools

import pytest

from base.errors import InvalidEvent
from streams.domain.status import (
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
    UnknownStatus,
    WebhookStatus,
    checkout_status_for_event,
    invoice_status,
    payment_status,
    payment_status_for_event,
    payment_status_hint_from_refund,
    rank,
    refund_status,
    refunded_payment_status,
    strongest,
    subscription_order_key,
    subscription_status,
    supersedes,
    webhook_status,
)

P = PaymentStatus


def test_payment_order_is_pending_failed_succeeded_partially_refunded_refunded() -> None:
    ordered = sorted(PaymentStatus, key=rank)
    assert ordered == [P.PENDING, P.FAILED, P.SUCCEEDED, P.PARTIALLY_REFUNDED, P.REFUNDED]
    assert len(set(PAYMENT_RANK.values())) == len(PaymentStatus)  # strictly ordered


@pytest.mark.parametrize(
    ("old", "new", "moves"),
    [
        (P.FAILED, P.SUCCEEDED, True),  # the customer retried: a later success wins
        (P.SUCCEEDED, P.PENDING, False),  # a late payment_intent.processing
        (P.SUCCEEDED, P.FAILED, False),  # a late failure never undoes a success
        (P.PENDING, P.FAILED, True),
        (P.SUCCEEDED, P.PARTIALLY_REFUNDED, True),
        (P.PARTIALLY_REFUNDED, P.REFUNDED, True),
        (P.REFUNDED, P.PARTIALLY_REFUNDED, False),
        (P.REFUNDED, P.SUCCEEDED, False),
        (P.SUCCEEDED, P.SUCCEEDED, False),  # equal ranks keep the row as it is
    ],
)
def test_payment_supersedes(old: PaymentStatus, new: PaymentStatus, moves: bool) -> None:
    assert supersedes(new, old) is moves


@pytest.mark.parametrize(
    "vocabulary",
    [PaymentStatus, RefundStatus, InvoiceStatus, CheckoutStatus, WebhookStatus],
)
def test_any_arrival_order_ends_in_the_same_status(vocabulary: type[RankedStatus]) -> None:
    statuses: list[RankedStatus] = list(vocabulary)
    assert len({rank(s) for s in statuses}) == len(statuses)  # strict: no ties to flip
    for length in range(1, min(len(statuses), 4) + 1):
        for events in itertools.permutations(statuses, length):
            results = {_apply_in_order(order) for order in itertools.permutations(events)}
            assert len(results) == 1, events


def _apply_in_order(events: tuple[RankedStatus, ...]) -> RankedStatus:
    row = events[0]
    for event in events[1:]:
        if supersedes(event, row):
            row = event
    return row


def test_strongest() -> None:
    assert strongest(P.SUCCEEDED, P.PENDING, P.FAILED) is P.SUCCEEDED
    assert strongest(RefundStatus.FAILED, RefundStatus.SUCCEEDED) is RefundStatus.FAILED


def test_supersedes_refuses_to_compare_vocabularies() -> None:
    with pytest.raises(TypeError):
        supersedes(P.SUCCEEDED, RefundStatus.SUCCEEDED)


def test_every_status_has_a_rank() -> None:
    assert set(PAYMENT_RANK) == set(PaymentStatus)
    assert set(REFUND_RANK) == set(RefundStatus)
    assert set(INVOICE_RANK) == set(InvoiceStatus)
    assert set(CHECKOUT_RANK) == set(CheckoutStatus)
    assert set(WEBHOOK_RANK) == set(WebhookStatus)
    assert set(SUBSCRIPTION_TIE_RANK) == set(SubscriptionStatus)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("succeeded", P.SUCCEEDED),
        ("failed", P.FAILED),
        ("canceled", P.FAILED),
        ("pending", P.PENDING),
        ("requires_action", P.PENDING),
        ("processing", P.PENDING),
        ("refunded", P.REFUNDED),
        ("partially_refunded", P.PARTIALLY_REFUNDED),
    ],
)
def test_payment_status_strings(raw: str, expected: PaymentStatus) -> None:
    assert payment_status(raw) is expected


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("billing.payment.succeeded", P.SUCCEEDED),
        ("billing.payment.failed", P.FAILED),
        ("billing.payment.pending", P.PENDING),
    ],
)
def test_payment_status_comes_from_the_topic(topic: str, expected: PaymentStatus) -> None:
    assert payment_status_for_event(topic) is expected


@pytest.mark.parametrize(
    ("raw", "attribute", "expected"),
    [
        ("succeeded", None, RefundStatus.SUCCEEDED),
        ("pending", None, RefundStatus.PENDING),
        ("requires_action", None, RefundStatus.PENDING),
        ("failed", None, RefundStatus.FAILED),
        ("canceled", None, RefundStatus.CANCELED),
        ("unknown", None, RefundStatus.UNKNOWN),
        # Stripe charge.refunded: the status is the payment's; the refund's is an attribute.
        ("refunded", None, RefundStatus.SUCCEEDED),
        ("partially_refunded", "pending", RefundStatus.PENDING),
        ("refunded", "succeeded", RefundStatus.SUCCEEDED),
        ("refunded", "nonsense", RefundStatus.SUCCEEDED),
    ],
)
def test_refund_status(raw: str, attribute: str | None, expected: RefundStatus) -> None:
    assert refund_status(raw, attribute) is expected


def test_refund_terminal_states_outrank_success() -> None:
    # Stripe: a refund can fail after it was reported succeeded; failed/canceled are final.
    assert supersedes(RefundStatus.FAILED, RefundStatus.SUCCEEDED)
    assert not supersedes(RefundStatus.SUCCEEDED, RefundStatus.FAILED)
    assert not supersedes(RefundStatus.PENDING, RefundStatus.SUCCEEDED)
    assert supersedes(RefundStatus.PENDING, RefundStatus.UNKNOWN)


def test_payment_hint_from_refund_records() -> None:
    assert payment_status_hint_from_refund("refunded") is P.REFUNDED
    assert payment_status_hint_from_refund("partially_refunded") is P.PARTIALLY_REFUNDED
    assert payment_status_hint_from_refund("succeeded") is None


@pytest.mark.parametrize(
    ("amount", "refunded", "expected"),
    [
        (1000, 0, None),
        (1000, 300, P.PARTIALLY_REFUNDED),
        (1000, 1000, P.REFUNDED),
        (1000, 1200, P.REFUNDED),
        (None, 300, P.PARTIALLY_REFUNDED),  # amount not known yet: never claim "full"
        (None, 0, None),
    ],
)
def test_refunded_payment_status(
    amount: int | None, refunded: int, expected: PaymentStatus | None
) -> None:
    assert refunded_payment_status(amount, refunded) is expected


def test_invoice_lifecycle() -> None:
    assert invoice_status("open") is InvoiceStatus.OPEN
    assert invoice_status("paid") is InvoiceStatus.PAID
    assert supersedes(InvoiceStatus.PAID, InvoiceStatus.UNCOLLECTIBLE)  # still payable
    assert supersedes(InvoiceStatus.VOID, InvoiceStatus.UNCOLLECTIBLE)
    assert not supersedes(InvoiceStatus.OPEN, InvoiceStatus.PAID)  # a late finalized
    assert not supersedes(InvoiceStatus.VOID, InvoiceStatus.PAID)  # exclusive: strict order


def test_checkout_status_comes_from_the_topic() -> None:
    assert checkout_status_for_event("billing.checkout.completed") is CheckoutStatus.COMPLETED
    assert checkout_status_for_event("billing.checkout.failed") is CheckoutStatus.FAILED
    assert checkout_status_for_event("billing.checkout.expired") is CheckoutStatus.EXPIRED
    # An async payment fails after the session completed, never the other way round.
    assert supersedes(CheckoutStatus.FAILED, CheckoutStatus.COMPLETED)
    assert not supersedes(CheckoutStatus.COMPLETED, CheckoutStatus.FAILED)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("active", SubscriptionStatus.ACTIVE),
        ("past_due", SubscriptionStatus.PAST_DUE),
        ("canceled", SubscriptionStatus.CANCELED),
        ("cancelled", SubscriptionStatus.CANCELED),  # Razorpay's spelling
        ("resumed", SubscriptionStatus.ACTIVE),
        ("halted", SubscriptionStatus.HALTED),
        ("unknown", SubscriptionStatus.UNKNOWN),
    ],
)
def test_subscription_status(raw: str, expected: SubscriptionStatus) -> None:
    assert subscription_status(raw) is expected


def test_subscriptions_follow_event_time_not_rank() -> None:
    active, past_due = SubscriptionStatus.ACTIVE, SubscriptionStatus.PAST_DUE
    # active -> past_due -> active again: the newest event wins, back and forth.
    assert subscription_order_key(3_000, active, "evt_c") > subscription_order_key(
        2_000, past_due, "evt_b"
    )
    assert subscription_order_key(1_000, active, "evt_a") < subscription_order_key(
        2_000, past_due, "evt_b"
    )


def test_subscription_ties_converge() -> None:
    canceled = subscription_order_key(1_000, SubscriptionStatus.CANCELED, "evt_a")
    active = subscription_order_key(1_000, SubscriptionStatus.ACTIVE, "evt_z")
    assert canceled > active  # same second: the terminal status wins
    twin = subscription_order_key(1_000, SubscriptionStatus.ACTIVE, "evt_y")
    assert twin != active  # different events are always ordered


def test_an_unknown_subscription_status_never_replaces_a_known_one() -> None:
    unknown = subscription_order_key(9_000, SubscriptionStatus.UNKNOWN, "evt_late")
    known = subscription_order_key(1_000, SubscriptionStatus.ACTIVE, "evt_early")
    assert known > unknown


def test_webhook_status_moves_forward_only() -> None:
    assert sorted(WebhookStatus, key=rank) == [
        WebhookStatus.RECEIVED,
        WebhookStatus.FAILED,
        WebhookStatus.IGNORED,
        WebhookStatus.PROCESSED,
    ]
    assert webhook_status("processed") is WebhookStatus.PROCESSED


@pytest.mark.parametrize(
    "call",
    [
        lambda: payment_status("exploded"),
        lambda: payment_status_for_event("billing.payment.refunded"),
        lambda: refund_status("exploded"),
        lambda: invoice_status("exploded"),
        lambda: checkout_status_for_event("billing.payment.succeeded"),
        lambda: subscription_status("exploded"),
        lambda: webhook_status("exploded"),
    ],
)
def test_unknown_strings_raise_invalid_event_naming_the_field(call: object) -> None:
    assert callable(call)
    with pytest.raises(UnknownStatus) as caught:
        call()
    assert isinstance(caught.value, InvalidEvent)
    assert caught.value.field == "status"
