"""The retry policy: classify a side effect's failure and decide what happens to the record.

Pure code (STYLE items 1, 8, 9): nothing here produces, sleeps or reads a clock. The worker
runs a side effect; when it raises, the worker calls :func:`decide_failure` and carries out
the :data:`Decision`:

- :class:`Retry`: produce the record (key and value bytes unchanged) to ``Retry.topic``
  with ``merge_headers(original_headers, decision.headers)``;
- :class:`DeadLetter`: produce a ``dlq`` record (``streams.domain.dlq``) and, when
  ``alert`` is set (retries exhausted, or a ``PermanentError(alert=True)``), an
  ``alerts`` record of type ``alert_type``.

A :class:`~base.errors.Held` failure (the effect is switched off for now) is a
:class:`Retry` to the *longest* delay topic at the *same* attempt: the record waits and
comes back for as long as it is held, and never runs out of attempts for it.

An effect may retry on a policy of its own per record (``EffectRunner.register(...,
policy=...)``: a partner's ``max_attempts``); such a policy keeps the worker's delays, so
every delay topic it names exists.

A retry agent per ``retry.<delay>`` topic reads :meth:`RetryHeaders.from_kafka`, waits
:func:`due_in` seconds on the injected clock, re-runs the effect and, on failure, calls
:func:`decide_failure` again with the attempt, origin and first-failure time it read from
the headers.

**Attempts.** ``attempt`` counts retries: a record straight from its origin topic is
attempt 0 (it carries no retry headers); its first retry carries ``sluice-attempt: 1``.
``RetryPolicy.max_attempts`` is the number of *retries* allowed, so a record is delivered
at most ``1 + max_attempts`` times; ``DeadLetter.attempts`` counts deliveries (1 when the
first delivery failed permanently), as the ``dlq`` schema's ``attempts`` field does.

**One delay per topic.** A ``retry.<delay>`` topic holds records of one delay only, so
its agent need only wait for the head record. Jitter makes due times within one topic
differ by up to ``2 * jitter * delay``, so a record may wait that much longer behind an
earlier head; it is never released early.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from base.durations import check_retry_schedule
from base.errors import ConfigError, Held, InvalidEvent, PermanentError, TransientError
from base.http_status import classify_http_status, parse_retry_after
from schemas.catalog import RETRY_DELAYS, UnknownTopic, retry_topic_name, topic_spec
from schemas.replays import (
    ATTEMPT_HEADER,
    DUE_AT_HEADER,
    EFFECT_HEADER,
    FIRST_FAILED_AT_HEADER,
    ORIGIN_HEADER,
    ORIGIN_OFFSET_HEADER,
    ORIGIN_PARTITION_HEADER,
    REASON_HEADER,
    RETRY_HEADER_NAMES,
)

__all__ = [
    "ALERT_PERMANENT_FAILURE",
    "ALERT_RETRIES_EXHAUSTED",
    "ATTEMPT_HEADER",
    "DUE_AT_HEADER",
    "EFFECT_HEADER",
    "FIRST_FAILED_AT_HEADER",
    "ORIGIN_HEADER",
    "ORIGIN_OFFSET_HEADER",
    "ORIGIN_PARTITION_HEADER",
    "REASON_HEADER",
    "REASON_MAX_CHARS",
    "RETRY_HEADER_NAMES",
    "DeadLetter",
    "Decision",
    "FailureKind",
    "HeadersLike",
    "Retry",
    "RetryHeaders",
    "RetryPolicy",
    "classify",
    "classify_http_status",
    "clean_reason",
    "decide_failure",
    "due_in",
    "failure_reason",
    "merge_headers",
    "normalise_headers",
    "parse_retry_after",
]

FailureKind: TypeAlias = Literal["transient", "permanent", "invalid"]

HeadersLike: TypeAlias = (
    Mapping[str, bytes | str | None] | Iterable[tuple[str, bytes | str | None]] | None
)
"""Kafka headers as clients hand them over: confluent-kafka's list of pairs (or ``None``),
faust's mapping. Values may be bytes, str or ``None`` (a null header)."""

# The retry header names live with the record format (schemas.replays), so whoever
# replays a dead letter (the CLI, the admin API, the dashboard) strips them without
# importing the worker; re-exported here for the worker's code.

