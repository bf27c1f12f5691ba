"""The Avro codec: wire format, validation, decode failures, schema evolution, registry mode."""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from base.errors import InvalidEvent, PermanentError, TransientError
from schemas.catalog import (
    AVRO_DIR,
    BILLING_TOPICS,
    TOPICS,
    SchemaCatalog,
    SchemaNotFound,
    TopicSpec,
    default_catalog,
)
from schemas.codec import (
    CatalogResolver,
    Codec,
    Decoded,
    RegistryResolver,
    make_codec,
)
from tests.fixtures.registry import RegistryProxy

UTC = dt.UTC
T0 = 1_714_566_615_123  # ms since the epoch: 2024-05-01T12:30:15.123Z
T1 = T0 + 2_000
T0_DATETIME = dt.datetime(2024, 5, 1, 12, 30, 15, 123000, tzinfo=UTC)
CODEC = make_codec(None)


def envelope(event_type: str, **overrides: Any) -> dict[str, Any]:
    return {
        "eventId": "3f1c8a52-6a0e-5d6b-9a55-0c8f2b1e9d01",
        "eventType": event_type,
        "version": 1,
        "occurredAt": T0,
        "correlationId": "req-7d2f9c",
        "source": "sluice.ingress/stripe",
        **overrides,
    }


STRIPE_BODY = json.dumps(
    {
        "id": "evt_1PxYz2LkdIwHu7ix",
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": 1714566615,
        "data": {
            "object": {
                "id": "pi_3PxYz2LkdIwHu7ix0",
                "amount": 4999,
                "currency": "usd",
                "metadata": {"order_id": "ord_42", "user_id": "usr_7"},
            }
        },
    },
    separators=(",", ":"),
).encode()
RAZORPAY_BODY = (
    b'{"entity":"event","event":"payment.captured","payload":{"payment":{"entity":'
    b'{"id":"pay_NvPq0mX1","amount":129900,"currency":"INR","notes":{"order_id":"ord_43"}}}},'
    b'"created_at":1714566615}'
)


def raw_webhook(
    provider: str, body: bytes | bytearray | memoryview, **overrides: Any
) -> dict[str, Any]:
    return {
        **envelope("payment_intent.succeeded", source=f"sluice.ingress/{provider}"),
        "provider": provider,
        "providerEventId": "evt_1PxYz2LkdIwHu7ix",
        "receivedAt": T1,
        "signatureHeader": "t=1714566615,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff5"
        "36d0ce8e108d8bd",
        "rawBody": body,
        "contentType": "application/json; charset=utf-8",
        "sourceAddress": "203.0.113.9",
        "replay": False,
        **overrides,
    }


def billing(topic: str, **overrides: Any) -> dict[str, Any]:
    return {
        **envelope(topic, source="sluice.streams.normalise"),
        "provider": "stripe",
        "providerEventId": "evt_1PxYz2LkdIwHu7ix",
        "providerObjectId": "pi_3PxYz2LkdIwHu7ix0",
        "orderId": "ord_42",
        "userId": "usr_7",
        "amountMinor": 4999,
        "currency": "usd",
        "status": "succeeded",
        "amountRefundedMinor": None,
        "refundId": None,
        "paymentId": None,
        "attributes": {"livemode": "false", "customer": "cus_Q1w2e3"},
        **overrides,
    }


ORDER_CREATED = {
    **envelope("order.created", source="checkout-service"),
    "data": {
        "orderId": "ord_42",
        "userId": "usr_7",
        "amount": 4999,
        "currency": "usd",
        "items": [
            {"productId": "sku_tee_m", "quantity": 2},
            {"productId": "sku_cap", "quantity": 1},
        ],
        "paymentProvider": "stripe",
    },
}
ORDER_CANCELLED = {
    **envelope("order.cancelled", source="checkout-service"),
    "data": {"orderId": "ord_42", "reason": "customer changed their mind"},
}


