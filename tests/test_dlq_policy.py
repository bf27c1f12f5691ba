"""Unit tests for ``streams.domain.dlq``: dead-letter records, alerts, replay, the guard."""

from __future__ import annotations

import json
from typing import Any

import pytest

from base.errors import SluiceError
from schemas.codec import make_codec
from streams.domain.dlq import (
    KEY_BYTES_HEADER,
    REPLAY_HEADER,
    DeadLetterGuard,
    TooManyDeadLetters,
    alert_record,
    dead_letter_record,
    encode_alert,
    replay_target,
)
from streams.domain.retry import RETRY_HEADER_NAMES, RetryHeaders, merge_headers

NOW_MS = 1_700_000_000_000
VALUE = b"\x00\x00\x00\x03\xe9\x02garbage\xff"
ORIGINAL_HEADERS: list[tuple[str, bytes]] = [
    ("event-type", b"billing.payment.succeeded"),
    ("correlation-id", b"corr-from-header"),
    ("traceparent", b"00-ab-cd-01"),
]
RETRIED_HEADERS = merge_headers(
    ORIGINAL_HEADERS,
    RetryHeaders(
        attempt=4,
        due_at_ms=NOW_MS - 1,
        origin="billing.payment.succeeded",
        reason="Postgres timed out",
        first_failed_at_ms=NOW_MS - 2_135_000,
        origin_partition=2,
        origin_offset=18_446_744,
    ),
)


def _record(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "origin_topic": "billing.payment.succeeded",
        "origin_partition": 2,
        "origin_offset": 18_446_744,
        "key": b"ord_123",
        "value": VALUE,
        "headers": RETRIED_HEADERS,
        "reason": "Postgres timed out",
        "error_class": "TransientError",
        "attempts": 5,
        "now_ms": NOW_MS,
        "correlation_id": "corr-1",
    }
    kwargs.update(overrides)
    return dead_letter_record(**kwargs)


# -- dead-letter record ---------------------------------------------------------------


def test_dead_letter_record_encodes_with_the_real_codec() -> None:
    codec = make_codec(None)
    record = _record()
    decoded = codec.decode(codec.encode("dlq", record), topic="dlq")
    assert decoded.record["originTopic"] == "billing.payment.succeeded"
    assert decoded.record["value"] == VALUE
    assert decoded.record["originHeaders"]["sluice-attempt"] == b"4"
    # the codec handles the other shapes too: no key, no headers, no correlation id
    codec.encode("dlq", _record(key=None, headers=None, correlation_id=None))


def test_dead_letter_record_fields() -> None:
    record = _record()
    assert record["eventType"] == "dlq.record"
    assert record["version"] == 1
    assert record["source"] == "sluice.streams"
    assert record["occurredAt"] == record["failedAt"] == NOW_MS
    assert record["correlationId"] == "corr-1"
    assert record["key"] == "ord_123"
    assert record["reason"] == "Postgres timed out"
    assert record["errorClass"] == "TransientError"
    assert record["attempts"] == 5
    assert record["originHeaders"]["traceparent"] == b"00-ab-cd-01"


def test_event_id_is_deterministic_per_origin_record() -> None:
    first = _record()
    assert _record(reason="another try", now_ms=NOW_MS + 5)["eventId"] == first["eventId"]
    assert _record(origin_offset=18_446_745)["eventId"] != first["eventId"]
    assert _record(origin_partition=3)["eventId"] != first["eventId"]
    assert _record(origin_topic="orders")["eventId"] != first["eventId"]


def test_correlation_id_falls_back_to_header_then_event_id() -> None:
    assert _record(correlation_id=None)["correlationId"] == "corr-from-header"
    bare = _record(correlation_id=None, headers=[])
    assert bare["correlationId"] == bare["eventId"]


def test_reason_is_cleaned_again() -> None:
    record = _record(reason="dsn postgresql://u:hunter2@db/x\nfailed " + "y" * 900)
    assert "hunter2" not in record["reason"]
    assert "\n" not in record["reason"]
    assert len(record["reason"]) <= 500


def test_non_utf8_key_survives_exactly() -> None:
    codec = make_codec(None)
    record = _record(key=b"\xffkey")
    codec.encode("dlq", record)
    assert record["originHeaders"][KEY_BYTES_HEADER] == b"\xffkey"
    assert replay_target(record).key == b"\xffkey"


