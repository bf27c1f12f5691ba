"""The domain event envelope and its data checks (pure: no broker, no HTTP)."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastavro.validation import validate

from base.errors import InvalidEvent
from ingress.domain_events import (
    EVENT_ROUTES,
    MAX_AMOUNT_MINOR,
    DomainEventParser,
    EventRoute,
    parse_json,
)
from schemas.catalog import ORDER_EVENT_SUBJECT, default_catalog, topic_spec
from schemas.codec import make_codec

PARSER = DomainEventParser()
CODEC = make_codec(None)
NOW_MS = 1_714_564_800_000  # 2024-05-01T12:00:00Z


def _created(**data: Any) -> dict[str, Any]:
    return {
        "eventType": "order.created",
        "source": "shop",
        "data": {
            "orderId": "ord_1",
            "userId": "user_1",
            "amount": 1999,
            "currency": "usd",
            "items": [{"productId": "sku_1", "quantity": 2}],
            **data,
        },
    }


def _cancelled() -> dict[str, Any]:
    return {
        "eventType": "order.cancelled",
        "source": "shop",
        "data": {"orderId": "ord_1", "reason": "customer changed their mind"},
    }


def _parse(body: Any) -> Any:
    return PARSER.parse(body, correlation_id="req-1", now_ms=NOW_MS, new_event_id=lambda: "gen-1")


def test_order_created_becomes_an_orders_record_keyed_by_order_id() -> None:
    event = _parse(_created(currency="EUR", paymentProvider="Stripe"))

    assert (event.topic, event.key, event.event_id) == ("orders", "ord_1", "gen-1")
    assert event.record == {
        "eventId": "gen-1",
        "eventType": "order.created",
        "version": default_catalog().latest_version(ORDER_EVENT_SUBJECT),
        "occurredAt": NOW_MS,
        "correlationId": "req-1",
        "source": "shop",
        "data": {
            "orderId": "ord_1",
            "userId": "user_1",
            "amount": 1999,
            "currency": "eur",  # normalised
            "items": [{"productId": "sku_1", "quantity": 2}],
            "paymentProvider": "stripe",  # normalised
        },
    }
    assert CODEC.decode(CODEC.encode("orders", event.record)).record == event.record


def test_optional_data_fields_get_their_defaults() -> None:
    assert _parse(_created()).record["data"]["paymentProvider"] is None


def test_order_cancelled() -> None:
    event = _parse(_cancelled())

    assert (event.topic, event.key) == ("orders", "ord_1")
    assert event.record["data"] == {"orderId": "ord_1", "reason": "customer changed their mind"}
    assert CODEC.decode(CODEC.encode("orders", event.record)).record == event.record


def test_envelope_fields_given_by_the_caller_are_kept() -> None:
    body = _created()
    body |= {"eventId": "evt-42", "correlationId": "chain.7", "version": 1}
    body["occurredAt"] = "2024-05-01T14:00:00.250+02:00"

    record = _parse(body).record

    assert record["eventId"] == "evt-42"
    assert record["correlationId"] == "chain.7"
    assert record["occurredAt"] == NOW_MS + 250
    assert record["version"] == 1


def test_occurred_at_as_epoch_millis() -> None:
    assert _parse(_created() | {"occurredAt": 1234}).record["occurredAt"] == 1234


def test_occurred_at_z_suffix() -> None:
    body = _created() | {"occurredAt": "2024-05-01T12:00:00Z"}
    assert _parse(body).record["occurredAt"] == NOW_MS


def test_event_id_is_generated_per_event_by_default() -> None:
    first = PARSER.parse(_created(), correlation_id="c", now_ms=NOW_MS)
    second = PARSER.parse(_created(), correlation_id="c", now_ms=NOW_MS)
    assert first.event_id != second.event_id
    assert len(first.event_id) == 36


Mutation = Callable[[dict[str, Any]], object]


def _set(path: str, value: Any) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = body
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[last] = value

    return mutate


def _drop(path: str) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = body
        for part in parents:
            target = target[part]
        del target[last]

    return mutate


INVALID: dict[str, tuple[Mutation, str]] = {
    "unknown event type": (_set("eventType", "order.shipped"), "eventType"),
    "event type missing": (_drop("eventType"), "eventType"),
    "event type not a string": (_set("eventType", 7), "eventType"),
    "envelope typo": (_set("evenType", "order.created"), "evenType"),
    "source missing": (_drop("source"), "source"),
    "source blank": (_set("source", "  "), "source"),
    "data missing": (_drop("data"), "data"),
    "data not an object": (_set("data", [1]), "data"),
    "orderId missing": (_drop("data.orderId"), "data.orderId"),
    "orderId empty": (_set("data.orderId", ""), "data.orderId"),
    "userId blank": (_set("data.userId", "   "), "data.userId"),
    "amount missing": (_drop("data.amount"), "data.amount"),
    "amount negative": (_set("data.amount", -5), "data.amount"),
    "amount zero": (_set("data.amount", 0), "data.amount"),
    "amount float": (_set("data.amount", 19.99), "data.amount"),
    "amount whole float": (_set("data.amount", 1999.0), "data.amount"),
    "amount string": (_set("data.amount", "1999"), "data.amount"),
    "amount boolean": (_set("data.amount", True), "data.amount"),
    "amount beyond a long": (_set("data.amount", 2**63), "data.amount"),
    "amount above the maximum": (_set("data.amount", MAX_AMOUNT_MINOR + 1), "data.amount"),
    "amount the largest long": (_set("data.amount", 2**63 - 1), "data.amount"),
    "orderId with NUL": (_set("data.orderId", "ord\x00x"), "data.orderId"),
    "orderId with escape": (_set("data.orderId", "ord\x1b[2J"), "data.orderId"),
    "orderId with newline": (_set("data.orderId", "ord\nx"), "data.orderId"),
    "orderId with DEL": (_set("data.orderId", "ord\x7f"), "data.orderId"),
    "orderId too long": (_set("data.orderId", "o" * 257), "data.orderId"),
    "userId with NUL": (_set("data.userId", "\x00"), "data.userId"),
    "productId with NUL": (_set("data.items.0.productId", "p\x00"), "data.items[0].productId"),
    "source with NUL": (_set("source", "shop\x00"), "source"),
    "currency too long": (_set("data.currency", "usdx"), "data.currency"),
    "currency not letters": (_set("data.currency", "us1"), "data.currency"),
    "currency not a string": (_set("data.currency", 840), "data.currency"),
    "items empty": (_set("data.items", []), "data.items"),
    "items not an array": (_set("data.items", {"productId": "x"}), "data.items"),
    "quantity zero": (_set("data.items.0.quantity", 0), "data.items[0].quantity"),
    "quantity string": (_set("data.items.0.quantity", "2"), "data.items[0].quantity"),
    "quantity beyond an int": (_set("data.items.0.quantity", 2**31), "data.items[0].quantity"),
    "item typo": (_set("data.items.0.qty", 1), "data.items[0].qty"),
    "data typo": (_set("data.amout", 1), "data.amout"),
    "unknown provider": (_set("data.paymentProvider", "paypal"), "data.paymentProvider"),
    "event id with spaces": (_set("eventId", "my event"), "eventId"),
    "event id not a string": (_set("eventId", 12), "eventId"),
    "correlation id too long": (_set("correlationId", "c" * 129), "correlationId"),
    "version from the future": (_set("version", 99), "version"),
    "version not an int": (_set("version", "1"), "version"),
    "occurredAt without offset": (_set("occurredAt", "2024-05-01T12:00:00"), "occurredAt"),
    "occurredAt garbage": (_set("occurredAt", "yesterday"), "occurredAt"),
    "occurredAt in seconds*1e6": (_set("occurredAt", 10**18), "occurredAt"),
    "occurredAt float": (_set("occurredAt", 1.5), "occurredAt"),
}


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_invalid_envelope_or_data_names_the_field(case: str) -> None:
    mutate, field = INVALID[case]
    body = copy.deepcopy(_created())
    mutate(body)

    with pytest.raises(InvalidEvent) as caught:
        _parse(body)

    assert caught.value.field == field
    assert field in str(caught.value)


def test_data_of_another_event_type_is_refused() -> None:
    """order.cancelled with order.created's data fits the union, but not its branch."""
    body = _created() | {"eventType": "order.cancelled"}

    with pytest.raises(InvalidEvent) as caught:
        _parse(body)

    assert caught.value.field is not None
    assert caught.value.field.startswith("data.")


