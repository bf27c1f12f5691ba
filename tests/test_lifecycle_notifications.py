"""Lifecycle events → notification requests, pure: the rules, the channel choice, the ids.

The order records are the join's own (``streams.domain.orders.step`` over the inputs of
tests/test_orders_domain.py); the invoice records are the normaliser's, from Stripe
webhook bodies shaped like real ones. Every request is encoded with the codec and its
``data`` checked by the template it names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from base.errors import ConfigError, InvalidEvent
from base.settings import Settings, load_settings
from schemas.codec import make_codec
from schemas.notifications import Channel, notification_id_for_cause
from schemas.notify_templates import default_catalog
from streams.domain.lifecycle_notifications import (
    INVOICE_TOPIC,
    LIFECYCLE_TOPIC,
    UserChannels,
    cause_of,
    choose_channel,
    load_rules,
    notification_request,
)
from streams.domain.normalise import normalise
from tests.payloads.stripe import stripe_event
from tests.test_normalise_stripe import raw_record
from tests.test_orders_domain import FAILED, SUCCEEDED, created, refund, run

CODEC = make_codec(None)
CATALOG = default_catalog()
DEFAULT = str(Settings.model_fields["notify_on"].default)
RULES = load_rules(DEFAULT, CATALOG)
ALL = frozenset(Channel)


def lifecycle(inputs: list[tuple[str, Mapping[str, Any]]], event_type: str) -> dict[str, Any]:
    """The last ``event_type`` record the join emitted for ``inputs``."""
    _, _, emits = run([("orders", created()), *inputs])
    found = [e.record for e in emits if e.record["eventType"] == event_type]
    assert found, f"no {event_type} in {[e.record['eventType'] for e in emits]}"
    return found[-1]


def invoice(event_type: str = "invoice.payment_failed", **fields: Any) -> dict[str, Any]:
    [event] = [
        e
        for e in normalise(raw_record(stripe_event(event_type, **fields))).events
        if e.topic == INVOICE_TOPIC
    ]
    return event.record


def request_for(topic: str, record: Mapping[str, Any], channel: Channel) -> dict[str, Any]:
    cause = cause_of(topic, record, RULES)
    assert cause is not None
    request = notification_request(cause, channel, CATALOG)
    CODEC.encode("notifications.requested", request)  # fits the Avro contract
    # Its data is what the named template checks and renders.
    template = CATALOG.get(request["template"], request["channel"])
    data = json.loads(request["data"])
    assert template.check(data)
    template.render(data)
    return request


# -- each mapped event ------------------------------------------------------------------


@pytest.mark.parametrize("channel", list(Channel))
def test_order_paid_asks_for_order_paid_to_the_order_user(channel: Channel) -> None:
    paid = lifecycle([SUCCEEDED], "order.paid")
    request = request_for(LIFECYCLE_TOPIC, paid, channel)
    assert request["template"] == "ORDER_PAID"
    assert request["to"] == "u1"
    assert request["channel"] == channel
    assert request["causeEventId"] == paid["eventId"]
    assert request["notificationId"] == request["eventId"]
    assert request["notificationId"] == notification_id_for_cause(
        paid["eventId"], "ORDER_PAID", channel
    )
    assert json.loads(request["data"]) == {
        "order_id": "o1",
        "amount_minor": 2500,
        "currency": "USD",
    }
    assert request["eventType"] == "notification.requested"
    assert request["idempotencyKey"] is None


def test_payment_failed_carries_the_reason_where_the_template_shows_it() -> None:
    failed = lifecycle([FAILED], "order.payment_failed")
    email = request_for(LIFECYCLE_TOPIC, failed, Channel.EMAIL)
    assert email["template"] == "PAYMENT_FAILED"
    assert json.loads(email["data"]) == {
        "order_id": "o1",
        "amount_minor": 2500,
        "currency": "USD",
        "reason": "card_declined",
    }
    # The SMS template declares no reason: its data leaves it out.
    assert "reason" not in json.loads(request_for(LIFECYCLE_TOPIC, failed, Channel.SMS)["data"])


def test_partial_and_full_refunds_each_ask_for_refund_issued_with_that_refund() -> None:
    partial = lifecycle([SUCCEEDED, refund("r1", "re_1", 1000)], "order.refunded")
    assert partial["status"] == "PARTIALLY_REFUNDED"
    full = lifecycle(
        [SUCCEEDED, refund("r1", "re_1", 1000), refund("r2", "re_2", 1500)], "order.refunded"
    )
    assert full["status"] == "REFUNDED"
    for record, amount in ((partial, 1000), (full, 1500)):
        request = request_for(LIFECYCLE_TOPIC, record, Channel.EMAIL)
        assert request["template"] == "REFUND_ISSUED"
        assert json.loads(request["data"])["amount_minor"] == amount


def test_a_refund_dropping_out_is_not_a_refund_issued() -> None:
    dropped = lifecycle(
        [SUCCEEDED, refund("r1", "re_1", 1000), refund("r1f", "re_1", 1000, status="failed")],
        "order.refunded",
    )
    assert dropped["reason"] == "refund re_1 failed"
    assert cause_of(LIFECYCLE_TOPIC, dropped, RULES) is None


@pytest.mark.parametrize("channel", list(Channel))
def test_invoice_payment_failed_asks_for_its_template_to_the_invoice_user(
    channel: Channel,
) -> None:
    record = invoice(user_id="user_9", amount=1999, currency="eur")
    request = request_for(INVOICE_TOPIC, record, channel)
    assert request["template"] == "INVOICE_PAYMENT_FAILED"
    assert request["to"] == "user_9"
    assert request["causeEventId"] == record["eventId"]
    data = json.loads(request["data"])
    assert data == {
        "invoice_id": record["providerObjectId"],
        "amount_minor": 1999,
        "currency": "EUR",
    }


def test_an_invoice_without_a_user_is_a_cause_without_recipient() -> None:
    cause = cause_of(INVOICE_TOPIC, invoice(user_id=None), RULES)
    assert cause is not None
    assert cause.user_id is None
    with pytest.raises(ValueError, match="no user"):
        notification_request(cause, Channel.EMAIL, CATALOG)


# -- what does not map ------------------------------------------------------------------


@pytest.mark.parametrize(
    "event_type", ["order.pending_payment", "order.cancelled", "order.payment_mismatch"]
)
def test_unmapped_order_events_ask_for_nothing(event_type: str) -> None:
    inputs: dict[str, list[tuple[str, Mapping[str, Any]]]] = {
        "order.pending_payment": [],
        "order.cancelled": [
            ("orders", {**created(), "eventId": "c", "eventType": "order.cancelled"}),
        ],
        "order.payment_mismatch": [
            ("billing.payment.succeeded", {**SUCCEEDED[1], "amountMinor": 1}),
        ],
    }
    record = lifecycle(inputs[event_type], event_type)
    assert cause_of(LIFECYCLE_TOPIC, record, RULES) is None


@pytest.mark.parametrize("event_type", ["invoice.paid", "invoice.finalized"])
def test_other_invoice_events_ask_for_nothing(event_type: str) -> None:
    assert cause_of(INVOICE_TOPIC, invoice(event_type), RULES) is None


def test_an_empty_setting_maps_nothing() -> None:
    rules = load_rules("", CATALOG)
    assert cause_of(LIFECYCLE_TOPIC, lifecycle([SUCCEEDED], "order.paid"), rules) is None
    assert cause_of(INVOICE_TOPIC, invoice(), rules) is None
    assert rules.order_types() == frozenset()


def test_a_mapped_event_without_an_amount_is_invalid() -> None:
    paid = {**lifecycle([SUCCEEDED], "order.paid"), "amountMinor": None}
    with pytest.raises(InvalidEvent, match="amountMinor"):
        cause_of(LIFECYCLE_TOPIC, paid, RULES)


# -- deterministic ids ------------------------------------------------------------------


def test_every_copy_of_a_cause_asks_for_the_same_notification() -> None:
    first = request_for(LIFECYCLE_TOPIC, lifecycle([SUCCEEDED], "order.paid"), Channel.EMAIL)
    # The join replayed (a redelivered payment) derives the same lifecycle record id.
    again = request_for(LIFECYCLE_TOPIC, lifecycle([SUCCEEDED], "order.paid"), Channel.EMAIL)
    assert first == again
    sms = request_for(LIFECYCLE_TOPIC, lifecycle([SUCCEEDED], "order.paid"), Channel.SMS)
    assert sms["notificationId"] != first["notificationId"]
    other = lifecycle(
        [("billing.payment.succeeded", {**SUCCEEDED[1], "eventId": "pay-ok-2"})], "order.paid"
    )
    assert (
        request_for(LIFECYCLE_TOPIC, other, Channel.EMAIL)["notificationId"]
        != first["notificationId"]
    )


# -- the channel ------------------------------------------------------------------------


def contact(
    *preferred: str, email: bool = True, phone: bool = True, push: bool = True
) -> UserChannels:
    return UserChannels(preferred, has_email=email, has_phone=phone, has_push=push)


def test_no_contact_row_means_email() -> None:
    assert choose_channel(None, ALL) is Channel.EMAIL


def test_the_first_preferred_channel_with_a_contact() -> None:
    assert choose_channel(contact("SMS", "EMAIL"), ALL) is Channel.SMS
    assert choose_channel(contact("SMS", "PUSH", phone=False), ALL) is Channel.PUSH
    assert choose_channel(contact("push"), ALL) is Channel.PUSH  # case does not matter


def test_without_a_usable_preference_the_first_contact_the_user_has() -> None:
    assert choose_channel(contact(), ALL) is Channel.EMAIL
    assert choose_channel(contact("PUSH", email=False, push=False), ALL) is Channel.SMS
    assert choose_channel(contact("FAX", email=False, phone=False), ALL) is Channel.PUSH


def test_no_contact_at_all_means_email() -> None:
    assert (
        choose_channel(contact("SMS", email=False, phone=False, push=False), ALL) is Channel.EMAIL
    )


def test_only_channels_the_template_has() -> None:
    assert choose_channel(contact("SMS"), frozenset({Channel.EMAIL, Channel.PUSH})) is Channel.EMAIL


# -- the setting ------------------------------------------------------------------------


def test_the_default_maps_the_issue_events() -> None:
    assert dict(RULES.templates) == {
        "order.paid": "ORDER_PAID",
        "order.payment_failed": "PAYMENT_FAILED",
        "order.refunded": "REFUND_ISSUED",
        "invoice.payment_failed": "INVOICE_PAYMENT_FAILED",
    }
    assert RULES.channels["ORDER_PAID"] == ALL


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("order.paid=ORDER_PAYED", "unknown template 'ORDER_PAYED'"),
        ("order.shipped=ORDER_PAID", "unknown event type 'order.shipped'"),
        ("order.paid", "'order.paid' is not event=TEMPLATE"),
        ("order.paid=ORDER_PAID,order.paid=PAYMENT_FAILED", "order.paid is mapped twice"),
        ("order.paid=INVOICE_PAYMENT_FAILED", "needs invoice_id, which order.paid does not"),
        ("invoice.payment_failed=ORDER_PAID", "needs order_id, which invoice.payment_failed"),
    ],
)
def test_a_bad_setting_is_a_config_error_naming_it(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_rules(text, CATALOG)
    assert "SLUICE_NOTIFY_ON" in str(caught.value)
    assert message in str(caught.value)


def test_every_problem_is_one_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load_rules("order.paid=NOPE, order.nope=ORDER_PAID", CATALOG)
    assert len(str(caught.value).splitlines()) == 2


def test_the_worker_does_not_start_with_an_unknown_template(tmp_path: Path) -> None:
    from streams.app import create_worker

    env = {
        "SLUICE_STATE_DIR": str(tmp_path),
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "DATABASE_URL": "postgresql://127.0.0.1:1/none",
        "SLUICE_NOTIFY_ON": "order.paid=ORDER_PAID,order.refunded=REFUND_SENT",
    }
    with pytest.raises(ConfigError, match=r"SLUICE_NOTIFY_ON: .*unknown template 'REFUND_SENT'"):
        create_worker(load_settings(env))
