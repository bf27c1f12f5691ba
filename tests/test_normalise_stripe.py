"""Stripe webhooks → billing.* records (streams.domain.normalise, DESIGN §5).

Unit tier: pure functions, no event loop. Every produced record is encoded with the real
codec, so field names and types cannot drift from the BillingEvent schema.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from ingress.records import ReceivedWebhook, raw_webhook_record
from ingress.verify import VerifiedEvent
from schemas.catalog import BILLING_EVENT_SUBJECT, BILLING_TOPICS, default_catalog
from schemas.codec import Codec, make_codec
from streams.domain import stripe_mapping
from streams.domain.ids import derived_event_id
from streams.domain.normalise import (
    BILLING_EVENT_VERSION,
    NORMALISE_SOURCE,
    DomainEvent,
    Normalised,
    normalise,
)
from tests.payloads import DEFAULT_AMOUNT, DEFAULT_CREATED, DEFAULT_ORDER_ID, DEFAULT_USER_ID
from tests.payloads import derived_id as payload_id
from tests.payloads.stripe import STRIPE_EVENT_TYPES, stripe_body, stripe_event

RECEIVED_AT_MS = 1_735_700_000_000
CORRELATION_ID = "corr-stripe-1"

PI_ID = payload_id("pi", DEFAULT_ORDER_ID)
CHARGE_ID = payload_id("ch", DEFAULT_ORDER_ID)
REFUND_ID = payload_id("re", DEFAULT_ORDER_ID)
SESSION_ID = f"cs_test_{payload_id('cs', DEFAULT_ORDER_ID)[3:]}"
INVOICE_ID = payload_id("in", DEFAULT_ORDER_ID)
SUBSCRIPTION_ID = payload_id("sub", DEFAULT_ORDER_ID)
CUSTOMER_ID = payload_id("cus", DEFAULT_USER_ID, length=14)

# Written out independently of stripe_mapping.EVENT_TOPICS: DESIGN §5 as a test oracle.
SUCCEEDED, FAILED = "billing.payment.succeeded", "billing.payment.failed"
PENDING = "billing.payment.pending"
REFUNDED = "billing.payment.refunded"
COMPLETED, CO_FAILED = "billing.checkout.completed", "billing.checkout.failed"
EXPIRED = "billing.checkout.expired"
INVOICE, SUBSCRIPTION = "billing.invoice.updated", "billing.subscription.updated"
AMOUNT = DEFAULT_AMOUNT
# type -> (topic, status, providerObjectId, paymentId, refundId, amountMinor)
EXPECTED: dict[str, tuple[str, str, str, str | None, str | None, int | None]] = {
    "payment_intent.succeeded": (SUCCEEDED, "succeeded", PI_ID, PI_ID, None, AMOUNT),
    "payment_intent.payment_failed": (FAILED, "failed", PI_ID, PI_ID, None, AMOUNT),
    "payment_intent.canceled": (FAILED, "canceled", PI_ID, PI_ID, None, AMOUNT),
    "payment_intent.processing": (PENDING, "pending", PI_ID, PI_ID, None, AMOUNT),
    "payment_intent.requires_action": (PENDING, "requires_action", PI_ID, PI_ID, None, AMOUNT),
    "charge.refunded": (REFUNDED, "refunded", REFUND_ID, PI_ID, REFUND_ID, AMOUNT),
    "refund.created": (REFUNDED, "succeeded", REFUND_ID, PI_ID, REFUND_ID, AMOUNT),
    "refund.updated": (REFUNDED, "succeeded", REFUND_ID, PI_ID, REFUND_ID, AMOUNT),
    "refund.failed": (REFUNDED, "failed", REFUND_ID, PI_ID, REFUND_ID, AMOUNT),
    "checkout.session.completed": (COMPLETED, "complete", SESSION_ID, PI_ID, None, AMOUNT),
    "checkout.session.async_payment_succeeded": (
        COMPLETED,
        "complete",
        SESSION_ID,
        PI_ID,
        None,
        AMOUNT,
    ),
    "checkout.session.async_payment_failed": (CO_FAILED, "failed", SESSION_ID, PI_ID, None, AMOUNT),
    # An expired session never got a payment intent.
    "checkout.session.expired": (EXPIRED, "expired", SESSION_ID, None, None, AMOUNT),
    "invoice.paid": (INVOICE, "paid", INVOICE_ID, None, None, AMOUNT),
    "invoice.payment_succeeded": (INVOICE, "paid", INVOICE_ID, None, None, AMOUNT),
    "invoice.payment_failed": (INVOICE, "open", INVOICE_ID, None, None, AMOUNT),
    "invoice.finalized": (INVOICE, "open", INVOICE_ID, None, None, AMOUNT),
    "customer.subscription.created": (SUBSCRIPTION, "active", SUBSCRIPTION_ID, None, None, None),
    "customer.subscription.updated": (SUBSCRIPTION, "active", SUBSCRIPTION_ID, None, None, None),
    "customer.subscription.deleted": (SUBSCRIPTION, "canceled", SUBSCRIPTION_ID, None, None, None),
    "customer.subscription.paused": (SUBSCRIPTION, "paused", SUBSCRIPTION_ID, None, None, None),
    "customer.subscription.resumed": (SUBSCRIPTION, "active", SUBSCRIPTION_ID, None, None, None),
}
# Topics keyed by their own object id, whatever the order id (schemas/catalog.py).
OBJECT_KEYED = {"billing.invoice.updated", "billing.subscription.updated"}
BILLING_FIELDS = [
    field["name"]
    for field in default_catalog().schema(
        BILLING_EVENT_SUBJECT, default_catalog().latest_version(BILLING_EVENT_SUBJECT)
    )["fields"]
]


@pytest.fixture(scope="module")
def codec() -> Codec:
    return make_codec(None)


def raw_record(
    event: dict[str, Any],
    *,
    body: bytes | None = None,
    correlation_id: str = CORRELATION_ID,
) -> dict[str, Any]:
    """The webhooks.stripe record ingress would write for ``event`` (or for ``body``)."""
    created = event.get("created")
    received = ReceivedWebhook(
        provider="stripe",
        event=VerifiedEvent(
            event_id=event["id"],
            event_type=event.get("type", "unknown"),
            created=created if isinstance(created, int) else None,
        ),
        raw_body=stripe_body(event) if body is None else body,
        signature_header="t=1,v1=00",
        content_type="application/json; charset=utf-8",
        correlation_id=correlation_id,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        source_address=None,
        received_at_ms=RECEIVED_AT_MS,
    )
    return raw_webhook_record(received)


def only_event(result: Normalised) -> DomainEvent:
    assert result.outcome == "mapped", result.reason
    assert result.reason is None
    assert len(result.events) == 1
    return result.events[0]


def assert_encodes(codec: Codec, event: DomainEvent) -> None:
    decoded = codec.decode(codec.encode(event.topic, event.record), topic=event.topic)
    assert decoded.record == event.record


# -- the mapping table ----------------------------------------------------------------


def test_expected_table_covers_design_and_payload_types() -> None:
    assert set(EXPECTED) == set(STRIPE_EVENT_TYPES) == set(stripe_mapping.EVENT_TOPICS)
    assert {topic for topic, *_ in EXPECTED.values()} == set(BILLING_TOPICS)


@pytest.mark.parametrize("event_type", STRIPE_EVENT_TYPES)
def test_every_stripe_type_maps_with_its_fields(codec: Codec, event_type: str) -> None:
    topic, status, object_id, payment_id, refund_id, amount = EXPECTED[event_type]
    event = stripe_event(event_type)
    raw = raw_record(event)

    domain_event = only_event(normalise(raw))
    record = domain_event.record

    assert domain_event.topic == topic
    assert list(record) == BILLING_FIELDS  # complete, in schema order
    assert record["eventId"] == derived_event_id(raw["eventId"], topic)
    assert record["eventType"] == topic
    assert record["version"] == BILLING_EVENT_VERSION
    assert record["occurredAt"] == DEFAULT_CREATED * 1000
    assert record["correlationId"] == CORRELATION_ID
    assert record["source"] == NORMALISE_SOURCE
    assert record["provider"] == "stripe"
    assert record["providerEventId"] == event["id"]
    assert record["providerObjectId"] == object_id
    assert record["orderId"] == DEFAULT_ORDER_ID
    assert record["userId"] == DEFAULT_USER_ID
    assert record["amountMinor"] == amount
    assert record["currency"] == "usd"
    assert record["status"] == status
    assert record["paymentId"] == payment_id
    assert record["refundId"] == refund_id
    assert record["attributes"]["provider_event_type"] == event_type
    assert record["attributes"]["livemode"] == "false"
    assert domain_event.key == (object_id if topic in OBJECT_KEYED else DEFAULT_ORDER_ID)
    assert_encodes(codec, domain_event)


def test_attributes_are_short_strings_never_the_body() -> None:
    for event_type in STRIPE_EVENT_TYPES:
        record = only_event(normalise(raw_record(stripe_event(event_type)))).record
        for name, value in record["attributes"].items():
            assert isinstance(value, str)
            assert value  # blanks and nulls are dropped
            assert len(value) < 100, (event_type, name)


def test_payment_failed_keeps_the_decline_reason() -> None:
    attributes = only_event(
        normalise(raw_record(stripe_event("payment_intent.payment_failed")))
    ).record["attributes"]
    assert attributes["failure_code"] == "card_declined"
    assert attributes["decline_code"] == "generic_decline"
    assert attributes["charge_id"] == CHARGE_ID
    assert attributes["customer_id"] == CUSTOMER_ID


def test_canceled_payment_keeps_the_cancellation_reason() -> None:
    record = only_event(normalise(raw_record(stripe_event("payment_intent.canceled")))).record
    assert record["attributes"]["cancellation_reason"] == "requested_by_customer"


def test_refund_failed_keeps_the_failure_reason() -> None:
    record = only_event(normalise(raw_record(stripe_event("refund.failed")))).record
    assert record["attributes"]["failure_reason"] == "expired_or_canceled_card"
    assert record["attributes"]["charge_id"] == CHARGE_ID


def test_refund_status_comes_from_the_refund_object() -> None:
    event = stripe_event("refund.updated", status="canceled")
    assert only_event(normalise(raw_record(event))).record["status"] == "canceled"
    event = stripe_event("refund.created", status="pending")
    assert only_event(normalise(raw_record(event))).record["status"] == "pending"


def test_async_payment_failed_session_keeps_its_payment_status() -> None:
    record = only_event(
        normalise(raw_record(stripe_event("checkout.session.async_payment_failed")))
    ).record
    assert record["status"] == "failed"
    assert record["attributes"]["payment_status"] == "unpaid"
    assert record["attributes"]["client_reference_id"] == DEFAULT_ORDER_ID


def test_invoice_names_its_subscription_and_customer() -> None:
    record = only_event(normalise(raw_record(stripe_event("invoice.paid")))).record
    assert record["attributes"]["subscription_id"] == SUBSCRIPTION_ID
    assert record["attributes"]["customer_id"] == CUSTOMER_ID
    assert record["attributes"]["amount_paid"] == str(DEFAULT_AMOUNT)
    assert record["attributes"]["billing_reason"] == "subscription_cycle"


def test_invoice_payment_intent_from_either_api_version(codec: Codec) -> None:
    # Before 2025-03-31: a top-level payment_intent.
    old = stripe_event("invoice.paid", payment_intent=PI_ID)
    assert only_event(normalise(raw_record(old))).record["paymentId"] == PI_ID
    # Since: an (included) payments list; the paid one wins over an earlier failed one.
    payments = {
        "object": "list",
        "data": [
            {
                "object": "invoice_payment",
                "status": "canceled",
                "payment": {"type": "payment_intent", "payment_intent": "pi_failed"},
            },
            {
                "object": "invoice_payment",
                "status": "paid",
                "payment": {"type": "payment_intent", "payment_intent": {"id": PI_ID}},
            },
        ],
    }
    new = stripe_event("invoice.paid", payments=payments)
    event = only_event(normalise(raw_record(new)))
    assert event.record["paymentId"] == PI_ID
    assert_encodes(codec, event)


def test_invoice_order_id_falls_back_to_the_subscription_metadata() -> None:
    event = stripe_event("invoice.paid", metadata={})
    record = only_event(normalise(raw_record(event))).record
    assert record["orderId"] == DEFAULT_ORDER_ID  # from parent.subscription_details
    assert record["userId"] == DEFAULT_USER_ID


def test_subscription_deleted_and_previous_status() -> None:
    record = only_event(normalise(raw_record(stripe_event("customer.subscription.deleted")))).record
    assert record["status"] == "canceled"
    assert record["attributes"]["cancellation_reason"] == "cancellation_requested"
    updated = stripe_event(
        "customer.subscription.updated", previous_attributes={"status": "trialing"}
    )
    record = only_event(normalise(raw_record(updated))).record
    assert record["attributes"]["previous_status"] == "trialing"


def test_connect_account_is_kept() -> None:
    event = stripe_event("payment_intent.succeeded")
    event["account"] = "acct_1032D82eZvKYlo2C"
    record = only_event(normalise(raw_record(event))).record
    assert record["attributes"]["account_id"] == "acct_1032D82eZvKYlo2C"


def test_expanded_linked_objects_are_read_by_id() -> None:
    event = stripe_event("refund.created", payment_intent={"id": PI_ID, "object": "payment_intent"})
    assert only_event(normalise(raw_record(event))).record["paymentId"] == PI_ID


# -- charge.refunded ------------------------------------------------------------------


def test_charge_refunded_full(codec: Codec) -> None:
    event = only_event(normalise(raw_record(stripe_event("charge.refunded"))))
    assert event.record["status"] == "refunded"
    assert event.record["amountRefundedMinor"] == DEFAULT_AMOUNT
    assert event.record["amountMinor"] == DEFAULT_AMOUNT
    assert_encodes(codec, event)


def test_charge_refunded_partial(codec: Codec) -> None:
    event = only_event(normalise(raw_record(stripe_event("charge.refunded", refund_amount=400))))
    record = event.record
    assert record["status"] == "partially_refunded"
    assert record["amountMinor"] == 400  # this refund
    assert record["amountRefundedMinor"] == 400  # the charge's total so far
    assert record["refundId"] == REFUND_ID
    assert record["paymentId"] == PI_ID
    assert_encodes(codec, event)


def test_charge_refunded_second_partial_refund_reports_the_newest() -> None:
    event = stripe_event("charge.refunded", refund_amount=400)
    charge = event["data"]["object"]
    first = copy.deepcopy(charge["refunds"]["data"][0])
    newest = dict(first, id="re_newest", amount=300, created=DEFAULT_CREATED + 60)
    charge["refunds"]["data"] = [newest, first]
    charge["amount_refunded"] = 700
    record = only_event(normalise(raw_record(event))).record
    assert record["refundId"] == record["providerObjectId"] == "re_newest"
    assert record["amountMinor"] == 300
    assert record["amountRefundedMinor"] == 700
    assert record["status"] == "partially_refunded"


def test_charge_refunded_without_expanded_refunds_is_about_the_charge() -> None:
    # Since API version 2022-11-15 charge.refunds is only there when expanded.
    event = stripe_event("charge.refunded", refund_amount=500)
    del event["data"]["object"]["refunds"]
    record = only_event(normalise(raw_record(event))).record
    assert record["providerObjectId"] == CHARGE_ID
    assert record["refundId"] is None
    assert record["amountMinor"] == 500
    assert record["amountRefundedMinor"] == 500
    assert record["status"] == "partially_refunded"
    assert record["paymentId"] == PI_ID


def test_charge_refunded_without_amounts_uses_the_refunded_flag() -> None:
    event = stripe_event("charge.refunded", amount_refunded=None, refunded=True)
    del event["data"]["object"]["amount"]
    assert only_event(normalise(raw_record(event))).record["status"] == "refunded"


@pytest.mark.parametrize(
    ("event_type", "field", "value"),
    [
        (
            "charge.refunded",
            "refunds",
            {"data": [None, 1, {"id": 5}, {"id": "re_x", "created": "?"}]},
        ),
        ("charge.refunded", "refunds", {"data": {"id": "re_x"}}),
        ("invoice.paid", "payments", {"data": [None, {"payment": []}, {"payment": {"x": 1}}]}),
        ("invoice.paid", "payments", {"data": "none"}),
        ("invoice.paid", "parent", {"subscription_details": []}),
        ("payment_intent.payment_failed", "last_payment_error", {"code": ["card_declined"]}),
        ("customer.subscription.deleted", "cancellation_details", {"reason": {"x": 1}}),
    ],
)
def test_odd_nested_values_are_ignored(
    codec: Codec, event_type: str, field: str, value: object
) -> None:
    event = stripe_event(event_type)
    event["data"]["object"][field] = value
    domain_event = only_event(normalise(raw_record(event)))
    assert_encodes(codec, domain_event)
    if event_type == "charge.refunded":
        # "re_x" is the only usable refund; without one the charge is the object.
        assert domain_event.record["refundId"] in ("re_x", None)


# -- order and user ids, keys ---------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "key_field"),
    [
        ("payment_intent.succeeded", "id"),
        ("payment_intent.payment_failed", "id"),
        ("refund.created", "payment_intent"),  # a refund falls back to its payment
        ("refund.failed", "payment_intent"),
        ("charge.refunded", "payment_intent"),
        ("checkout.session.completed", "id"),
        ("invoice.paid", "id"),
        ("customer.subscription.updated", "id"),
    ],
)
def test_missing_metadata_gives_null_ids_and_the_key_falls_back(
    codec: Codec, event_type: str, key_field: str
) -> None:
    event = stripe_event(event_type, order_id=None, user_id=None)
    obj = event["data"]["object"]
    if obj.get("parent"):  # invoices: no subscription metadata either
        obj["parent"]["subscription_details"]["metadata"] = {}
    domain_event = only_event(normalise(raw_record(event)))
    assert domain_event.record["orderId"] is None
    assert domain_event.record["userId"] is None
    assert domain_event.key == obj[key_field]
    assert_encodes(codec, domain_event)


def test_refund_without_order_or_payment_is_keyed_by_itself() -> None:
    event = stripe_event("refund.created", order_id=None, payment_intent=None)
    domain_event = only_event(normalise(raw_record(event)))
    assert domain_event.record["paymentId"] is None
    assert domain_event.key == event["data"]["object"]["id"]


def test_snake_case_metadata_keys_are_accepted() -> None:
    event = stripe_event("payment_intent.succeeded", metadata={"order_id": "o-9", "user_id": "u-9"})
    domain_event = only_event(normalise(raw_record(event)))
    assert domain_event.record["orderId"] == "o-9"
    assert domain_event.record["userId"] == "u-9"
    assert domain_event.key == "o-9"


def test_camel_case_wins_and_blank_ids_count_as_absent() -> None:
    event = stripe_event(
        "payment_intent.succeeded",
        metadata={"order_id": "o-snake", "orderId": "o-camel", "userId": "  "},
    )
    record = only_event(normalise(raw_record(event))).record
    assert record["orderId"] == "o-camel"
    assert record["userId"] is None


def test_invoice_key_is_the_invoice_even_with_an_order_id() -> None:
    domain_event = only_event(normalise(raw_record(stripe_event("invoice.paid"))))
    assert domain_event.record["orderId"] == DEFAULT_ORDER_ID
    assert domain_event.key == INVOICE_ID


# -- currency and amounts -------------------------------------------------------------


def test_unknown_currency_passes_through_lower_cased(codec: Codec) -> None:
    event = only_event(
        normalise(raw_record(stripe_event("payment_intent.succeeded", currency="XYZ")))
    )
    assert event.record["currency"] == "xyz"
    assert_encodes(codec, event)


@pytest.mark.parametrize("currency", [None, "", 840])
def test_missing_currency_is_null(codec: Codec, currency: object) -> None:
    event = stripe_event("payment_intent.succeeded")
    event["data"]["object"]["currency"] = currency
    domain_event = only_event(normalise(raw_record(event)))
    assert domain_event.record["currency"] is None
    assert_encodes(codec, domain_event)


def test_absent_currency_is_null() -> None:
    event = stripe_event("payment_intent.succeeded")
    del event["data"]["object"]["currency"]
    assert only_event(normalise(raw_record(event))).record["currency"] is None


@pytest.mark.parametrize("amount", [None, "1099", 10.99, True, 2**63])
def test_amount_that_is_not_a_long_is_null(codec: Codec, amount: object) -> None:
    event = stripe_event("payment_intent.succeeded")
    event["data"]["object"]["amount"] = amount
    domain_event = only_event(normalise(raw_record(event)))
    assert domain_event.record["amountMinor"] is None
    assert_encodes(codec, domain_event)


def test_zero_decimal_amounts_are_not_rescaled() -> None:
    # Stripe amounts are already minor units; JPY has none, so 500 means 500 yen.
    event = stripe_event("payment_intent.succeeded", amount=500, currency="jpy")
    record = only_event(normalise(raw_record(event))).record
    assert (record["amountMinor"], record["currency"]) == (500, "jpy")


# -- envelope and determinism ---------------------------------------------------------


def test_same_input_twice_gives_equal_results_and_ids() -> None:
    raw = raw_record(stripe_event("payment_intent.succeeded"))
    first, second = normalise(raw), normalise(copy.deepcopy(raw))
    assert first == second
    assert first.events[0].record["eventId"] == second.events[0].record["eventId"]


def test_replayed_webhook_gives_the_same_ids() -> None:
    raw = raw_record(stripe_event("charge.refunded"))
    replayed = dict(raw, replay=True, correlationId="corr-replay")
    assert (
        only_event(normalise(raw)).record["eventId"]
        == only_event(normalise(replayed)).record["eventId"]
    )
    assert only_event(normalise(replayed)).record["correlationId"] == "corr-replay"


def test_different_events_and_types_give_different_ids() -> None:
    ids = {
        only_event(normalise(raw_record(stripe_event(event_type)))).record["eventId"]
        for event_type in STRIPE_EVENT_TYPES
    }
    assert len(ids) == len(STRIPE_EVENT_TYPES)


def test_occurred_at_falls_back_to_the_raw_record() -> None:
    event = stripe_event("payment_intent.succeeded")
    raw = raw_record(event)
    del event["created"]
    raw["rawBody"] = stripe_body(event)
    raw["occurredAt"] = 1_700_000_000_123
    assert only_event(normalise(raw)).record["occurredAt"] == 1_700_000_000_123


def test_version_is_the_catalogs_latest() -> None:
    assert default_catalog().latest_version(BILLING_EVENT_SUBJECT) == BILLING_EVENT_VERSION


def test_event_type_is_read_from_the_body() -> None:
    # ingress took eventType from the body; the body stays the authority here.
    raw = raw_record(stripe_event("payment_intent.succeeded"))
    raw["eventType"] = "unknown"
    assert only_event(normalise(raw)).topic == "billing.payment.succeeded"


# -- unmapped and invalid -------------------------------------------------------------


@pytest.mark.parametrize("event_type", ["customer.created", "charge.succeeded", "refund.foo"])
def test_unknown_event_type_is_unmapped(event_type: str) -> None:
    if event_type == "refund.foo":
        event = stripe_event("refund.created")
        event["type"] = event_type
    else:
        event = stripe_event(event_type)
    result = normalise(raw_record(event))
    assert result.outcome == "unmapped"
    assert result.events == ()
    assert result.reason is not None
    assert event_type in result.reason


def test_reasons_quoting_provider_values_stay_short() -> None:
    event = stripe_event("payment_intent.succeeded")
    event["type"] = "x" * 100_000
    result = normalise(raw_record(event))
    assert result.outcome == "unmapped"
    assert result.reason is not None
    assert len(result.reason) <= 300
    event = stripe_event("payment_intent.succeeded")
    event["data"]["object"]["object"] = "y" * 100_000
    reason = _invalid(raw_record(event))
    assert len(reason) <= 300


def test_unknown_type_with_odd_data_is_still_unmapped() -> None:
    body = json.dumps({"id": "evt_1", "type": "balance.available", "data": []}).encode()
    raw = raw_record({"id": "evt_1", "type": "balance.available"}, body=body)
    assert normalise(raw).outcome == "unmapped"


def test_unknown_provider_is_unmapped() -> None:
    raw = dict(raw_record(stripe_event("payment_intent.succeeded")), provider="paypal")
    result = normalise(raw)
    assert (result.outcome, result.events) == ("unmapped", ())
    assert result.reason is not None
    assert "paypal" in result.reason


def _invalid(raw: dict[str, Any]) -> str:
    result = normalise(raw)
    assert result.outcome == "invalid"
    assert result.events == ()
    assert result.reason
    return result.reason


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"\xff\xfe\x00garbage",
        b'{"id": "evt_1", "type": ',
        b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than the parser's recursion limit
        b"1" * 5000,  # an integer longer than Python will parse
    ],
)
def test_body_that_is_not_json_is_invalid(body: bytes) -> None:
    reason = _invalid(raw_record(stripe_event("payment_intent.succeeded"), body=body))
    assert "not JSON" in reason


@pytest.mark.parametrize("body", [b"[]", b'[{"type": "payment_intent.succeeded"}]', b'"x"', b"3"])
def test_json_that_is_not_an_object_is_invalid(body: bytes) -> None:
    assert "not an object" in _invalid(
        raw_record(stripe_event("payment_intent.succeeded"), body=body)
    )


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda e: e.pop("data"), "data.object"),
        (lambda e: e.update(data=None), "data.object"),
        (lambda e: e.update(data=[]), "data.object"),
        (lambda e: e["data"].pop("object"), "data.object"),
        (lambda e: e["data"].update(object=[1, 2]), "data.object"),
        (lambda e: e["data"]["object"].pop("id"), "data.object.id"),
        (lambda e: e["data"]["object"].update(id=""), "data.object.id"),
        (lambda e: e["data"]["object"].update(id=42), "data.object.id"),
        (lambda e: e["data"]["object"].update(object="charge"), "data.object.object"),
        (lambda e: e.pop("type"), "type"),
        (lambda e: e.update(type=None), "type"),
    ],
)
def test_mapped_type_without_expected_structure_is_invalid(mutate: Any, field: str) -> None:
    event = stripe_event("payment_intent.succeeded")
    raw = raw_record(event)
    mutate(event)
    raw["rawBody"] = stripe_body(event)
    assert field in _invalid(raw)


@pytest.mark.parametrize(
    "missing", ["eventId", "provider", "providerEventId", "correlationId", "occurredAt", "rawBody"]
)
def test_raw_record_without_its_envelope_is_invalid(missing: str) -> None:
    raw = raw_record(stripe_event("payment_intent.succeeded"))
    del raw[missing]
    assert missing in _invalid(raw)


def test_raw_body_may_be_any_bytes_like() -> None:
    raw = raw_record(stripe_event("payment_intent.succeeded"))
    raw["rawBody"] = memoryview(bytearray(raw["rawBody"]))
    assert normalise(raw).outcome == "mapped"


_ODD_VALUES: list[object] = [None, [], {}, "", "x", 0, -1, True, 1.5, [{"id": 1}], {"id": None}]


@pytest.mark.parametrize("event_type", STRIPE_EVENT_TYPES)
def test_any_json_in_any_object_field_never_raises(codec: Codec, event_type: str) -> None:
    """Whatever a field holds, normalise returns a decision, and mapped records encode."""
    event = stripe_event(event_type)
    raw = raw_record(event)
    obj = event["data"]["object"]
    targets = [(obj, name) for name in [*obj, "metadata"]]
    targets += [(event, "created"), (event, "livemode"), (event["data"], "previous_attributes")]
    for container, name in targets:
        original = container.get(name)
        for value in _ODD_VALUES:
            container[name] = value  # one field at a time, restored below
            result = normalise(dict(raw, rawBody=stripe_body(event)))
            assert result.outcome in ("mapped", "invalid"), (name, value)
            for domain_event in result.events:
                codec.encode(domain_event.topic, domain_event.record)
        container[name] = original