def samples() -> dict[str, dict[str, Any]]:
    """A realistic record for every topic that has a schema."""
    records: dict[str, dict[str, Any]] = {
        "webhooks.stripe": raw_webhook("stripe", STRIPE_BODY),
        "webhooks.razorpay": raw_webhook(
            "razorpay",
            RAZORPAY_BODY,
            eventType="payment.captured",
            providerEventId="evt_NvPq0mX1aBcDeF",
            signatureHeader="9d1c1ef7b0c5b3c2a7c6e1b8f3f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2",
            sourceAddress=None,
            replay=True,
        ),
        "webhooks.outcomes": {
            **envelope("webhook.outcome", source="sluice.streams/normalise"),
            "provider": "stripe",
            "providerEventId": "evt_1PxYz2LkdIwHu7ix",
            "providerEventType": "payment_intent.succeeded",
            "status": "PROCESSED",
            "reason": None,
            "receivedAt": T1,
            "signatureHeader": "t=1714566615,v1=5257a869",
            "rawBody": STRIPE_BODY,
            "contentType": "application/json; charset=utf-8",
        },
        "orders": ORDER_CREATED,
        "config.runtime": {
            **envelope("config.updated", source="sluice.ingress/internal"),
            "key": "leads.delivery.max_attempts",
            "value": "8",
            "configVersion": 3,
            "updatedAt": T1,
            "updatedBy": "ops-console",
        },
        "dlq": {
            **envelope("dlq.record", source="sluice.streams.deliver_lead"),
            "originTopic": "leads.received",
            "originPartition": 2,
            "originOffset": 18_446_744,
            "key": "partner-acme:ext-991",
            "value": b"\x00\x00\x00\x03\xe9\x02garbage\xff",
            "reason": "partner CRM answered 422: email is invalid",
            "errorClass": "PermanentError",
            "attempts": 1,
            "failedAt": T1,
            "originHeaders": {"event-type": b"lead.received", "traceparent": b"00-ab-cd-01"},
        },
    }
    command = {
        **envelope("payments.refund.create", source="sluice.ingress"),
        "orderId": "ord_1001",
        "taskId": "9b7c1c3e-5d0a-4a57-9d8e-5f0f5c1d2e3f",
        "replyTo": "replies",
        "userId": "user_42",
        "amountMinor": 1000,
        "currency": "usd",
        "paymentIntentId": "pi_3PxYz2LkdIwHu7ix0",
        "successUrl": None,
        "cancelUrl": None,
        "reason": "damaged in transit",
        "requestId": "refund-ord_1001-1",
    }
    records["commands.payments"] = command
    records["commands.stripe"] = {**command, "source": "streams.join_orders"}
    records["payments.setup"] = {
        **envelope("payment.intent.created", source="streams.stripe_calls"),
        "orderId": "ord_1001",
        "provider": "stripe",
        "command": "payments.intent.create",
        "taskId": None,
        "intentId": "pi_3PxYz2LkdIwHu7ix0",
        "clientSecret": "pi_3PxYz2LkdIwHu7ix0_secret_abc",
        "checkoutSessionId": None,
        "checkoutUrl": None,
        "refundId": None,
        "amountMinor": 2500,
        "currency": "usd",
        "status": "requires_payment_method",
        "errorCode": None,
        "errorMessage": None,
    }
    records["replies"] = {
        **envelope("command.reply", source="streams.stripe_calls"),
        "taskId": "9b7c1c3e-5d0a-4a57-9d8e-5f0f5c1d2e3f",
        "status": 201,
        "body": '{"orderId":"ord_1001","refundId":"re_1","amount":1000,"status":"succeeded"}',
    }
    records["commands.inventory.release"] = {
        **envelope("inventory.release", source="streams.join_orders"),
        "orderId": "ord_1001",
        "items": [{"productId": "sku_1", "quantity": 2}],
        "reason": "payment_failed",
    }
    records["orders.lifecycle"] = {
        **envelope("order.paid", source="streams.join_orders"),
        "orderId": "ord_1001",
        "revision": 2,
        "status": "PAID",
        "previousStatus": "PENDING_PAYMENT",
        "userId": "user_42",
        "amountMinor": 2500,
        "currency": "usd",
        "refundedMinor": 0,
        "paymentProvider": "stripe",
        "paymentIntentId": "pi_3PxYz2LkdIwHu7ix0",
        "clientSecret": None,
        "providerIds": ["pi_3PxYz2LkdIwHu7ix0"],
        "items": [{"productId": "sku_1", "quantity": 2}],
        "paymentId": "pi_3PxYz2LkdIwHu7ix0",
        "paymentAmountMinor": 2500,
        "paymentCurrency": "usd",
        "reason": None,
        "causeEventId": "7f1d2c3b-0000-4000-8000-000000000001",
        "createdAt": T1,
    }
    for topic in BILLING_TOPICS:
        records[topic] = billing(topic)
    records["billing.payment.refunded"] = billing(
        "billing.payment.refunded",
        providerObjectId="re_3PxYz2LkdIwHu7ix1",
        amountMinor=1000,
        status="partially_refunded",
        amountRefundedMinor=1000,
        refundId="re_3PxYz2LkdIwHu7ix1",
        paymentId="pi_3PxYz2LkdIwHu7ix0",
    )
    records["billing.subscription.updated"] = billing(
        "billing.subscription.updated",
        providerObjectId="sub_1PxZ",
        orderId=None,
        amountMinor=None,
        currency=None,
        status="active",
    )
    records["leads.received"] = {
        **envelope(
            "lead.received",
            eventId="0d9a6c8e-3f7b-5a51-9e0c-6b2d1f4a8c11",
            source="sluice.ingress/partner",
        ),
        "leadId": "0d9a6c8e-3f7b-5a51-9e0c-6b2d1f4a8c11",
        "partnerId": "acme",
        "externalLeadId": "L-1001",
        "name": "Asha Rao",
        "email": "asha@example.com",
        "phone": None,
        "listingId": "prop-77",
        "message": "Is it still available?",
        "payload": '{"full_name":"Asha Rao","email":"asha@example.com"}',
        "idempotencyKey": None,
        "receivedAt": T1,
    }
    records["commands.leads.deliver"] = {
        **envelope("lead.deliver", source="sluice.ingress/internal"),
        "leadId": "0d9a6c8e-3f7b-5a51-9e0c-6b2d1f4a8c11",
        "partnerId": "acme",
        "attempt": 2,
        "force": False,
        "metadata": {"requestedBy": "support"},
        "taskId": "b3f0c2d1-1111-4222-8333-944455556666",
        "replyTo": "replies",
    }
    records["users.contacts"] = {
        **envelope("user.contact_updated", source="accounts"),
        "data": {
            "userId": "user_42",
            "email": "asha@example.com",
            "phone": "+919812345678",
            "pushTokens": ["fcm-token-1"],
            "preferredChannels": ["EMAIL", "SMS"],
            "locale": "en-IN",
        },
    }
    records["notifications.requested"] = {
        **envelope("notification.requested", source="ingress"),
        "notificationId": "5b0f3a2e-8c1d-5e6f-9a7b-1c2d3e4f5a6b",
        "channel": "EMAIL",
        "template": "ORDER_PAID",
        "to": "user_42",
        "data": '{"orderId":"ord_1001","amount_minor":2500,"currency":"usd"}',
        "causeEventId": "7f1d2c3b-0000-4000-8000-000000000001",
        "idempotencyKey": None,
    }
    records["commands.search.index"] = {
        **envelope("search.index.upsert", source="ingress"),
        "index": "listings",
        "id": "lst-42",
        "op": "upsert",
        "doc": '{"title":"Sunny flat","price":125000,"location":{"lat":12.97,"lon":77.59}}',
        "docVersion": 7,
        "taskId": "b3f0c2d1-1111-4222-8333-944455556666",
    }
    records["commands.cache.invalidate"] = {
        **envelope("cache.invalidate", source="ingress"),
        "keys": ["order:ord_1001"],
        "patterns": ["listing:*"],
        "taskId": "b3f0c2d1-1111-4222-8333-944455556666",
        "replyTo": "replies",
    }
    return records