REASON_MAX_CHARS: Final = 500

ALERT_RETRIES_EXHAUSTED: Final = "alert.retries_exhausted"
"""``alerts`` type of a record whose transient failure never cleared."""
ALERT_PERMANENT_FAILURE: Final = "alert.permanent_failure"
"""``alerts`` type of a record refused for good by a ``PermanentError(alert=True)``."""

_DEFAULT_DELAYS: Final = tuple(seconds for _, seconds in RETRY_DELAYS)
_INT = re.compile(rb"-?[0-9]{1,19}")


# --------------------------------------------------------------------------------------
# Policy


@dataclass(frozen=True, init=False)
class RetryPolicy:
    """The retry schedule: which delay topic each retry waits in, how many retries, jitter.

    :param delays: seconds to wait before each retry, shortest first (strictly
        increasing); retry *n* (1-based) waits ``delays[min(n - 1, len - 1)]``, so retries
        beyond the schedule repeat the last delay. Default: :data:`schemas.catalog.RETRY_DELAYS`.
    :param max_attempts: retries allowed before the record is dead-lettered (``0``: never
        retry). Default: one per delay.
    :param jitter: fraction in ``[0, 1)``; a wait of ``delay`` becomes
        ``delay * (1 ± jitter)``, spread by the injected random number.
    :raises ConfigError: a delay is not positive, not a whole number of milliseconds (so
        it has no ``retry.<delay>`` topic in the catalog), or out of order; ``max_attempts``
        is negative; ``jitter`` is outside ``[0, 1)``.

    Values in, never the environment: the worker builds it from ``SLUICE_RETRY_DELAYS``
    and ``SLUICE_RETRY_MAX_ATTEMPTS`` as read by ``base.settings`` (``streams.app.retry_policy``).
    """

    delays: tuple[float, ...]
    max_attempts: int
    jitter: float

    def __init__(
        self,
        delays: Iterable[float] = _DEFAULT_DELAYS,
        max_attempts: int | None = None,
        jitter: float = 0.2,
    ) -> None:
        delays = tuple(float(d) for d in delays)
        _check_schedule(delays)
        if max_attempts is None:
            max_attempts = len(delays)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
            raise ConfigError(f"retry max_attempts must be an int, got {max_attempts!r}")
        if max_attempts < 0:
            raise ConfigError(f"retry max_attempts must be 0 or more, got {max_attempts}")
        if not (math.isfinite(jitter) and 0.0 <= jitter < 1.0):
            raise ConfigError(f"retry jitter must be in [0, 1), got {jitter!r}")
        object.__setattr__(self, "delays", delays)
        object.__setattr__(self, "max_attempts", max_attempts)
        object.__setattr__(self, "jitter", float(jitter))

    @property
    def topics(self) -> tuple[str, ...]:
        """The ``retry.<delay>`` topic of each delay, in schedule order."""
        return tuple(retry_topic_name(d) for d in self.delays)

    def max_wait(self, topic: str) -> float:
        """The longest a record in delay topic ``topic`` can legitimately wait:
        ``delay * (1 + jitter)``. A retry agent caps :func:`due_in` at this, so a record
        with a corrupt far-future due time cannot hold up its partition.

        :raises ValueError: ``topic`` is not one of :attr:`topics`.
        """
        try:
            delay = self.delays[self.topics.index(topic)]
        except ValueError:
            raise ValueError(f"{topic!r} is not a delay topic of this policy") from None
        return delay * (1.0 + self.jitter)


def _check_schedule(delays: tuple[float, ...]) -> None:
    try:
        check_retry_schedule(delays)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for delay in delays:
        try:
            # Each delay needs its own delay topic: one topic holds records of one delay.
            topic_spec(retry_topic_name(delay))
        except (ValueError, UnknownTopic) as exc:
            raise ConfigError(f"retry delay {delay!r}s has no catalog retry topic: {exc}") from None


# --------------------------------------------------------------------------------------
# Classification


