"""Kafka headers are built in one place (``schemas.headers``), with the content type the
topic catalog declares, and every producer uses it."""

from __future__ import annotations

import re

import pytest

from schemas.catalog import TOPICS, UnknownTopic, retry_topic_spec
from schemas.headers import record_headers

ENVELOPE = {"eventType": "billing.payment.succeeded", "eventId": "e-1", "correlationId": "c-1"}

#: The content types on the wire (tests and operators' kcat filters rely on them).
WIRE = {
    "webhooks.stripe": "application/vnd.sluice.raw-webhook+avro",
    "webhooks.razorpay": "application/vnd.sluice.raw-webhook+avro",
    "billing.payment.succeeded": "application/vnd.sluice.billing-event+avro",
    "billing.subscription.updated": "application/vnd.sluice.billing-event+avro",
    "orders": "application/vnd.sluice.order-event+avro",
    "orders.lifecycle": "application/vnd.sluice.order-lifecycle+avro",
    "commands.payments": "application/vnd.sluice.payment-command+avro",
    "commands.stripe": "application/vnd.sluice.payment-command+avro",
    "payments.setup": "application/vnd.sluice.payment-setup+avro",
    "replies": "application/vnd.sluice.reply+avro",
    "commands.inventory.release": "application/vnd.sluice.inventory-release+avro",
    "dlq": "application/vnd.sluice.dead-letter+avro",
    "alerts": "application/json",
}


@pytest.mark.parametrize(("topic", "content_type"), WIRE.items())
def test_content_types_on_the_wire(topic: str, content_type: str) -> None:
    assert TOPICS[topic].content_type == content_type
    assert dict(record_headers(topic, ENVELOPE))["content-type"] == content_type.encode()


def test_every_topic_with_a_schema_declares_an_avro_content_type() -> None:
    for spec in TOPICS.values():
        if spec.subject is not None:
            assert spec.content_type is not None, spec.name
            assert re.fullmatch(r"application/vnd\.sluice\.[a-z-]+\+avro", spec.content_type)


def test_retry_topics_declare_none_they_keep_the_originals_headers() -> None:
    assert retry_topic_spec(5).content_type is None
    assert [name for name, _ in record_headers("retry.5s", ENVELOPE)] == [
        "event-type",
        "event-id",
        "correlation-id",
    ]


def test_headers_carry_the_envelope_and_the_trace_in_order() -> None:
    assert record_headers("billing.payment.succeeded", ENVELOPE, traceparent="00-ab-cd-01") == [
        ("event-type", b"billing.payment.succeeded"),
        ("event-id", b"e-1"),
        ("correlation-id", b"c-1"),
        ("traceparent", b"00-ab-cd-01"),
        ("content-type", b"application/vnd.sluice.billing-event+avro"),
    ]
    assert "traceparent" not in dict(record_headers("orders", ENVELOPE, traceparent=None))


def test_an_unknown_topic_is_a_programming_error() -> None:
    with pytest.raises(UnknownTopic):
        record_headers("no.such.topic", ENVELOPE)