SAMPLES = samples()


def test_samples_cover_every_topic_with_a_schema() -> None:
    assert set(SAMPLES) == {name for name, spec in TOPICS.items() if spec.subject is not None}


# -- round trips and the wire format -------------------------------------------------------


@pytest.mark.parametrize("topic", sorted(SAMPLES))
def test_round_trip(topic: str) -> None:
    record = SAMPLES[topic]
    value = CODEC.encode(topic, record)
    decoded = CODEC.decode(value, topic=topic)
    assert decoded.record == record
    assert decoded.subject == TOPICS[topic].subject
    assert decoded.version == default_catalog().latest_version(decoded.subject)


def test_order_cancelled_round_trips_through_the_data_union() -> None:
    decoded = CODEC.decode(CODEC.encode("orders", ORDER_CANCELLED))
    assert decoded.record == ORDER_CANCELLED


def test_raw_body_is_byte_identical() -> None:
    body = b"\x00\xff{not json}\r\n" + bytes(range(256))
    record = raw_webhook("stripe", body)
    assert CODEC.decode(CODEC.encode("webhooks.stripe", record)).record["rawBody"] == body


@pytest.mark.parametrize("topic", sorted(SAMPLES))
def test_wire_format_is_magic_byte_schema_id_avro_body(topic: str) -> None:
    catalog = default_catalog()
    subject = TOPICS[topic].subject
    assert subject is not None
    latest = catalog.latest_version(subject)  # records are written with the newest
    schema_id = catalog.schema_id(subject, latest)
    value = CODEC.encode(topic, SAMPLES[topic])
    assert value[0] == 0
    assert value[1:5] == schema_id.to_bytes(4, "big")
    body = io.BytesIO()
    fastavro.schemaless_writer(body, catalog.parsed(subject, latest), SAMPLES[topic])
    assert value[5:] == body.getvalue()


