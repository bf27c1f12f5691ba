"""Razorpay webhooks → billing.* records (streams.domain.normalise, DESIGN §5).

Unit tier: pure functions, no event loop. Every produced record is encoded with the real
codec, so field names and types cannot drift from the BillingEvent schema.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ingress.records import ReceivedWebhook, raw_webhook_record
from ingress.verify import VerifiedEvent
from schemas.catalog import BILLING_EVENT_SUBJECT, default_catalog
from schemas.codec import Codec, make_codec
from streams.domain import razorpay_mapping
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
from tests.payloads.razorpay import (
    DEFAULT_ACCOUNT_ID,
    RAZORPAY_EVENT_TYPES,
    razorpay_body,
    razorpay_event,
)

RECEIVED_AT_MS = 1_735_700_000_000
CORRELATION_ID = "corr-razorpay-1"
EVENT_ID = "Ng7Jw3hX0kL2pQ"  # X-Razorpay-Event-Id

PAYMENT_ID = payload_id("pay", DEFAULT_ORDER_ID, length=14)
REFUND_ID = payload_id("rfnd", DEFAULT_ORDER_ID, length=14)
SUBSCRIPTION_ID = payload_id("sub", DEFAULT_ORDER_ID, length=14)
RAZORPAY_ORDER_ID = payload_id("order", DEFAULT_ORDER_ID, length=14)

# Subscription status after each subscription.* event, in the neutral vocabulary.
SUBSCRIPTION_STATUS = {
    "authenticated": "authenticated",
    "activated": "active",
    "charged": "active",
    "pending": "pending",
    "halted": "halted",
    "paused": "paused",
    "resumed": "active",
    "updated": "active",
    "completed": "completed",
    "cancelled": "canceled",  # Razorpay's spelling, normalised
}
# type -> (topic, status, providerObjectId, paymentId, refundId)
EXPECTED: dict[str, tuple[str, str, str, str | None, str | None]] = {
    "payment.captured": ("billing.payment.succeeded", "succeeded", PAYMENT_ID, PAYMENT_ID, None),
    "payment.failed": ("billing.payment.failed", "failed", PAYMENT_ID, PAYMENT_ID, None),
    "refund.processed": ("billing.payment.refunded", "succeeded", REFUND_ID, PAYMENT_ID, REFUND_ID),
    "refund.failed": ("billing.payment.refunded", "failed", REFUND_ID, PAYMENT_ID, REFUND_ID),
    **{
        f"subscription.{action}": (
            "billing.subscription.updated",
            status,
            SUBSCRIPTION_ID,
            PAYMENT_ID if action == "charged" else None,
            None,
        )
        for action, status in SUBSCRIPTION_STATUS.items()
    },
}
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
    event: dict[str, Any], *, body: bytes | None = None, event_id: str = EVENT_ID
) -> dict[str, Any]:
    """The webhooks.razorpay record ingress would write for ``event`` (or for ``body``)."""
    created = event.get("created_at")
    received = ReceivedWebhook(
        provider="razorpay",
        event=VerifiedEvent(
            event_id=event_id,
            event_type=event.get("event", "unknown"),
            created=created if isinstance(created, int) else None,
        ),
        raw_body=razorpay_body(event) if body is None else body,
        signature_header="0" * 64,
        content_type="application/json",
        correlation_id=CORRELATION_ID,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        source_address="203.0.113.7",
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


def test_expected_table_covers_the_payload_types() -> None:
    assert set(EXPECTED) == set(RAZORPAY_EVENT_TYPES)
    for event_type in RAZORPAY_EVENT_TYPES:
        assert razorpay_mapping.topic_for(event_type) == EXPECTED[event_type][0]


@pytest.mark.parametrize("event_type", RAZORPAY_EVENT_TYPES)
def test_every_razorpay_type_maps_with_its_fields(codec: Codec, event_type: str) -> None:
    topic, status, object_id, payment_id, refund_id = EXPECTED[event_type]
    raw = raw_record(razorpay_event(event_type))

    domain_event = only_event(normalise(raw))
    record = domain_event.record

    assert domain_event.topic == topic
    assert list(record) == BILLING_FIELDS
    assert record["eventId"] == derived_event_id(raw["eventId"], topic)
    assert record["eventType"] == topic
    assert record["version"] == BILLING_EVENT_VERSION
    assert record["occurredAt"] == DEFAULT_CREATED * 1000
    assert record["correlationId"] == CORRELATION_ID
    assert record["source"] == NORMALISE_SOURCE
    assert record["provider"] == "razorpay"
    assert record["providerEventId"] == EVENT_ID
    assert record["providerObjectId"] == object_id
    assert record["orderId"] == DEFAULT_ORDER_ID
    assert record["userId"] == DEFAULT_USER_ID
    assert record["status"] == status
    assert record["paymentId"] == payment_id
    assert record["refundId"] == refund_id
    assert record["attributes"]["provider_event_type"] == event_type
    assert record["attributes"]["account_id"] == DEFAULT_ACCOUNT_ID
    if topic == "billing.subscription.updated":
        assert domain_event.key == SUBSCRIPTION_ID  # catalog: keyed by the object
    else:
        assert domain_event.key == DEFAULT_ORDER_ID
        assert record["amountMinor"] == DEFAULT_AMOUNT  # paise, not rescaled
        assert record["currency"] == "inr"
    assert_encodes(codec, domain_event)


def test_payment_keeps_razorpays_own_order_id_apart_from_ours() -> None:
    record = only_event(normalise(raw_record(razorpay_event("payment.captured")))).record
    assert record["orderId"] == DEFAULT_ORDER_ID
    assert record["attributes"]["provider_order_id"] == RAZORPAY_ORDER_ID
    assert record["attributes"]["method"] == "card"
    assert "failure_code" not in record["attributes"]


def test_payment_failed_keeps_the_error() -> None:
    record = only_event(normalise(raw_record(razorpay_event("payment.failed")))).record
    assert record["attributes"]["failure_code"] == "BAD_REQUEST_ERROR"
    assert record["attributes"]["failure_reason"] == "payment_failed"
    assert record["attributes"]["error_source"] == "bank"


def test_full_refund(codec: Codec) -> None:
    event = only_event(normalise(raw_record(razorpay_event("refund.processed"))))
    assert event.record["amountMinor"] == DEFAULT_AMOUNT
    assert event.record["amountRefundedMinor"] == DEFAULT_AMOUNT
    assert event.record["attributes"]["payment_refund_status"] == "full"
    assert_encodes(codec, event)


def test_partial_refund() -> None:
    record = only_event(
        normalise(raw_record(razorpay_event("refund.processed", refund_amount=300)))
    ).record
    assert record["amountMinor"] == 300
    assert record["amountRefundedMinor"] == 300
    assert record["attributes"]["payment_refund_status"] == "partial"


def test_failed_refund_reports_what_the_payment_says_was_refunded() -> None:
    record = only_event(normalise(raw_record(razorpay_event("refund.failed")))).record
    assert record["status"] == "failed"
    assert record["amountRefundedMinor"] == 0


def test_refund_without_its_payment_entity_still_maps() -> None:
    event = razorpay_event("refund.processed")
    del event["payload"]["payment"]
    record = only_event(normalise(raw_record(event))).record
    assert record["paymentId"] == PAYMENT_ID  # from refund.payment_id
    assert record["amountRefundedMinor"] is None
    assert record["orderId"] == DEFAULT_ORDER_ID  # the refund's own notes


def test_refund_ids_come_from_the_payment_notes_when_the_refund_has_none() -> None:
    event = razorpay_event("refund.processed")
    event["payload"]["refund"]["entity"]["notes"] = []
    record = only_event(normalise(raw_record(event))).record
    assert record["orderId"] == DEFAULT_ORDER_ID
    assert record["userId"] == DEFAULT_USER_ID


def test_refund_status_without_status_follows_the_event_type() -> None:
    event = razorpay_event("refund.processed", status=None)
    assert only_event(normalise(raw_record(event))).record["status"] == "succeeded"
    event = razorpay_event("refund.failed", status=None)
    assert only_event(normalise(raw_record(event))).record["status"] == "failed"


def test_subscription_charged_names_the_payment(codec: Codec) -> None:
    event = only_event(normalise(raw_record(razorpay_event("subscription.charged"))))
    record = event.record
    assert record["paymentId"] == PAYMENT_ID
    assert record["amountMinor"] == DEFAULT_AMOUNT
    assert record["currency"] == "inr"
    assert record["attributes"]["plan_id"] == payload_id("plan", DEFAULT_ORDER_ID, length=14)
    assert_encodes(codec, event)


def test_other_subscription_events_have_no_amount() -> None:
    record = only_event(normalise(raw_record(razorpay_event("subscription.activated")))).record
    assert (record["amountMinor"], record["currency"], record["paymentId"]) == (None, None, None)


def test_any_subscription_action_maps() -> None:
    # DESIGN says subscription.*: an action Razorpay adds later maps too.
    event = razorpay_event("subscription.updated")
    event["event"] = "subscription.rescheduled"
    domain_event = only_event(normalise(raw_record(event)))
    assert domain_event.topic == "billing.subscription.updated"
    assert razorpay_mapping.topic_for("subscription.") is None


# -- notes, keys, currency ------------------------------------------------------------


@pytest.mark.parametrize(
    "event_type",
    [
        "payment.captured",
        "payment.failed",
        "refund.processed",
        "refund.failed",
        "subscription.activated",
    ],
)
def test_empty_notes_array_gives_null_ids_and_the_key_falls_back(
    codec: Codec, event_type: str
) -> None:
    event = razorpay_event(event_type, order_id=None, user_id=None)
    entity = event["payload"][event_type.split(".")[0]]["entity"]
    assert entity["notes"] == []  # as Razorpay sends empty notes
    domain_event = only_event(normalise(raw_record(event)))
    assert domain_event.record["orderId"] is None
    assert domain_event.record["userId"] is None
    # A refund falls back to the payment it refunds, anything else to its own id.
    expected_key = entity["payment_id"] if event_type.startswith("refund.") else entity["id"]
    assert domain_event.key == expected_key
    assert_encodes(codec, domain_event)


def test_snake_case_note_keys_and_numeric_values_are_accepted() -> None:
    event = razorpay_event("payment.captured")
    event["payload"]["payment"]["entity"]["notes"] = {"order_id": 1001, "user_id": "u-7"}
    record = only_event(normalise(raw_record(event))).record
    assert (record["orderId"], record["userId"]) == ("1001", "u-7")


@pytest.mark.parametrize(("currency", "expected"), [("INR", "inr"), ("XYZ", "xyz"), ("usd", "usd")])
def test_currency_is_lower_cased(codec: Codec, currency: str, expected: str) -> None:
    event = only_event(normalise(raw_record(razorpay_event("payment.captured", currency=currency))))
    assert event.record["currency"] == expected
    assert_encodes(codec, event)


def test_missing_currency_is_null() -> None:
    event = razorpay_event("payment.captured")
    del event["payload"]["payment"]["entity"]["currency"]
    assert only_event(normalise(raw_record(event))).record["currency"] is None


# -- envelope and determinism ---------------------------------------------------------


def test_same_input_twice_gives_the_same_ids() -> None:
    raw = raw_record(razorpay_event("payment.captured"))
    assert normalise(raw) == normalise(copy.deepcopy(raw))


def test_a_redelivery_with_the_same_event_id_gives_the_same_ids() -> None:
    # Razorpay retries with the same X-Razorpay-Event-Id; ingress derives the same eventId.
    body = razorpay_event("refund.processed")
    first = only_event(normalise(raw_record(body)))
    again = only_event(normalise(raw_record(copy.deepcopy(body))))
    other = only_event(normalise(raw_record(body, event_id="Zz9Jw3hX0kL2pQ")))
    assert first.record["eventId"] == again.record["eventId"]
    assert first.record["eventId"] != other.record["eventId"]


def test_occurred_at_falls_back_to_the_raw_record() -> None:
    event = razorpay_event("payment.captured")
    raw = raw_record(event)
    event["created_at"] = "yesterday"
    raw["rawBody"] = razorpay_body(event)
    assert only_event(normalise(raw)).record["occurredAt"] == raw["occurredAt"]


# -- unmapped and invalid -------------------------------------------------------------


@pytest.mark.parametrize(
    "event_type", ["payment.authorized", "refund.created", "order.paid", "payment.dispute.created"]
)
def test_unmapped_types(event_type: str) -> None:
    if event_type in ("payment.authorized", "refund.created"):
        event = razorpay_event(event_type)
    else:
        event = razorpay_event("payment.captured")
        event["event"] = event_type
    result = normalise(raw_record(event))
    assert (result.outcome, result.events) == ("unmapped", ())
    assert result.reason is not None
    assert event_type in result.reason


def _invalid(raw: dict[str, Any]) -> str:
    result = normalise(raw)
    assert result.outcome == "invalid"
    assert result.events == ()
    assert result.reason
    return result.reason


@pytest.mark.parametrize("body", [b"<xml/>", b"[]", b"null", b'{"event": "payment.captured"'])
def test_body_that_is_not_a_json_object_is_invalid(body: bytes) -> None:
    _invalid(raw_record(razorpay_event("payment.captured"), body=body))


@pytest.mark.parametrize(
    ("event_type", "mutate", "field"),
    [
        ("payment.captured", lambda e: e.pop("payload"), "payload"),
        ("payment.captured", lambda e: e.update(payload=[]), "payload"),
        ("payment.captured", lambda e: e["payload"].pop("payment"), "payload.payment.entity"),
        ("payment.captured", lambda e: e["payload"]["payment"].update(entity=[]), "payment.entity"),
        ("payment.captured", lambda e: e["payload"].update(payment=None), "payment.entity"),
        ("payment.captured", lambda e: e["payload"]["payment"]["entity"].pop("id"), "entity.id"),
        ("refund.processed", lambda e: e["payload"].pop("refund"), "payload.refund.entity"),
        ("subscription.charged", lambda e: e["payload"].pop("subscription"), "subscription"),
        ("payment.captured", lambda e: e.pop("event"), "event"),
        ("payment.captured", lambda e: e.update(event=7), "event"),
    ],
)
def test_mapped_type_without_expected_structure_is_invalid(
    event_type: str, mutate: Any, field: str
) -> None:
    event = razorpay_event(event_type)
    raw = raw_record(event)
    mutate(event)
    raw["rawBody"] = razorpay_body(event)
    assert field in _invalid(raw)


_ODD_VALUES: list[object] = [None, [], {}, "", "x", 0, -1, True, 1.5, [{"id": 1}], {"id": None}]


@pytest.mark.parametrize("event_type", RAZORPAY_EVENT_TYPES)
def test_any_json_in_any_entity_field_never_raises(codec: Codec, event_type: str) -> None:
    """Whatever a field holds, normalise returns a decision, and mapped records encode."""
    event = razorpay_event(event_type)
    raw = raw_record(event)
    targets: list[tuple[dict[str, Any], str]] = [(event, "created_at"), (event, "account_id")]
    for wrapper in event["payload"].values():
        targets += [(wrapper["entity"], name) for name in wrapper["entity"]]
        targets.append((wrapper, "entity"))
    for container, name in targets:
        original = container.get(name)
        for value in _ODD_VALUES:
            container[name] = value  # one field at a time, restored below
            result = normalise(dict(raw, rawBody=razorpay_body(event)))
            assert result.outcome in ("mapped", "invalid"), (name, value)
            for domain_event in result.events:
                codec.encode(domain_event.topic, domain_event.record)
        container[name] = original
