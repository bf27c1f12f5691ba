"""Unit tests for ``streams.domain.retry``: classification, schedule, headers. No event loop."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from base.errors import (
    ConfigError,
    Held,
    InvalidEvent,
    PermanentError,
    TransientError,
)
from base.settings import load_settings
from schemas.catalog import RETRY_DELAYS, retry_topic_name
from streams.app import retry_policy
from streams.domain.dlq import TooManyDeadLetters
from streams.domain.retry import (
    ALERT_PERMANENT_FAILURE,
    ATTEMPT_HEADER,
    DUE_AT_HEADER,
    FIRST_FAILED_AT_HEADER,
    ORIGIN_HEADER,
    REASON_HEADER,
    REASON_MAX_CHARS,
    DeadLetter,
    Retry,
    RetryHeaders,
    RetryPolicy,
    classify,
    classify_http_status,
    clean_reason,
    decide_failure,
    due_in,
    failure_reason,
    merge_headers,
    parse_retry_after,
)

NOW = 1_700_000_000.0
ORIGIN = "billing.payment.succeeded"
POLICY = RetryPolicy()  # 5s, 30s, 5m, 30m; 4 retries; jitter 0.2


def _const(value: float) -> Callable[[], float]:
    return lambda: value


def _never() -> float:
    raise AssertionError("rand must not be called for a dead letter")


def _decide(
    exc: BaseException,
    attempt: int,
    *,
    policy: RetryPolicy = POLICY,
    rand: Callable[[], float] | None = None,
) -> Retry | DeadLetter:
    rand = _const(0.5) if rand is None else rand
    return decide_failure(exc, attempt=attempt, policy=policy, now=NOW, rand=rand, origin=ORIGIN)


def _retry(exc: BaseException, attempt: int, **kwargs: object) -> Retry:
    decision = _decide(exc, attempt, **kwargs)  # type: ignore[arg-type]
    assert isinstance(decision, Retry)
    return decision


# -- policy ---------------------------------------------------------------------------


def test_default_policy_follows_the_catalog() -> None:
    assert POLICY.delays == tuple(seconds for _, seconds in RETRY_DELAYS)
    assert POLICY.topics == tuple(name for name, _ in RETRY_DELAYS)
    assert POLICY.max_attempts == len(RETRY_DELAYS)
    assert POLICY.jitter == 0.2


def test_max_wait_bounds_every_decision() -> None:
    assert POLICY.max_wait("retry.30s") == pytest.approx(36.0)
    with pytest.raises(ValueError, match="not a delay topic"):
        POLICY.max_wait("retry.1h")
    for attempt in range(4):
        for rand in (0.0, 1.0):
            for retry_after in (None, 4.5, 20.0, 86_400.0):
                exc = TransientError("429", retry_after=retry_after)
                decision = _retry(exc, attempt, rand=_const(rand))
                assert decision.due_at - NOW <= POLICY.max_wait(decision.topic) + 0.001


def test_max_attempts_defaults_to_one_per_delay() -> None:
    assert RetryPolicy((1, 2)).max_attempts == 2
    assert RetryPolicy((1, 2), max_attempts=0).max_attempts == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delays": ()}, "at least one delay"),
        ({"delays": (5, -1)}, "not a positive"),
        ({"delays": (5, math.inf)}, "not a positive"),
        ({"delays": (30, 5)}, "strictly increasing"),
        ({"delays": (5, 5)}, "strictly increasing"),
        ({"delays": (0.0005,)}, "no catalog retry topic"),
        ({"max_attempts": -1}, "max_attempts"),
        ({"jitter": 1.0}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
    ],
)
def test_policy_is_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def policy_from(env: dict[str, str]) -> RetryPolicy:
    """The policy a worker started with ``env`` runs: settings read once, values handed in."""
    return retry_policy(load_settings(env))


def test_from_settings_parses_durations() -> None:
    policy = policy_from(
        {"SLUICE_RETRY_DELAYS": " 500ms, 5s,5m , 1h,7200", "SLUICE_RETRY_MAX_ATTEMPTS": "9"}
    )
    assert policy.delays == (0.5, 5.0, 300.0, 3600.0, 7200.0)
    assert policy.topics == ("retry.500ms", "retry.5s", "retry.5m", "retry.1h", "retry.2h")
    assert policy.max_attempts == 9


def test_from_settings_defaults_when_unset_or_blank() -> None:
    assert policy_from({}) == POLICY
    assert policy_from({"SLUICE_RETRY_DELAYS": " "}) == POLICY
    assert policy_from({"SLUICE_RETRY_DELAYS": "5s,30s,5m,30m"}) == POLICY


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"SLUICE_RETRY_DELAYS": "5s,30x"}, "SLUICE_RETRY_DELAYS"),
        ({"SLUICE_RETRY_DELAYS": "5s,,30s"}, "SLUICE_RETRY_DELAYS"),
        ({"SLUICE_RETRY_DELAYS": "-5s"}, "SLUICE_RETRY_DELAYS"),
        ({"SLUICE_RETRY_DELAYS": "30s,5s"}, "SLUICE_RETRY_DELAYS"),
        ({"SLUICE_RETRY_DELAYS": "0s"}, "SLUICE_RETRY_DELAYS"),
        ({"SLUICE_RETRY_MAX_ATTEMPTS": "three"}, "SLUICE_RETRY_MAX_ATTEMPTS"),
        ({"SLUICE_RETRY_MAX_ATTEMPTS": "-1"}, "SLUICE_RETRY_MAX_ATTEMPTS"),
    ],
)
def test_from_settings_errors_name_the_setting(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError, match=f"^malformed setting {setting}: "):
        policy_from(env)


def test_schedule_delay_without_a_retry_topic_is_rejected() -> None:
    # 1.0005 s is not a whole number of ms: no retry.<delay> topic can hold it.
    with pytest.raises(ConfigError, match=r"SLUICE_RETRY_DELAYS: .*no catalog retry topic"):
        policy_from({"SLUICE_RETRY_DELAYS": "1.0005s"})


# -- classification -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (TransientError("503"), "transient"),
        (TimeoutError(), "transient"),
        (ConnectionResetError(104, "reset"), "transient"),
        (OSError("network unreachable"), "transient"),
        (PermanentError("422"), "permanent"),
        (InvalidEvent("bad amount", field="amount"), "invalid"),
    ],
)
def test_classify(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


@pytest.mark.parametrize(
    "exc",
    [KeyError("orderId"), ValueError("bug"), TooManyDeadLetters("halt"), KeyboardInterrupt()],
)
def test_unknown_exceptions_are_raised_again(exc: BaseException) -> None:
    with pytest.raises(type(exc)) as raised:
        classify(exc)
    assert raised.value is exc
    with pytest.raises(type(exc)):
        _decide(exc, 0, rand=_never)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (408, "transient"),
        (425, "transient"),
        (429, "transient"),
        (500, "transient"),
        (503, "transient"),
        (599, "transient"),
        (301, "permanent"),
        (400, "permanent"),
        (401, "permanent"),
        (404, "permanent"),
        (409, "permanent"),
        (422, "permanent"),
    ],
)
def test_classify_http_status(status: int, kind: str) -> None:
    assert classify_http_status(status) == kind


def test_classify_http_status_rejects_success() -> None:
    with pytest.raises(ValueError, match="not an error status"):
        classify_http_status(200)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("soon", None),
        ("-5", None),
        ("120", 120.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        ("Tue, 14 Nov 2023 22:13:40 GMT", 20.0),  # NOW is 22:13:20 UTC
        ("Tue, 14 Nov 2023 22:13:00 GMT", 0.0),  # in the past
        ("Tue, 14 Nov 2023 22:13:40 -0000", 20.0),
        ("Tue, 99 Nov 2023 22:13:40 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


# -- decisions ------------------------------------------------------------------------


def test_schedule_progression() -> None:
    topics = [_retry(TransientError("503"), attempt).topic for attempt in range(4)]
    assert topics == ["retry.5s", "retry.30s", "retry.5m", "retry.30m"]
    decision = _retry(TransientError("503"), 2)
    assert decision.attempt == 3
    assert decision.headers.attempt == 3
    assert decision.due_at == NOW + 300.0  # rand 0.5: no jitter
    assert decision.headers.due_at == decision.due_at


def test_retries_beyond_the_schedule_repeat_the_last_delay() -> None:
    policy = RetryPolicy((5, 30), max_attempts=4)
    topics = [_retry(TimeoutError(), n, policy=policy).topic for n in range(4)]
    assert topics == ["retry.5s", "retry.30s", "retry.30s", "retry.30s"]
    assert isinstance(_decide(TimeoutError(), 4, policy=policy), DeadLetter)


@pytest.mark.parametrize(("rand", "factor"), [(0.0, 0.8), (1.0, 1.2), (0.25, 0.9)])
def test_jitter_bounds(rand: float, factor: float) -> None:
    decision = _retry(TransientError("503"), 1, rand=_const(rand))
    assert decision.topic == "retry.30s"
    assert decision.due_at == pytest.approx(NOW + 30 * factor, abs=0.001)
    assert decision.due_at >= NOW + 30 * factor  # rounded up to the ms, never early


def test_no_jitter_policy_is_exact() -> None:
    policy = RetryPolicy(jitter=0.0)
    for rand in (0.0, 1.0):
        assert _retry(TimeoutError(), 0, policy=policy, rand=_const(rand)).due_at == NOW + 5


def test_rand_out_of_range_is_a_bug() -> None:
    with pytest.raises(ValueError, match="rand"):
        _decide(TimeoutError(), 0, rand=_const(1.5))


def test_retry_after_shorter_than_the_delay_changes_nothing() -> None:
    decision = _retry(TransientError("429", retry_after=2.0), 0, rand=_const(0.0))
    assert decision.topic == "retry.5s"
    assert decision.due_at == NOW + 4.0


def test_retry_after_within_the_jitter_is_respected() -> None:
    # jittered wait 4 s, Retry-After 4.5 s, delay 5 s: same topic, due after Retry-After
    decision = _retry(TransientError("429", retry_after=4.5), 0, rand=_const(0.0))
    assert decision.topic == "retry.5s"
    assert decision.due_at == NOW + 4.5


def test_retry_after_longer_than_the_delay_picks_a_longer_topic() -> None:
    decision = _retry(TransientError("429", retry_after=20.0), 0, rand=_const(1.0))
    assert decision.topic == "retry.30s"  # the shortest delay topic >= 20 s
    assert decision.due_at == NOW + 20.0  # honoured exactly, not the 30 s delay
    assert decision.attempt == 1  # the attempt count still moves by one
    exact = _retry(TransientError("429", retry_after=300.0), 0)
    assert (exact.topic, exact.due_at) == ("retry.5m", NOW + 300.0)


def test_retry_after_beyond_the_longest_delay_is_capped() -> None:
    decision = _retry(TransientError("429", retry_after=86_400.0), 0)
    assert decision.topic == "retry.30m"
    assert decision.due_at == NOW + 1800.0


@pytest.mark.parametrize("retry_after", [0.0, -3.0, math.nan, math.inf])
def test_nonsense_retry_after_is_ignored(retry_after: float) -> None:
    decision = _retry(TransientError("429", retry_after=retry_after), 0)
    assert decision.topic == "retry.5s"
    assert decision.due_at == NOW + 5.0


def test_exhausted_retries_dead_letter_with_an_alert() -> None:
    decision = _decide(TransientError("partner CRM answered 503"), 4, rand=_never)
    assert decision == DeadLetter(
        reason="partner CRM answered 503",
        error_class="TransientError",
        attempts=5,
        alert=True,
    )


def test_no_retries_at_all() -> None:
    policy = RetryPolicy(max_attempts=0)
    decision = _decide(TimeoutError(), 0, policy=policy, rand=_never)
    assert decision == DeadLetter("TimeoutError", "TimeoutError", attempts=1, alert=True)


@pytest.mark.parametrize(
    ("exc", "attempt", "attempts"),
    [
        (PermanentError("partner CRM answered 422"), 0, 1),
        (InvalidEvent("amount must be positive", field="amount"), 0, 1),
        (PermanentError("partner CRM answered 410"), 2, 3),  # permanent on a retry
    ],
)
def test_permanent_and_invalid_go_straight_to_dlq(
    exc: BaseException, attempt: int, attempts: int
) -> None:
    decision = _decide(exc, attempt, rand=_never)
    assert decision == DeadLetter(
        reason=str(exc), error_class=type(exc).__name__, attempts=attempts, alert=False
    )


def test_a_refusal_that_asks_for_an_alert_is_dead_lettered_with_one() -> None:
    decision = _decide(PermanentError("crm refused: HTTP 400", alert=True), 1, rand=_never)
    assert decision == DeadLetter(
        reason="crm refused: HTTP 400",
        error_class="PermanentError",
        attempts=2,
        alert=True,
        alert_type=ALERT_PERMANENT_FAILURE,
    )


@pytest.mark.parametrize("attempt", [0, 3, 4, 40])
def test_a_held_record_waits_on_the_longest_delay_without_using_an_attempt(attempt: int) -> None:
    # Even past max_attempts (4): being held never exhausts a record's retries.
    retry = _retry(Held("delivery disabled"), attempt, rand=_const(0.5))
    assert retry.topic == POLICY.topics[-1]
    assert retry.attempt == attempt
    assert retry.due_at == pytest.approx(NOW + POLICY.delays[-1])
    assert retry.headers.reason == "delivery disabled"


def test_decision_headers_carry_origin_and_history() -> None:
    first = decide_failure(
        TransientError("Postgres timed out"),
        attempt=0,
        policy=POLICY,
        now=NOW,
        rand=_const(0.5),
        origin=ORIGIN,
        origin_partition=4,
        origin_offset=1234,
        effect="postgres.payments",
    )
    assert isinstance(first, Retry)
    assert first.headers == RetryHeaders(
        attempt=1,
        due_at_ms=1_700_000_005_000,
        origin=ORIGIN,
        reason="Postgres timed out",
        first_failed_at_ms=1_700_000_000_000,
        origin_partition=4,
        origin_offset=1234,
        effect="postgres.payments",
    )
    h = first.headers
    second = decide_failure(
        TimeoutError(),
        attempt=h.attempt,
        policy=POLICY,
        now=h.due_at + 0.1,
        rand=_const(0.5),
        origin=h.origin,
        origin_partition=h.origin_partition,
        origin_offset=h.origin_offset,
        effect=h.effect,
        first_failed_at_ms=h.first_failed_at_ms,
    )
    assert isinstance(second, Retry)
    assert second.topic == "retry.30s"
    assert second.headers.attempt == 2
    assert second.headers.first_failed_at_ms == 1_700_000_000_000
    assert second.headers.reason == "TimeoutError"


def test_negative_attempt_is_a_bug() -> None:
    with pytest.raises(ValueError, match="attempt"):
        _decide(TimeoutError(), -1, rand=_never)


def test_garbled_retry_record_keeps_its_delay_topic_as_origin() -> None:
    # A record found on retry.5s whose origin header was lost: carried on, not a crash.
    decision = decide_failure(
        TimeoutError(), attempt=0, policy=POLICY, now=NOW, rand=_const(0.5), origin="retry.5s"
    )
    assert isinstance(decision, Retry)
    assert decision.headers.origin == "retry.5s"


# -- reasons --------------------------------------------------------------------------


def test_reason_is_short_and_single_line() -> None:
    reason = failure_reason(PermanentError("line one\nline two\t" + "x" * 2000))
    assert reason.startswith("line one line two x")
    assert len(reason) == REASON_MAX_CHARS
    assert reason.endswith("…")
    assert failure_reason(TimeoutError()) == "TimeoutError"


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("connect to postgresql://sluice:hunter2@db:5432/sluice failed", "hunter2"),
        ("401 for Authorization: Bearer eyJhbGciOi.abc-def", "eyJhbGciOi"),
        ("bad request: password=hunter2&user=x", "hunter2"),
        ('{"api_key": "k-123456"}', "k-123456"),
        ("No such API key: sk_live_51HxYzAbC", "51HxYzAbC"),
        ("token: abc123 rejected", "abc123"),
    ],
)
def test_reason_masks_secrets(text: str, leak: str) -> None:
    cleaned = clean_reason(text)
    assert leak not in cleaned
    assert "***" in cleaned


# -- headers --------------------------------------------------------------------------

HEADERS = RetryHeaders(
    attempt=2,
    due_at_ms=1_700_000_030_123,
    origin=ORIGIN,
    reason="Elasticsearch answered 503 — überlastet",
    first_failed_at_ms=1_699_999_990_000,
    origin_partition=3,
    origin_offset=42,
    effect="elasticsearch.orders",
)


def test_headers_round_trip() -> None:
    pairs = HEADERS.to_kafka()
    assert all(isinstance(v, bytes) for _, v in pairs)
    assert dict(pairs)[ATTEMPT_HEADER] == b"2"
    assert dict(pairs)[DUE_AT_HEADER] == b"1700000030123"
    assert RetryHeaders.from_kafka(pairs) == HEADERS
    assert RetryHeaders.from_kafka(dict(pairs)) == HEADERS  # faust hands a mapping
    minimal = RetryHeaders(1, 5_000, ORIGIN, "x", 0)
    assert RetryHeaders.from_kafka(minimal.to_kafka()) == minimal
    assert {name for name, _ in minimal.to_kafka()} == {
        ATTEMPT_HEADER,
        DUE_AT_HEADER,
        ORIGIN_HEADER,
        REASON_HEADER,
        FIRST_FAILED_AT_HEADER,
    }


def test_record_without_retry_headers_has_none() -> None:
    assert RetryHeaders.from_kafka(None) is None
    assert RetryHeaders.from_kafka([]) is None
    assert RetryHeaders.from_kafka([("event-type", b"x"), ("correlation-id", None)]) is None


@pytest.mark.parametrize(
    "garbage",
    [b"", b"two", b"-3", b"1e3", b"\xff\xfe", b"99999999999999999999999", None],
)
def test_garbled_headers_are_tolerated(garbage: bytes | None) -> None:
    pairs: list[tuple[str, bytes | None]] = [
        (ATTEMPT_HEADER, garbage),
        (DUE_AT_HEADER, garbage),
        (FIRST_FAILED_AT_HEADER, garbage),
        (ORIGIN_HEADER, b"orders\xff"),
        ("sluice-origin-partition", garbage),
    ]
    headers = RetryHeaders.from_kafka(pairs)
    assert headers is not None
    assert headers.attempt == 0
    assert headers.due_at_ms == 0
    assert headers.first_failed_at_ms == 0
    assert headers.origin == "orders\ufffd"
    assert headers.origin_partition is None
    assert headers.reason == ""
    assert due_in(headers, NOW) <= 0  # a garbled record is due at once


def test_only_an_attempt_header() -> None:
    assert RetryHeaders.from_kafka([(ATTEMPT_HEADER, b"3")]) == RetryHeaders(3, 0, "", "", 0)


def test_repeated_header_last_wins() -> None:
    pairs = [*HEADERS.to_kafka(), (ATTEMPT_HEADER, b"7")]
    headers = RetryHeaders.from_kafka(pairs)
    assert headers is not None
    assert headers.attempt == 7


def test_due_in() -> None:
    assert due_in(HEADERS, 1_700_000_000.0) == pytest.approx(30.123)
    assert due_in(HEADERS, 1_700_000_030.123) == pytest.approx(0.0)
    assert due_in(HEADERS, 1_700_000_040.0) < 0


def test_merge_keeps_original_headers_and_replaces_retry_headers() -> None:
    original: list[tuple[str, bytes | str | None]] = [
        ("event-type", b"billing.payment.succeeded"),
        ("traceparent", "00-ab-cd-01"),
        (ATTEMPT_HEADER, b"1"),  # from an earlier retry
        ("x-dup", b"a"),
        (REASON_HEADER, b"old reason"),
        ("x-dup", b"b"),
        ("x-null", None),
    ]
    merged = merge_headers(original, HEADERS)
    assert merged == [
        ("event-type", b"billing.payment.succeeded"),
        ("traceparent", b"00-ab-cd-01"),
        ("x-dup", b"a"),
        ("x-dup", b"b"),
        ("x-null", b""),
        *HEADERS.to_kafka(),
    ]
    assert RetryHeaders.from_kafka(merged) == HEADERS


def test_retry_topic_names_match_the_catalog() -> None:
    for delay, topic in zip(POLICY.delays, POLICY.topics, strict=True):
        assert topic == retry_topic_name(delay)
