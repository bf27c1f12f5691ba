"""The test payload builders: real shapes, consistent fields, and they verify."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from ingress.verify import VerifiedEvent
from ingress.verify import razorpay as razorpay_verifier
from ingress.verify import stripe as stripe_verifier
from tests.payloads import DEFAULT_AMOUNT, DEFAULT_ORDER_ID, DEFAULT_USER_ID
from tests.payloads.razorpay import (
    RAZORPAY_EVENT_TYPES,
    razorpay_body,
    razorpay_event,
    signed_razorpay_request,
)
from tests.payloads.stripe import (
    STRIPE_EVENT_TYPES,
    signed_stripe_request,
    stripe_body,
    stripe_event,
    stripe_object,
)

SECRET = "whsec_payload_tests"
NOW = 1_700_000_000

SAMPLES_FILE = Path(__file__).parent / "payloads" / "stripe_objects.json"
# Event type without its last part -> the object in ``data.object``.
_STRIPE_OBJECT_FOR = {
    "payment_intent": "payment_intent",
    "charge": "charge",
    "refund": "refund",
    "checkout.session": "checkout.session",
    "invoice": "invoice",
    "customer.subscription": "subscription",
}


def _object(event: dict[str, Any]) -> dict[str, Any]:
    data_object: dict[str, Any] = event["data"]["object"]
    return data_object


# -- the copied samples -------------------------------------------------------------


def test_stripe_samples_are_one_of_each_object() -> None:
    samples = json.loads(SAMPLES_FILE.read_text(encoding="utf-8"))
    assert set(samples) == set(_STRIPE_OBJECT_FOR.values()) | {"customer", "event"}
    for name, sample in samples.items():
        assert sample["object"] == name


def test_stripe_object_returns_independent_copies() -> None:
    first = stripe_object("payment_intent")
    first["metadata"]["orderId"] = "mutated"
    assert stripe_object("payment_intent")["metadata"] == {}


# -- Stripe events ------------------------------------------------------------------


@pytest.mark.parametrize("event_type", STRIPE_EVENT_TYPES)
def test_every_stripe_event_type_builds_and_verifies(event_type: str) -> None:
    event = stripe_event(event_type)
    body, headers = signed_stripe_request(event, SECRET, NOW)
    assert headers["Content-Type"].startswith("application/json")
    verified = stripe_verifier.verify(body, headers, [SECRET], NOW)
    assert verified == VerifiedEvent(event["id"], event_type, event["created"])

    assert list(event)[:2] == ["id", "object"]
    assert event["object"] == "event"
    assert event["livemode"] is False
    assert {"api_version", "pending_webhooks", "request"} <= set(event)
    data_object = _object(event)
    assert data_object["object"] == _STRIPE_OBJECT_FOR[event_type.rsplit(".", 1)[0]]
    assert data_object["metadata"] == {"orderId": DEFAULT_ORDER_ID, "userId": DEFAULT_USER_ID}
    assert data_object["livemode"] is False


def test_stripe_table_covers_design_section_5() -> None:
    assert len(STRIPE_EVENT_TYPES) == len(set(STRIPE_EVENT_TYPES)) == 22


def test_stripe_event_ids_are_unique_by_default_and_settable() -> None:
    assert stripe_event("charge.refunded")["id"] != stripe_event("charge.refunded")["id"]
    assert stripe_event("charge.refunded", event_id="evt_fixed")["id"] == "evt_fixed"


@pytest.mark.parametrize(
    ("order_id", "user_id", "metadata"),
    [
        (None, None, {}),
        ("ord_7", None, {"orderId": "ord_7"}),
        (None, "usr_7", {"userId": "usr_7"}),
        ("ord_7", "usr_7", {"orderId": "ord_7", "userId": "usr_7"}),
    ],
)
@pytest.mark.parametrize("event_type", STRIPE_EVENT_TYPES)
def test_stripe_metadata_present_and_absent(
    event_type: str, order_id: str | None, user_id: str | None, metadata: dict[str, str]
) -> None:
    event = stripe_event(event_type, order_id=order_id, user_id=user_id)
    assert _object(event)["metadata"] == metadata
    body, headers = signed_stripe_request(event, SECRET, NOW)
    assert stripe_verifier.verify(body, headers, [SECRET], NOW).event_type == event_type


def test_stripe_objects_of_one_order_are_linked() -> None:
    succeeded = _object(stripe_event("payment_intent.succeeded", order_id="ord_9"))
    refunded = _object(stripe_event("charge.refunded", order_id="ord_9"))
    refund = _object(stripe_event("refund.created", order_id="ord_9"))
    session = _object(stripe_event("checkout.session.completed", order_id="ord_9"))
    assert refunded["payment_intent"] == refund["payment_intent"] == succeeded["id"]
    assert session["payment_intent"] == succeeded["id"]
    assert succeeded["latest_charge"] == refunded["id"] == refund["charge"]
    assert succeeded["client_secret"].startswith(f"{succeeded['id']}_secret_")
    other = _object(stripe_event("payment_intent.succeeded", order_id="ord_10"))
    assert other["id"] != succeeded["id"]


@pytest.mark.parametrize(
    ("event_type", "status", "received"),
    [
        ("payment_intent.succeeded", "succeeded", 2500),
        ("payment_intent.payment_failed", "requires_payment_method", 0),
        ("payment_intent.canceled", "canceled", 0),
        ("payment_intent.processing", "processing", 0),
        ("payment_intent.requires_action", "requires_action", 0),
    ],
)
def test_stripe_payment_intent_status_and_amounts(
    event_type: str, status: str, received: int
) -> None:
    intent = _object(stripe_event(event_type, amount=2500, currency="eur"))
    assert (intent["status"], intent["amount"], intent["amount_received"]) == (
        status,
        2500,
        received,
    )
    assert intent["currency"] == "eur"
    assert (intent["last_payment_error"] is not None) == (event_type.endswith("payment_failed"))
    assert (intent["canceled_at"] is not None) == (status == "canceled")
    assert (intent["next_action"] is not None) == (status == "requires_action")


@pytest.mark.parametrize(("refund_amount", "fully"), [(None, True), (400, False)])
def test_stripe_charge_refunded_full_and_partial(refund_amount: int | None, fully: bool) -> None:
    charge = _object(stripe_event("charge.refunded", amount=1000, refund_amount=refund_amount))
    expected_refunded = 1000 if refund_amount is None else refund_amount
    assert charge["amount"] == charge["amount_captured"] == 1000
    assert charge["amount_refunded"] == expected_refunded
    assert charge["refunded"] is fully
    assert [r["amount"] for r in charge["refunds"]["data"]] == [expected_refunded]


@pytest.mark.parametrize(
    ("event_type", "status"),
    [("refund.created", "succeeded"), ("refund.updated", "succeeded"), ("refund.failed", "failed")],
)
def test_stripe_refund_status(event_type: str, status: str) -> None:
    refund = _object(stripe_event(event_type, amount=1000, refund_amount=300))
    assert (refund["status"], refund["amount"]) == (status, 300)
    assert ("failure_reason" in refund) == (status == "failed")


@pytest.mark.parametrize(
    ("event_type", "status", "payment_status"),
    [
        ("checkout.session.completed", "complete", "paid"),
        ("checkout.session.async_payment_succeeded", "complete", "paid"),
        ("checkout.session.async_payment_failed", "complete", "unpaid"),
        ("checkout.session.expired", "expired", "unpaid"),
    ],
)
def test_stripe_checkout_session_status(event_type: str, status: str, payment_status: str) -> None:
    session = _object(stripe_event(event_type, amount=1500))
    assert (session["status"], session["payment_status"]) == (status, payment_status)
    assert session["amount_total"] == 1500
    assert session["client_reference_id"] == DEFAULT_ORDER_ID


@pytest.mark.parametrize(
    ("event_type", "status", "paid"),
    [
        ("invoice.paid", "paid", 1500),
        ("invoice.payment_succeeded", "paid", 1500),
        ("invoice.payment_failed", "open", 0),
        ("invoice.finalized", "open", 0),
    ],
)
def test_stripe_invoice_status_and_amounts(event_type: str, status: str, paid: int) -> None:
    invoice = _object(stripe_event(event_type, amount=1500))
    assert (invoice["status"], invoice["amount_due"], invoice["amount_paid"]) == (
        status,
        1500,
        paid,
    )
    assert invoice["amount_remaining"] == 1500 - paid
    assert invoice["lines"]["data"][0]["amount"] == 1500


@pytest.mark.parametrize(
    ("event_type", "status"),
    [
        ("customer.subscription.created", "active"),
        ("customer.subscription.updated", "active"),
        ("customer.subscription.deleted", "canceled"),
        ("customer.subscription.paused", "paused"),
        ("customer.subscription.resumed", "active"),
    ],
)
def test_stripe_subscription_status(event_type: str, status: str) -> None:
    subscription = _object(stripe_event(event_type, amount=2000))
    assert subscription["status"] == status
    assert (subscription["ended_at"] is not None) == (status == "canceled")
    assert subscription["items"]["data"][0]["price"]["unit_amount"] == 2000


def test_stripe_overrides_and_previous_attributes() -> None:
    event = stripe_event(
        "customer.subscription.updated",
        object_id="sub_given",
        previous_attributes={"status": "trialing"},
        cancel_at_period_end=True,
    )
    assert _object(event)["id"] == "sub_given"
    assert _object(event)["cancel_at_period_end"] is True
    assert event["data"]["previous_attributes"] == {"status": "trialing"}


def test_stripe_other_types_of_sampled_objects_build() -> None:
    assert _object(stripe_event("customer.created"))["object"] == "customer"
    assert _object(stripe_event("charge.succeeded"))["refunded"] is False


def test_stripe_type_without_a_sample_object_is_refused() -> None:
    with pytest.raises(ValueError, match="no sample Stripe object"):
        stripe_event("charge.dispute.created")


def test_stripe_body_is_compact_stable_json() -> None:
    event = stripe_event("payment_intent.succeeded")
    body = stripe_body(event)
    assert body == stripe_body(copy.deepcopy(event))
    assert json.loads(body) == event
    assert body.startswith(b'{"id":"evt_')
    assert b"\n" not in body


def test_builders_return_independent_events() -> None:
    first = stripe_event("payment_intent.succeeded")
    _object(first)["metadata"]["orderId"] = "changed"
    assert _object(stripe_event("payment_intent.succeeded"))["metadata"]["orderId"] == (
        DEFAULT_ORDER_ID
    )


# -- Razorpay events ----------------------------------------------------------------


@pytest.mark.parametrize("event_type", RAZORPAY_EVENT_TYPES)
def test_every_razorpay_event_type_builds_and_verifies(event_type: str) -> None:
    event = razorpay_event(event_type, created_at=NOW)
    body, headers = signed_razorpay_request(event, SECRET, "EvtId0000000001")
    assert headers["Content-Type"] == "application/json"
    verified = razorpay_verifier.verify(body, headers, [SECRET], NOW)
    content_id = f"{event_type}@{NOW}:" + ",".join(
        f"{name}={event['payload'][name]['entity']['id']}" for name in sorted(event["payload"])
    )
    assert verified == VerifiedEvent("EvtId0000000001", event_type, NOW, content_id)

    assert event["entity"] == "event"
    assert event["account_id"].startswith("acc_")
    assert event["contains"] == list(event["payload"])
    main = event["payload"][event_type.split(".")[0]]["entity"]
    assert main["notes"] == {"orderId": DEFAULT_ORDER_ID, "userId": DEFAULT_USER_ID}


def test_razorpay_covers_the_design_table() -> None:
    required = {
        "payment.captured",
        "payment.failed",
        "refund.processed",
        "refund.failed",
        "subscription.activated",
        "subscription.charged",
        "subscription.cancelled",
    }
    assert required <= set(RAZORPAY_EVENT_TYPES)


def test_razorpay_event_id_is_fresh_by_default() -> None:
    event = razorpay_event("payment.captured")
    first = signed_razorpay_request(event, SECRET)[1]["X-Razorpay-Event-Id"]
    second = signed_razorpay_request(event, SECRET)[1]["X-Razorpay-Event-Id"]
    assert first != second


@pytest.mark.parametrize(
    ("order_id", "user_id", "notes"),
    [
        (None, None, []),  # Razorpay sends empty notes as a JSON array
        ("ord_7", None, {"orderId": "ord_7"}),
        ("ord_7", "usr_7", {"orderId": "ord_7", "userId": "usr_7"}),
    ],
)
@pytest.mark.parametrize("event_type", RAZORPAY_EVENT_TYPES)
def test_razorpay_notes_present_and_absent(
    event_type: str, order_id: str | None, user_id: str | None, notes: object
) -> None:
    event = razorpay_event(event_type, order_id=order_id, user_id=user_id)
    for entity in event["payload"].values():
        assert entity["entity"]["notes"] == notes
    body, headers = signed_razorpay_request(event, SECRET)
    assert razorpay_verifier.verify(body, headers, [SECRET], NOW).event_type == event_type


@pytest.mark.parametrize(
    ("event_type", "status", "captured"),
    [("payment.captured", "captured", True), ("payment.failed", "failed", False)],
)
def test_razorpay_payment_shape(event_type: str, status: str, captured: bool) -> None:
    payment = razorpay_event(event_type, amount=50_000)["payload"]["payment"]["entity"]
    assert payment["id"].startswith("pay_")
    assert payment["order_id"].startswith("order_")  # Razorpay's order, not ours
    assert (payment["status"], payment["captured"], payment["amount"]) == (
        status,
        captured,
        50_000,
    )
    assert payment["currency"] == "INR"
    assert (payment["error_code"] is not None) == (status == "failed")


@pytest.mark.parametrize(
    ("refund_amount", "payment_status", "refund_status"),
    [(None, "refunded", "full"), (20_000, "captured", "partial")],
)
def test_razorpay_refund_processed_full_and_partial(
    refund_amount: int | None, payment_status: str, refund_status: str
) -> None:
    event = razorpay_event("refund.processed", amount=50_000, refund_amount=refund_amount)
    refund = event["payload"]["refund"]["entity"]
    payment = event["payload"]["payment"]["entity"]
    assert event["contains"] == ["refund", "payment"]
    assert refund["status"] == "processed"
    assert refund["payment_id"] == payment["id"]
    assert refund["amount"] == payment["amount_refunded"] == (refund_amount or 50_000)
    assert (payment["status"], payment["refund_status"]) == (payment_status, refund_status)


def test_razorpay_refund_failed_leaves_payment_unrefunded() -> None:
    event = razorpay_event("refund.failed")
    assert event["payload"]["refund"]["entity"]["status"] == "failed"
    assert event["payload"]["payment"]["entity"]["amount_refunded"] == 0


@pytest.mark.parametrize(
    ("event_type", "status", "contains"),
    [
        ("subscription.activated", "active", ["subscription"]),
        ("subscription.charged", "active", ["subscription", "payment"]),
        ("subscription.cancelled", "cancelled", ["subscription"]),
        ("subscription.halted", "halted", ["subscription"]),
    ],
)
def test_razorpay_subscription_shape(event_type: str, status: str, contains: list[str]) -> None:
    event = razorpay_event(event_type)
    subscription = event["payload"]["subscription"]["entity"]
    assert event["contains"] == contains
    assert subscription["status"] == status
    assert subscription["id"].startswith("sub_")
    assert (subscription["ended_at"] is not None) == (status == "cancelled")


def test_razorpay_overrides_apply_to_the_main_entity() -> None:
    event = razorpay_event("refund.processed", speed_processed="instant")
    assert event["payload"]["refund"]["entity"]["speed_processed"] == "instant"


def test_razorpay_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="no Razorpay payload shape"):
        razorpay_event("order.paid")


def test_razorpay_body_is_compact_stable_json() -> None:
    event = razorpay_event("payment.captured")
    body = razorpay_body(event)
    assert body == razorpay_body(copy.deepcopy(event))
    assert json.loads(body) == event
    assert body.startswith(b'{"entity":"event",')


def test_default_amount_is_shared_by_both_providers() -> None:
    payment = razorpay_event("payment.captured")["payload"]["payment"]["entity"]
    intent = _object(stripe_event("payment_intent.succeeded"))
    assert payment["amount"] == intent["amount"] == DEFAULT_AMOUNT