def test_header_bytes_for_the_raw_webhook_schema() -> None:
    assert (
        CODEC.encode("webhooks.stripe", SAMPLES["webhooks.stripe"])[:5] == b"\x00\x00\x00\x03\xe9"
    )


def test_encoding_is_deterministic() -> None:
    record = SAMPLES["billing.payment.succeeded"]
    assert CODEC.encode("billing.payment.succeeded", record) == CODEC.encode(
        "billing.payment.succeeded", dict(record)
    )


def test_timestamps_accept_aware_datetimes_and_decode_to_epoch_millis() -> None:
    ist = dt.timezone(dt.timedelta(hours=5, minutes=30))
    record = {
        **SAMPLES["config.runtime"],
        "occurredAt": T0_DATETIME,
        "updatedAt": T0_DATETIME.astimezone(ist),
    }
    value = CODEC.encode("config.runtime", record)
    assert value == CODEC.encode("config.runtime", {**record, "occurredAt": T0, "updatedAt": T0})
    decoded = CODEC.decode(value).record
    assert decoded["occurredAt"] == decoded["updatedAt"] == T0
    assert type(decoded["occurredAt"]) is int


def _bytes_only(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"not JSON-ready: {type(value).__name__}")


def test_decoded_records_are_json_ready_apart_from_bytes() -> None:
    for topic, record in SAMPLES.items():
        json.dumps(CODEC.decode(CODEC.encode(topic, record)).record, default=_bytes_only)


def test_fields_with_defaults_may_be_left_out() -> None:
    record = {
        k: v
        for k, v in SAMPLES["billing.payment.failed"].items()
        if k not in ("orderId", "userId", "refundId", "attributes")
    }
    decoded = CODEC.decode(CODEC.encode("billing.payment.failed", record)).record
    assert decoded["orderId"] is None
    assert decoded["attributes"] == {}
    webhook = {k: v for k, v in SAMPLES["webhooks.stripe"].items() if k != "replay"}
    assert CODEC.decode(CODEC.encode("webhooks.stripe", webhook)).record["replay"] is False