def classify(exc: BaseException) -> FailureKind:
    """How the pipeline reacts to ``exc``, decided by its class (``base.errors``).

    - :class:`~base.errors.TransientError`, :class:`TimeoutError`,
      :class:`ConnectionError` and any other :class:`OSError`: ``"transient"``;
    - :class:`~base.errors.PermanentError`: ``"permanent"``;
    - :class:`~base.errors.InvalidEvent`: ``"invalid"``.

    :raises BaseException: ``exc`` itself, for anything else (a bug, ``TooManyDeadLetters``,
        ``CancelledError``, ``KeyboardInterrupt``): unknown failures crash the worker
        loudly instead of being retried or dead-lettered (STYLE item 8).
    """
    if isinstance(exc, InvalidEvent):
        return "invalid"
    if isinstance(exc, PermanentError):
        return "permanent"
    if isinstance(exc, TransientError | OSError):  # TimeoutError, ConnectionError are OSErrors
        return "transient"
    raise exc


# --------------------------------------------------------------------------------------
# Reasons

_SECRET_PATTERNS: Final = (
    # scheme://user:password@host -> scheme://***@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@"), r"\1***@"),
    # Authorization: Bearer <token> / Basic <credentials>
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 ***"),
    # password=..., token: ..., api_key="..."
    (
        re.compile(
            r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)"
            r"""(["']?\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s,;&]+)"""
        ),
        r"\1\2***",
    ),
    # Stripe keys and webhook secrets
    (re.compile(r"\b(sk_live|sk_test|rk_live|rk_test|whsec)_[A-Za-z0-9]+"), r"\1_***"),
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def clean_reason(text: str) -> str:
    """``text`` made fit for a header or a ``dlq`` record: credentials in URLs,
    ``password=``/``token=``-style pairs, bearer tokens and Stripe keys masked, control
    characters (newlines included) collapsed to one space, and truncated to
    :data:`REASON_MAX_CHARS` characters (ending ``…`` when cut).

    Masking is a safety net, not a licence: connectors must not put secrets in messages.
    """
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    text = _CONTROL.sub(" ", text).strip()
    if len(text) > REASON_MAX_CHARS:
        text = text[: REASON_MAX_CHARS - 1] + "…"
    return text


def failure_reason(exc: BaseException) -> str:
    """The short reason recorded for ``exc``: its message, cleaned by
    :func:`clean_reason`, or its class name when the message is empty."""
    return clean_reason(str(exc)) or type(exc).__name__


# --------------------------------------------------------------------------------------
# Headers


def normalise_headers(headers: HeadersLike) -> list[tuple[str, bytes]]:
    """``headers`` as a list of ``(name, bytes)`` pairs, order and repeats kept; str values
    are UTF-8 encoded and a null value becomes ``b""``."""
    if headers is None:
        return []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    out: list[tuple[str, bytes]] = []
    for name, value in pairs:
        if value is None:
            out.append((name, b""))
        elif isinstance(value, str):
            out.append((name, value.encode()))
        else:
            out.append((name, bytes(value)))
    return out


