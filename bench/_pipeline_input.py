"""The pure parts of ``bench.pipeline``: its inputs, latency matching and rates.

No broker, no database, no clock of its own: everything here is a function of its
arguments (plus fresh random ids), so ``tests/test_bench_pipeline_smoke.py`` checks it
without services and without timing assertions.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bench._load import percentile
from ingress.records import ReceivedWebhook, new_traceparent, raw_webhook_record
from ingress.verify import VerifiedEvent
from ingress.verify.stripe import SIGNATURE_HEADER
from schemas.codec import Codec
from schemas.headers import record_headers
from tests.payloads import DEFAULT_CREATED, random_id
from tests.payloads.stripe import signed_stripe_request, stripe_event

__all__ = [
    "EVENT_TYPE",
    "INPUT_TOPIC",
    "Distribution",
    "KafkaRecord",
    "Matched",
    "PaymentWebhook",
    "SteadyRate",
    "distribution",
    "duplicate_plan",
    "match_latencies",
    "prepare_payment_webhooks",
    "raw_webhook_records",
    "stage_latencies",
    "steady_rate",
]

#: Every bench webhook is a Stripe ``payment_intent.succeeded``: one ``billing.*`` record
#: and one ``payments`` row each.
EVENT_TYPE = "payment_intent.succeeded"
INPUT_TOPIC = "webhooks.stripe"
_PROVIDER = "stripe"


@dataclass(frozen=True, slots=True)
class PaymentWebhook:
    """One signed Stripe webhook for a payment of its own.

    :param payment_id: the payment intent id: ``provider_payment_id`` of the ``payments``
        row the pipeline makes of it, and ``paymentId`` of its billing record.
    """

    payment_id: str
    event_id: str
    body: bytes
    headers: Mapping[str, str]
    event_type: str = EVENT_TYPE


def prepare_payment_webhooks(
    count: int, secret: str, *, timestamp: int | None = None, event_type: str = EVENT_TYPE
) -> list[PaymentWebhook]:
    """``count`` signed ``payment_intent.succeeded`` webhooks, each for a fresh order.

    A fresh order id gives a fresh payment intent (``tests.payloads`` derives the ids of
    an order's objects from it), so each webhook makes a ``payments`` row of its own.
    Signed at ``timestamp`` (default: the payloads' fixed creation time; pass the current
    time for requests the ingress must accept). ``event_type``: another ``payment_intent``
    event for the same payments (one the pipeline maps to nothing, say).
    """
    if count < 0:
        raise ValueError("count must not be negative")
    signed_at = DEFAULT_CREATED if timestamp is None else timestamp
    webhooks: list[PaymentWebhook] = []
    for _ in range(count):
        event = stripe_event(event_type, event_id=random_id("evt"), order_id=random_id("ord"))
        body, headers = signed_stripe_request(event, secret, signed_at)
        webhooks.append(
            PaymentWebhook(
                payment_id=str(event["data"]["object"]["id"]),
                event_id=str(event["id"]),
                body=body,
                headers=headers,
                event_type=event_type,
            )
        )
    return webhooks


def duplicate_plan(count: int, every: int, *, seed: int = 0) -> list[int]:
    """Which unique event each of ``count`` input positions carries.

    Every ``every``-th position (``every`` > 1; 0 for none) repeats an earlier event, as
    a provider's retry does; the others carry the next new event. The repeated event is
    drawn (seeded, so reproducible) from those before it. Returns one index into the
    unique events per position; the unique events are ``0 .. max + 1``.
    """
    if count < 0:
        raise ValueError("count must not be negative")
    if every == 1 or every < 0:
        raise ValueError(f"every must be 0 (no duplicates) or > 1, not {every}")
    chooser = random.Random(seed)
    plan: list[int] = []
    fresh = 0
    for position in range(count):
        if every and (position + 1) % every == 0 and fresh > 0:
            plan.append(chooser.randrange(fresh))
        else:
            plan.append(fresh)
            fresh += 1
    return plan


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def raw_webhook_records(
    webhooks: Sequence[PaymentWebhook],
    plan: Sequence[int],
    codec: Codec,
    *,
    received_at_ms: int,
) -> list[KafkaRecord]:
    """The ``webhooks.stripe`` records the ingress would publish for ``plan``'s positions.

    Built exactly as the webhook route builds them (``raw_webhook_record``, the codec,
    ``kafka_headers``; key = the provider event id). A repeated position is a retry of
    the same webhook: same body and event id, its own correlation id and trace.
    """
    records: list[KafkaRecord] = []
    for position, index in enumerate(plan):
        webhook = webhooks[index]
        received = ReceivedWebhook(
            provider=_PROVIDER,
            event=VerifiedEvent(webhook.event_id, webhook.event_type, DEFAULT_CREATED),
            raw_body=webhook.body,
            signature_header=webhook.headers[SIGNATURE_HEADER],
            content_type="application/json",
            correlation_id=uuid.uuid4().hex,
            traceparent=new_traceparent(),
            source_address="127.0.0.1",
            received_at_ms=received_at_ms + position,
        )
        record = raw_webhook_record(received)
        records.append(
            KafkaRecord(
                key=webhook.event_id.encode(),
                value=codec.encode(INPUT_TOPIC, record),
                headers=record_headers(INPUT_TOPIC, record, traceparent=received.traceparent),
            )
        )
    return records


# -- latencies -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Distribution:
    """Count and nearest-rank percentiles of some durations, in milliseconds (NaN if
    there were none)."""

    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def distribution(values_s: Sequence[float]) -> Distribution:
    ordered = sorted(values_s)
    if not ordered:
        return Distribution(0, math.nan, math.nan, math.nan)
    return Distribution(
        count=len(ordered),
        p50_ms=1000 * percentile(ordered, 50),
        p99_ms=1000 * percentile(ordered, 99),
        max_ms=1000 * ordered[-1],
    )


@dataclass(frozen=True, slots=True)
class Matched:
    """End-to-end latencies of the acknowledged webhooks whose row was seen.

    :param missing: acknowledged, but the row never showed up.
    :param early: the row was seen before the client read the 200 (counted as 0 s).
    """

    latencies_s: list[float]
    missing: int
    early: int


def match_latencies(acked_at: Mapping[str, float], seen_at: Mapping[str, float]) -> Matched:
    """Pair each acknowledged id's 200 time with the time its row was first seen.

    Both maps hold seconds on one clock, by id. Ids seen but never acknowledged (the
    request failed, yet the record got through) are not counted.
    """
    latencies: list[float] = []
    missing = early = 0
    for key, acked in acked_at.items():
        seen = seen_at.get(key)
        if seen is None:
            missing += 1
            continue
        if seen < acked:
            early += 1
        latencies.append(max(0.0, seen - acked))
    latencies.sort()
    return Matched(latencies, missing, early)


def stage_latencies(
    acked_at: Mapping[str, float],
    billed_at: Mapping[str, float],
    seen_at: Mapping[str, float],
) -> dict[str, Distribution]:
    """Where the end-to-end time goes, per id present in all three maps (one clock):

    - ``200 -> billing record``: the worker's consume, dedupe, normalise and produce;
    - ``billing record -> row``: its consume, batching and Postgres transaction, plus the
      bench's polling delay.

    ``billed_at`` comes from Kafka record timestamps (whole milliseconds), so a stage can
    come out slightly negative; those count as 0.
    """
    normalise: list[float] = []
    project: list[float] = []
    for key, acked in acked_at.items():
        billed, seen = billed_at.get(key), seen_at.get(key)
        if billed is None or seen is None:
            continue
        normalise.append(max(0.0, billed - acked))
        project.append(max(0.0, seen - billed))
    return {
        "200 -> billing record": distribution(normalise),
        "billing record -> row": distribution(project),
    }


# -- rates -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SteadyRate:
    """Input events per second between a processor's first output and its last.

    :param window_s: the time between those two outputs.
    :param outputs: the outputs the rate is computed from.
    """

    events_per_s: float
    window_s: float
    outputs: int
    first_at: float
    last_at: float


def steady_rate(output_times_s: Sequence[float], expected: int, inputs: int) -> SteadyRate:
    """The steady-state rate of a processor from the times its outputs were written.

    Start-up (connecting, joining the group, restoring state) is left out: the window
    opens at the first output and closes at the last. ``n`` outputs span ``n - 1``
    intervals; outputs are turned into input events with ``inputs / expected`` (a
    deduplicating processor writes fewer records than it reads).

    :raises ValueError: ``expected`` or ``inputs`` not positive, or fewer than
        ``expected`` (or than two) outputs.
    """
    if expected <= 0 or inputs <= 0:
        raise ValueError("expected and inputs must be positive")
    count = len(output_times_s)
    if count < max(expected, 2):
        raise ValueError(f"{count} outputs, expected {expected}")
    first, last = min(output_times_s), max(output_times_s)
    window = last - first
    rate = inputs * (count - 1) / expected / window if window > 0 else math.nan
    return SteadyRate(rate, window, count, first, last)