def test_bytes_like_values_are_accepted() -> None:
    record = raw_webhook("stripe", memoryview(STRIPE_BODY))
    assert CODEC.decode(CODEC.encode("webhooks.stripe", record)).record["rawBody"] == STRIPE_BODY
    record = raw_webhook("stripe", bytearray(STRIPE_BODY))
    assert CODEC.decode(CODEC.encode("webhooks.stripe", record)).record["rawBody"] == STRIPE_BODY


def test_writer_schema_reports_what_encode_writes() -> None:
    resolved = CODEC.writer_schema("orders")
    assert (resolved.subject, resolved.version, resolved.schema_id) == (
        "sluice.orders.OrderEvent",
        1,
        1003,
    )


# -- decode failures -----------------------------------------------------------------------

GOOD = CODEC.encode("orders", ORDER_CREATED)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"", "value too short: 0 bytes"),
        (b"\x00\x00\x00\x03", "value too short: 4 bytes"),
        (b'{"eventId":"e1"}', "wrong magic byte 0x7b: not a Confluent-framed Avro value"),
        (b"\x01" + GOOD[1:], "wrong magic byte 0x01"),
        (b"\x00\x00\x0f\x42\x3f" + GOOD[5:], "unknown schema id 999999: not in the schema catalog"),
        (GOOD[:-4], "undecodable Avro body for schema id 1003 (sluice.orders.OrderEvent v1)"),
        (GOOD + b"\x00", "1 trailing bytes after the record"),
        (GOOD[:5] + b"\xff" * 12, "undecodable Avro body for schema id 1003"),
    ],
    ids=["empty", "short", "json", "magic-1", "unknown-id", "truncated", "trailing", "garbage"],
)
def test_decode_failures_are_invalid_events_with_clear_messages(value: bytes, message: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        CODEC.decode(value)
    assert message in str(caught.value)


def test_decode_failure_messages_are_distinct() -> None:
    messages = set()
    for value in (b"", b"\x01\x00\x00\x00\x00", b"\x00\x00\x0f\x42\x3f\x00", GOOD[:-4]):
        with pytest.raises(InvalidEvent) as caught:
            CODEC.decode(value)
        messages.add(str(caught.value).split(":")[0])
    assert len(messages) == 4


def test_decode_checks_the_topic_subject_when_asked() -> None:
    assert CODEC.decode(GOOD, topic="orders").subject == "sluice.orders.OrderEvent"
    with pytest.raises(InvalidEvent, match=r"sluice\.orders\.OrderEvent, but topic dlq carries"):
        CODEC.decode(GOOD, topic="dlq")
    assert CODEC.decode(GOOD, topic="retry.30s").record == ORDER_CREATED


# -- encode failures name the field --------------------------------------------------------


def _without(record: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != key}


def _order(**data: Any) -> dict[str, Any]:
    return {**ORDER_CREATED, "data": {**ORDER_CREATED["data"], **data}}


PAYMENT = SAMPLES["billing.payment.succeeded"]
WEBHOOK = SAMPLES["webhooks.stripe"]
ENCODE_FAILURES: list[tuple[str, str, dict[str, Any], str | None, str]] = [
    # (case, topic, record, field, message fragment)
    (
        "missing",
        "billing.payment.succeeded",
        _without(PAYMENT, "eventId"),
        "eventId",
        "is required",
    ),
    (
        "wrong type",
        "billing.payment.succeeded",
        {**PAYMENT, "version": "1"},
        "version",
        "expected an int, got str",
    ),
    (
        "float into long",
        "billing.payment.succeeded",
        {**PAYMENT, "amountMinor": 49.99},
        "amountMinor",
        "expected a long",
    ),
    (
        "bool into long",
        "billing.payment.succeeded",
        {**PAYMENT, "amountMinor": True},
        "amountMinor",
        "got bool",
    ),
    (
        "int range",
        "billing.payment.succeeded",
        {**PAYMENT, "version": 2**31},
        "version",
        "out of range",
    ),
    (
        "null not allowed",
        "billing.payment.succeeded",
        {**PAYMENT, "status": None},
        "status",
        "got null",
    ),
    (
        "typo",
        "billing.payment.succeeded",
        {**PAYMENT, "orderID": "ord_42"},
        "orderID",
        "unknown field",
    ),
    (
        "map value",
        "billing.payment.succeeded",
        {**PAYMENT, "attributes": {"attempt": 2}},
        "attributes[attempt]",
        "expected a string",
    ),
    (
        "bytes as str",
        "webhooks.stripe",
        {**WEBHOOK, "rawBody": STRIPE_BODY.decode()},
        "rawBody",
        "expected bytes",
    ),
    (
        "truthy boolean",
        "webhooks.stripe",
        {**WEBHOOK, "replay": "yes"},
        "replay",
        "expected a boolean",
    ),
    (
        "naive datetime",
        "webhooks.stripe",
        {**WEBHOOK, "receivedAt": dt.datetime(2024, 5, 1)},
        "receivedAt",
        "timezone-aware",
    ),
    (
        "timestamp as str",
        "webhooks.stripe",
        {**WEBHOOK, "occurredAt": "2024-05-01T12:00:00Z"},
        "occurredAt",
        "expected a timestamp",
    ),
    (
        "nullable wrong type",
        "webhooks.stripe",
        {**WEBHOOK, "sourceAddress": 203},
        "sourceAddress",
        "expected a string",
    ),
    ("union branch field", "orders", _order(amount="49.99"), "data.amount", "expected a long"),
    (
        "array item",
        "orders",
        _order(items=[{"productId": "a", "quantity": 1}, {"productId": "b"}]),
        "data.items[1].quantity",
        "is required",
    ),
    ("array type", "orders", _order(items={"productId": "a"}), "data.items", "expected an array"),
    ("unknown nested field", "orders", _order(amout=4999), "data.amout", "unknown field"),
    ("not a record", "orders", ["order"], None, "<record>: expected an object"),  # type: ignore[list-item]
]


@pytest.mark.parametrize(
    ("case", "topic", "record", "field", "message"),
    ENCODE_FAILURES,
    ids=[c[0] for c in ENCODE_FAILURES],
)
def test_encode_failure_names_the_field(
    case: str, topic: str, record: dict[str, Any], field: str | None, message: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        CODEC.encode(topic, record)
    assert caught.value.field == field
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"invalid {topic} record: {field or '<record>'}: ")
    with pytest.raises(InvalidEvent):
        CODEC.validate(topic, record)


def test_union_data_matching_no_branch_blames_a_field_inside_data() -> None:
    with pytest.raises(InvalidEvent) as caught:
        CODEC.encode("orders", {**ORDER_CREATED, "data": {"orderId": "ord_42"}})
    assert caught.value.field is not None
    assert caught.value.field.startswith("data.")


def test_validate_accepts_a_good_record() -> None:
    CODEC.validate("orders", ORDER_CREATED)


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        (
            "retry.5s",
            "topic retry.5s has no schema: it carries the original record's bytes unchanged",
        ),
        ("order", "unknown topic 'order'"),
    ],
)
def test_encode_to_a_topic_without_schema_fails_loudly(topic: str, message: str) -> None:
    with pytest.raises(SchemaNotFound) as caught:
        CODEC.encode(topic, ORDER_CREATED)
    assert message in str(caught.value)
    assert not isinstance(caught.value, InvalidEvent)  # our bug, not the sender's