@pytest.mark.parametrize(
    "overrides",
    [
        {"origin_partition": -1},
        {"origin_offset": -1},
        {"attempts": 0},
    ],
)
def test_dead_letter_record_rejects_programming_errors(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        _record(**overrides)


# -- alert ----------------------------------------------------------------------------


def test_alert_record() -> None:
    dead = _record()
    alert = alert_record(dead)
    assert alert["eventType"] == "alert.retries_exhausted"
    assert alert["dlqEventId"] == dead["eventId"]
    assert alert["eventId"] != dead["eventId"]
    assert alert["eventId"] == alert_record(_record())["eventId"]  # deterministic
    assert alert["occurredAt"] == NOW_MS
    assert alert["origin"] == "billing.payment.succeeded"
    assert alert["reason"] == "Postgres timed out"
    assert alert["attempts"] == 5
    assert json.loads(encode_alert(alert)) == alert
    assert encode_alert(alert) == encode_alert(alert_record(_record()))


# -- replay ---------------------------------------------------------------------------


def test_replay_target_strips_retry_headers_and_marks_the_replay() -> None:
    codec = make_codec(None)
    decoded = codec.decode(codec.encode("dlq", _record()), topic="dlq").record
    target = replay_target(decoded)
    assert target.topic == "billing.payment.succeeded"
    assert target.key == b"ord_123"
    assert target.value == VALUE
    assert target.headers == [*ORIGINAL_HEADERS, (REPLAY_HEADER, b"1")]
    assert not {name for name, _ in target.headers} & RETRY_HEADER_NAMES
    topic, key, value, headers = target  # a plain tuple for callers that unpack
    assert (topic, key, value, headers) == tuple(target)


def test_dead_letter_of_unknown_origin_is_not_replayable() -> None:
    record = _record(origin_topic="retry.5s", headers=ORIGINAL_HEADERS)
    make_codec(None).encode("dlq", record)
    with pytest.raises(ValueError, match="origin is unknown"):
        replay_target(record)


def test_replaying_a_replay_keeps_one_replay_header() -> None:
    replayed_headers = replay_target(_record()).headers
    again = replay_target(_record(headers=replayed_headers, key=None))
    assert again.key is None
    assert [name for name, _ in again.headers].count(REPLAY_HEADER) == 1


# -- guard ----------------------------------------------------------------------------


def test_guard_trips_on_consecutive_dead_letters() -> None:
    guard = DeadLetterGuard(max_consecutive=3, max_ratio=1.0, window=10)
    for _ in range(3):
        guard.record(True)
    guard.record(False)  # a success resets the run
    for _ in range(3):
        guard.record(True)
    assert guard.consecutive == 3
    with pytest.raises(TooManyDeadLetters, match="4 records in a row"):
        guard.record(True)


def test_guard_trips_on_ratio_over_the_window() -> None:
    guard = DeadLetterGuard(max_consecutive=100, max_ratio=0.5, window=10)
    for dead in (False, True) * 5:  # 50 %: at the limit, not over it
        guard.record(dead)
    assert guard.ratio == 0.5
    with pytest.raises(TooManyDeadLetters, match="6 of the last 10"):
        guard.record(True)  # a success slides out, a dead letter comes in


def test_guard_ratio_slides() -> None:
    guard = DeadLetterGuard(max_consecutive=100, max_ratio=0.5, window=4)
    for dead in (False, False, True, True):
        guard.record(dead)
    for _ in range(10):  # old dead letters slide out as successes come in
        guard.record(False)
    assert guard.ratio == 0.0
    guard.record(True)
    guard.record(True)
    assert guard.ratio == 0.5
    with pytest.raises(TooManyDeadLetters):
        guard.record(True)


def test_guard_waits_for_the_minimum_before_judging_the_ratio() -> None:
    guard = DeadLetterGuard(max_consecutive=1000, max_ratio=0.5, window=1000)
    for _ in range(99):  # window / 10 = 100 records are needed
        guard.record(True)
    assert guard.ratio == 1.0
    with pytest.raises(TooManyDeadLetters, match="100 of the last 100"):
        guard.record(True)


def test_guard_defaults_follow_arroyo_style() -> None:
    guard = DeadLetterGuard()
    for _ in range(100):
        guard.record(False)
        guard.record(True)
    assert guard.consecutive == 1
    assert guard.ratio == 0.5
    assert issubclass(TooManyDeadLetters, SluiceError)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_consecutive": 0}, {"max_ratio": 0.0}, {"max_ratio": 1.5}, {"window": 0}],
)
def test_guard_parameters_are_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        DeadLetterGuard(**kwargs)