def test_every_unknown_field_is_named() -> None:
    body = _created() | {"eventTyp": "x", "sorce": "y"}

    with pytest.raises(InvalidEvent, match="eventTyp, sorce"):
        _parse(body)


@pytest.mark.parametrize("body", [[], "order", 1, None], ids=["array", "string", "number", "null"])
def test_body_must_be_an_object(body: Any) -> None:
    with pytest.raises(InvalidEvent, match="JSON object"):
        _parse(body)


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b'{"a": NaN}', b'{"a": Infinity}', b"\xff\xfe{", b"[" * 100_000],
    ids=["empty", "truncated", "NaN", "Infinity", "not UTF-8", "deeply nested"],
)
def test_malformed_json(raw: bytes) -> None:
    with pytest.raises(InvalidEvent, match="malformed JSON"):
        parse_json(raw)


def test_the_largest_amount_is_accepted() -> None:
    event = _parse(_created(amount=MAX_AMOUNT_MINOR))
    assert event.record["data"]["amount"] == MAX_AMOUNT_MINOR == 99_999_999


def test_a_nul_anywhere_in_the_body_is_refused_by_path() -> None:
    """PostgreSQL text cannot hold U+0000: a NUL in free text (a cancel reason) would be
    accepted, then dead-lettered by the projection. JSON can only carry it escaped."""
    body = _cancelled()
    body["data"]["reason"] = "changed \x00 mind"
    raw = json.dumps(body).encode()
    assert b"\\u0000" in raw

    with pytest.raises(InvalidEvent) as caught:
        parse_json(raw)

    assert caught.value.field == "data.reason"
    assert "data.reason" in str(caught.value)