# -- schema evolution: old records decode with the latest schema ---------------------------

THING_V1 = {
    "type": "record",
    "name": "Thing",
    "namespace": "test",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "count", "type": "int"},
        {"name": "legacy", "type": "string"},
    ],
}
THING_V2 = {
    "type": "record",
    "name": "Thing",
    "namespace": "test",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "count", "type": "long"},
        {"name": "colour", "type": ["null", "string"], "default": None},
    ],
}
THINGS = {"things": TopicSpec("things", "test.Thing", "id", 1, None, False, "test topic")}


def _catalog(root: Path, *schemas: dict[str, Any]) -> SchemaCatalog:
    (root / "test.Thing").mkdir(parents=True)
    for version, schema in enumerate(schemas, start=1):
        (root / "test.Thing" / f"{version}.avsc").write_text(json.dumps(schema))
    ids = root / "ids.json"
    ids.write_text(json.dumps({"test.Thing": {"1": 501, "2": 502}}))
    return SchemaCatalog(root, ids)


def test_old_records_decode_with_the_latest_schema(tmp_path: Path) -> None:
    old = Codec(CatalogResolver(_catalog(tmp_path / "old", THING_V1)), topics=THINGS)
    new = Codec(CatalogResolver(_catalog(tmp_path / "new", THING_V1, THING_V2)), topics=THINGS)
    value = old.encode("things", {"id": "t1", "count": 3, "legacy": "x"})
    assert value[1:5] == (501).to_bytes(4, "big")
    decoded = new.decode(value)
    assert decoded == Decoded("test.Thing", 1, 501, {"id": "t1", "count": 3, "colour": None})
    assert new.encode("things", {"id": "t2", "count": 2**40})[1:5] == (502).to_bytes(4, "big")