@dataclass(frozen=True, slots=True)
class RetryHeaders:
    """The headers a retried record carries (see the ``*_HEADER`` constants).

    :param attempt: retry number the record is on (``1`` on its first retry).
    :param due_at_ms: when it may be retried, epoch milliseconds.
    :param origin: the topic the record was first consumed from; empty when a garbled
        record lost it.
    :param reason: why the last attempt failed (already cleaned).
    :param first_failed_at_ms: when its first delivery failed, epoch milliseconds.
    :param origin_partition: / :param origin_offset: where it sits in ``origin``, so a
        dead letter after retries names the original record.
    :param effect: which side effect to re-run, when the origin feeds several.
    """

    attempt: int
    due_at_ms: int
    origin: str
    reason: str
    first_failed_at_ms: int
    origin_partition: int | None = None
    origin_offset: int | None = None
    effect: str | None = None

    @property
    def due_at(self) -> float:
        """:attr:`due_at_ms` in epoch seconds, the unit of the clock."""
        return self.due_at_ms / 1000

    def to_kafka(self) -> list[tuple[str, bytes]]:
        """The headers as Kafka header pairs; optional fields that are ``None`` are left
        out. Integers are ASCII decimal, text is UTF-8."""
        pairs = [
            (ATTEMPT_HEADER, str(self.attempt).encode()),
            (DUE_AT_HEADER, str(self.due_at_ms).encode()),
            (ORIGIN_HEADER, self.origin.encode()),
            (REASON_HEADER, self.reason.encode()),
            (FIRST_FAILED_AT_HEADER, str(self.first_failed_at_ms).encode()),
        ]
        if self.origin_partition is not None:
            pairs.append((ORIGIN_PARTITION_HEADER, str(self.origin_partition).encode()))
        if self.origin_offset is not None:
            pairs.append((ORIGIN_OFFSET_HEADER, str(self.origin_offset).encode()))
        if self.effect is not None:
            pairs.append((EFFECT_HEADER, self.effect.encode()))
        return pairs

    @classmethod
    def from_kafka(cls, headers: HeadersLike) -> RetryHeaders | None:
        """Read the retry headers of a consumed record. Never raises.

        :returns: ``None`` when the record carries none of them (it has not been retried);
            otherwise every field that is missing or garbled takes a safe default rather
            than crashing the retry agent: attempt ``0``, due at ``0`` (due now), origin and
            reason ``""``, first failure at the due time, optional fields ``None``. When a
            header repeats, the last value wins.
        """
        found: dict[str, bytes] = {}
        for name, value in normalise_headers(headers):
            if name in RETRY_HEADER_NAMES:
                found[name] = value
        if not found:
            return None
        attempt = _int_header(found, ATTEMPT_HEADER)
        due_at_ms = _int_header(found, DUE_AT_HEADER)
        first_failed = _int_header(found, FIRST_FAILED_AT_HEADER)
        effect = found.get(EFFECT_HEADER)
        return cls(
            attempt=max(attempt or 0, 0),
            due_at_ms=max(due_at_ms or 0, 0),
            origin=found.get(ORIGIN_HEADER, b"").decode(errors="replace"),
            reason=found.get(REASON_HEADER, b"").decode(errors="replace"),
            first_failed_at_ms=max(first_failed if first_failed is not None else due_at_ms or 0, 0),
            origin_partition=_non_negative(_int_header(found, ORIGIN_PARTITION_HEADER)),
            origin_offset=_non_negative(_int_header(found, ORIGIN_OFFSET_HEADER)),
            effect=effect.decode(errors="replace") if effect else None,
        )


def _int_header(found: Mapping[str, bytes], name: str) -> int | None:
    value = found.get(name)
    if value is None:
        return None
    value = value.strip()
    return int(value) if _INT.fullmatch(value) else None


def _non_negative(value: int | None) -> int | None:
    return value if value is not None and value >= 0 else None


def merge_headers(original: HeadersLike, retry_headers: RetryHeaders) -> list[tuple[str, bytes]]:
    """The headers to produce a retried record with: the original headers in their order
    (repeats kept, minus any earlier retry headers) followed by ``retry_headers``."""
    kept = [(n, v) for n, v in normalise_headers(original) if n not in RETRY_HEADER_NAMES]
    return kept + retry_headers.to_kafka()


def due_in(headers: RetryHeaders, now: float) -> float:
    """Seconds from ``now`` (epoch seconds) until the record is due; ``<= 0`` means due."""
    return headers.due_at - now


# --------------------------------------------------------------------------------------
# Decisions