def test_an_escaped_backslash_before_u0000_is_no_nul() -> None:
    assert parse_json(b'{"reason": "C:\\\\u0000"}') == {"reason": "C:\\u0000"}


def test_union_branches_are_distinguishable() -> None:
    """fastavro writes a union value with the first branch it fits: every event type's
    data must fit its own branch only (of its topic's schema), or it would be written
    as another type."""
    samples = {
        "order.created": _parse(_created()).record["data"],
        "order.cancelled": _parse(_cancelled()).record["data"],
        "user.contact_updated": _parse(
            {"eventType": "user.contact_updated", "source": "accounts", "data": {"userId": "u"}}
        ).record["data"],
    }
    assert set(samples) == set(EVENT_ROUTES)
    for event_type, data in samples.items():
        topic = EVENT_ROUTES[event_type].topic
        subject = topic_spec(topic).subject
        assert subject is not None
        named = default_catalog().parsed(subject, default_catalog().latest_version(subject))[
            "__named_schemas"
        ]
        fits = [
            route.branch
            for route in EVENT_ROUTES.values()
            if route.topic == topic and validate(data, named[route.branch], raise_errors=False)
        ]
        assert fits == [EVENT_ROUTES[event_type].branch]


def test_a_route_to_a_branch_the_schema_lacks_fails_at_build_time() -> None:
    with pytest.raises(ValueError, match="not a branch"):
        DomainEventParser(routes={"order.shipped": EventRoute("orders", "sluice.orders.Nope")})


def test_validation_is_fast() -> None:
    body = _created()
    started = time.perf_counter()
    for _ in range(1000):
        _parse(body)
    # Generous (tens of microseconds in practice): it runs on every request.
    assert (time.perf_counter() - started) / 1000 < 0.001