def test_the_codec_only_uses_the_shipped_files(tmp_path: Path) -> None:
    # A copy of the shipped catalog behaves like the default one.
    shutil.copytree(AVRO_DIR, tmp_path / "avro")
    catalog = SchemaCatalog(tmp_path / "avro", AVRO_DIR.parent / "ids.json")
    codec = Codec(CatalogResolver(catalog))
    assert codec.decode(GOOD).record == ORDER_CREATED


# -- registry mode, against a real registry (tests/fixtures/registry.py) ---------------


def _client(url: str) -> SchemaRegistryClient:
    # No client-side retries: the tests make failures happen on purpose.
    return SchemaRegistryClient({"url": url, "max.retries": 0, "timeout": 5})


def _registry_codec(url: str) -> Codec:
    return Codec(RegistryResolver(_client(url)))


def _posts(registry: RegistryProxy) -> list[str]:
    return [path for method, path in registry.requests if method == "POST"]


def test_make_codec_picks_the_resolver() -> None:
    assert isinstance(make_codec(None).resolver, CatalogResolver)
    assert isinstance(make_codec("  ").resolver, CatalogResolver)
    assert isinstance(make_codec("http://127.0.0.1:1").resolver, RegistryResolver)


def test_registry_codec_registers_topic_name_subjects_once(registry: RegistryProxy) -> None:
    codec = _registry_codec(registry.url)
    first = codec.encode("orders", ORDER_CREATED)
    second = codec.encode("orders", ORDER_CANCELLED)
    assert [p.split("?")[0] for p in _posts(registry)] == ["/subjects/orders-value/versions"]
    schema_id = registry.subjects()["orders-value"][0]
    assert first[:5] == second[:5] == b"\x00" + schema_id.to_bytes(4, "big")
    latest = _client(registry.url).get_latest_version("orders-value")
    assert latest.schema_id == schema_id
    assert codec.decode(first).record == ORDER_CREATED


def test_topics_sharing_a_record_type_share_the_registry_id(registry: RegistryProxy) -> None:
    codec = _registry_codec(registry.url)
    a = codec.encode("billing.payment.succeeded", SAMPLES["billing.payment.succeeded"])
    b = codec.encode("billing.payment.failed", SAMPLES["billing.payment.failed"])
    assert a[1:5] == b[1:5]
    assert set(registry.subjects()) == {
        "billing.payment.succeeded-value",
        "billing.payment.failed-value",
    }


def test_registry_codec_resolves_unknown_ids_by_fetching_them(registry: RegistryProxy) -> None:
    value = _registry_codec(registry.url).encode("dlq", SAMPLES["dlq"])
    reader = _registry_codec(registry.url)
    decoded = reader.decode(value, topic="dlq")
    assert decoded.subject == "sluice.dlq.DeadLetter"
    assert decoded.version == default_catalog().latest_version(decoded.subject)
    assert decoded.record == SAMPLES["dlq"]
    fetches = [p for m, p in registry.requests if m == "GET" and p.startswith("/schemas/ids/")]
    reader.decode(value)
    assert [p for m, p in registry.requests if p.startswith("/schemas/ids/")] == fetches
    assert len(fetches) == 1