@dataclass(frozen=True, slots=True)
class Retry:
    """Produce the record to ``topic`` with :func:`merge_headers` of ``headers``.

    :param due_at: epoch seconds, equal to ``headers.due_at``.
    :param attempt: the retry number it goes to, equal to ``headers.attempt``.
    """

    topic: str
    due_at: float
    attempt: int
    headers: RetryHeaders


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Produce the record to ``dlq`` (and an ``alerts`` record when ``alert``).

    :param reason: cleaned message of the last failure.
    :param error_class: class name of the last failure.
    :param attempts: deliveries made, the failed one included (``1`` on a first-try
        permanent failure).
    :param alert: retries were exhausted (a transient failure that never cleared), or
        the failure asked for one (``PermanentError(alert=True)``).
    :param alert_type: the ``alerts`` record's type when ``alert``.
    """

    reason: str
    error_class: str
    attempts: int
    alert: bool
    alert_type: str = ALERT_RETRIES_EXHAUSTED


Decision: TypeAlias = Retry | DeadLetter


def decide_failure(
    exc: BaseException,
    *,
    attempt: int,
    policy: RetryPolicy,
    now: float,
    rand: Callable[[], float],
    origin: str,
    origin_partition: int | None = None,
    origin_offset: int | None = None,
    effect: str | None = None,
    first_failed_at_ms: int | None = None,
) -> Decision:
    """What to do with a record whose side effect raised ``exc``. Pure and deterministic
    for a given ``rand``.

    - invalid or permanent (:func:`classify`): ``DeadLetter(alert=False)``;
    - transient, ``attempt < policy.max_attempts``: ``Retry`` to the topic of
      ``delays[i]``, ``i = min(attempt, len(delays) - 1)``, due
      ``now + delays[i] * (1 + jitter * (2 * rand() - 1))`` (``rand() == 0`` gives the
      shortest wait, ``1`` the longest), but never before ``now + retry_after`` of a
      :class:`~base.errors.TransientError`. When ``retry_after`` is longer than
      ``delays[i]`` the record goes to the shortest delay topic at least that long
      instead, so it never holds up a topic's queue for longer than that topic's delay;
      a ``retry_after`` beyond the longest delay is capped at the longest delay for the
      same reason (the downstream is called early; if it refuses again the record moves
      on to the next retry, and exhaustion dead-letters it with an alert);
    - transient, retries used up: ``DeadLetter(alert=True)``;
    - permanent with ``alert`` set: ``DeadLetter(alert=True,
      alert_type=ALERT_PERMANENT_FAILURE)``;
    - :class:`~base.errors.Held`: ``Retry`` to the longest delay topic at the same
      ``attempt`` (not counted: a held record never runs out of retries).

    :param attempt: retry number of the record that failed (``RetryHeaders.attempt``;
        ``0`` for a record from its origin topic).
    :param now: epoch seconds (the injected clock's time).
    :param rand: a number in ``[0, 1]``, called once and only for a ``Retry``.
    :param origin: topic the record was first consumed from (``RetryHeaders.origin`` on
        a retry). Only when a retried record lost its origin header may this be the delay
        topic it was found on; it is carried on as is rather than crashing the agent.
    :param origin_partition: / :param origin_offset: / :param effect: carried into the
        retry headers (copy them from ``RetryHeaders`` on a retry).
    :param first_failed_at_ms: from ``RetryHeaders`` on a retry; defaults to ``now``.
    :raises BaseException: ``exc`` itself when :func:`classify` does not know it.
    :raises ValueError: ``attempt`` is negative or ``rand`` returned a number outside
        ``[0, 1]`` (programming errors).
    """
    kind = classify(exc)
    if attempt < 0:
        raise ValueError(f"attempt must be 0 or more, got {attempt}")
    reason = failure_reason(exc)
    held = isinstance(exc, Held)
    if kind == "permanent" and getattr(exc, "alert", False):
        return DeadLetter(
            reason=reason,
            error_class=type(exc).__name__,
            attempts=attempt + 1,
            alert=True,
            alert_type=ALERT_PERMANENT_FAILURE,
        )
    if kind != "transient" or (attempt >= policy.max_attempts and not held):
        return DeadLetter(
            reason=reason,
            error_class=type(exc).__name__,
            attempts=attempt + 1,
            alert=kind == "transient",
        )

    index = len(policy.delays) - 1 if held else min(attempt, len(policy.delays) - 1)
    base = policy.delays[index]
    r = rand()
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"rand() must return a number in [0, 1], got {r!r}")
    wait = base * (1.0 + policy.jitter * (2.0 * r - 1.0))

    retry_after = exc.retry_after if isinstance(exc, TransientError) else None
    if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
        retry_after = min(retry_after, policy.delays[-1])
        if retry_after > base:
            index = next(i for i, d in enumerate(policy.delays) if d >= retry_after)
        wait = max(wait, retry_after)

    due_at_ms = math.ceil((now + wait) * 1000)  # rounding up: never due early
    headers = RetryHeaders(
        attempt=attempt if held else attempt + 1,
        due_at_ms=due_at_ms,
        origin=origin,
        reason=reason,
        first_failed_at_ms=(
            first_failed_at_ms if first_failed_at_ms is not None else math.floor(now * 1000)
        ),
        origin_partition=origin_partition,
        origin_offset=origin_offset,
        effect=effect,
    )
    return Retry(
        topic=retry_topic_name(policy.delays[index]),
        due_at=headers.due_at,
        attempt=headers.attempt,
        headers=headers,
    )