def test_registry_codec_rejects_ids_the_registry_does_not_know(registry: RegistryProxy) -> None:
    codec = _registry_codec(registry.url)
    catalog_value = CODEC.encode("orders", ORDER_CREATED)  # id 1001+: catalog mode
    with pytest.raises(InvalidEvent, match="unknown schema id 1003: the schema registry"):
        codec.decode(catalog_value)


def test_registry_codec_reads_newer_writers_with_the_local_schema(
    registry: RegistryProxy,
) -> None:
    newer = default_catalog().schema("sluice.config.RuntimeConfigEntry", 2)
    newer["fields"].append({"name": "note", "type": ["null", "string"], "default": None})
    schema_id = _client(registry.url).register_schema(
        "config.runtime-value", Schema(json.dumps(newer), "AVRO")
    )
    body = io.BytesIO()
    record = {**SAMPLES["config.runtime"], "note": "a field of a newer writer"}
    fastavro.schemaless_writer(body, fastavro.parse_schema(newer), record)
    value = b"\x00" + schema_id.to_bytes(4, "big") + body.getvalue()
    decoded = _registry_codec(registry.url).decode(value)
    assert decoded.subject == "sluice.config.RuntimeConfigEntry"
    assert decoded.version is None  # not one of the checked-in versions
    assert decoded.record == SAMPLES["config.runtime"]


def test_registry_schema_outside_the_catalog_is_invalid(registry: RegistryProxy) -> None:
    foreign = {"type": "record", "name": "Foreign", "fields": [{"name": "a", "type": "int"}]}
    schema_id = _client(registry.url).register_schema(
        "x-value", Schema(json.dumps(foreign), "AVRO")
    )
    with pytest.raises(InvalidEvent, match="which no subject in the schema catalog defines"):
        _registry_codec(registry.url).decode(b"\x00" + schema_id.to_bytes(4, "big") + b"\x02")


def test_registry_refusing_an_incompatible_schema_is_permanent(registry: RegistryProxy) -> None:
    older = {
        "type": "record",
        "name": "OrderEvent",
        "namespace": "sluice.orders",
        "fields": [{"name": "eventId", "type": "string"}],
    }
    _client(registry.url).register_schema("orders-value", Schema(json.dumps(older), "AVRO"))
    with pytest.raises(PermanentError, match="incompatible") as caught:
        _registry_codec(registry.url).encode("orders", ORDER_CREATED)
    assert "(HTTP 409)" in str(caught.value)


def test_registry_errors_are_transient(registry: RegistryProxy) -> None:
    codec = _registry_codec(registry.url)
    registry.fail_with = 503
    with pytest.raises(TransientError, match=r"schema registry failed registering .*HTTP 503"):
        codec.encode("orders", ORDER_CREATED)
    with pytest.raises(TransientError, match="fetching schema id 7"):
        codec.decode(b"\x00\x00\x00\x00\x07\x00")
    registry.fail_with = None
    assert codec.decode(codec.encode("orders", ORDER_CREATED)).record == ORDER_CREATED


def test_unreachable_registry_is_transient() -> None:
    with RegistryProxy("http://127.0.0.1:1") as closed:
        url = closed.url
    codec = _registry_codec(url)
    with pytest.raises(
        TransientError, match="schema registry unreachable registering orders-value"
    ):
        codec.encode("orders", ORDER_CREATED)


def test_prepare_registers_every_topic_up_front(registry: RegistryProxy) -> None:
    codec = _registry_codec(registry.url)
    codec.prepare()
    with_schema = {name for name, spec in TOPICS.items() if spec.subject is not None}
    assert set(registry.subjects()) == {f"{name}-value" for name in with_schema}
    posts = len(_posts(registry))
    for topic, record in SAMPLES.items():
        codec.encode(topic, record)
    assert len(_posts(registry)) == posts


def test_prepare_in_catalog_mode_needs_no_network() -> None:
    make_codec(None).prepare()
