"""What the benches send, built before a run from the test payloads (``tests.payloads``):
signed Stripe webhooks, the raw webhook records the ingress would publish for them, and
orders paid by them."""

from __future__ import annotations

import itertools
import json
import random
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Producer

from ingress.records import ReceivedWebhook, new_traceparent, raw_webhook_record
from ingress.verify import VerifiedEvent
from ingress.verify.stripe import SIGNATURE_HEADER
from schemas.codec import Codec
from schemas.headers import record_headers
from tests.payloads import DEFAULT_CREATED, compact_json, random_id
from tests.payloads.stripe import signed_stripe_request, stripe_event

#: One ``billing.payment.succeeded`` record and one ``payments`` row each.
EVENT_TYPE = "payment_intent.succeeded"
INPUT_TOPIC = "webhooks.stripe"
INTERNAL_TOKEN = "tok_bench_orders"
CREATED = "order.created"
WEBHOOK = "webhook"


@dataclass(frozen=True, slots=True)
class PaymentWebhook:
    """A signed Stripe webhook; ``payment_id``: its object's id (the payment intent, the
    ``provider_payment_id`` of its row)."""

    payment_id: str
    event_id: str
    body: bytes
    headers: Mapping[str, str]
    event_type: str = EVENT_TYPE


def prepare_payment_webhooks(
    count: int,
    secret: str,
    *,
    timestamp: int | None = None,
    event_type: str = EVENT_TYPE,
    event_types: Sequence[str] = (),
) -> list[PaymentWebhook]:
    """``count`` signed webhooks, each for a fresh order (so a fresh payment intent: the
    payloads derive an order's object ids from its id), of ``event_types`` in turn if
    given. Signed at ``timestamp`` (default: the payloads' fixed creation time; pass now
    for requests the ingress must accept: it refuses signatures past its tolerance)."""
    if count < 0:
        raise ValueError("count must not be negative")
    signed_at = DEFAULT_CREATED if timestamp is None else timestamp
    webhooks: list[PaymentWebhook] = []
    for kind in itertools.islice(itertools.cycle(event_types or [event_type]), count):
        event = stripe_event(kind, event_id=random_id("evt"), order_id=random_id("ord"))
        body, headers = signed_stripe_request(event, secret, signed_at)
        payment_id = str(event["data"]["object"]["id"])
        webhooks.append(PaymentWebhook(payment_id, str(event["id"]), body, headers, kind))
    return webhooks


def signed_now(count: int, secret: str) -> list[PaymentWebhook]:
    return prepare_payment_webhooks(count, secret, timestamp=int(time.time()))


def duplicate_plan(count: int, every: int, *, seed: int = 0) -> list[int]:
    """Which unique event each of ``count`` input positions carries: every ``every``-th
    (> 1; 0 for none) repeats an earlier one (seeded), as a provider's retry does."""
    if count < 0:
        raise ValueError("count must not be negative")
    if every == 1 or every < 0:
        raise ValueError(f"every must be 0 (no duplicates) or > 1, not {every}")
    chooser, plan, fresh = random.Random(seed), [], 0
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
    webhooks: Sequence[PaymentWebhook], plan: Sequence[int], codec: Codec, *, received_at_ms: int
) -> list[KafkaRecord]:
    """The ``webhooks.stripe`` records the webhook route would publish for ``plan``'s
    positions, built as it builds them (key: the provider event id). A repeated position
    is a retry: same body and event id, its own correlation id and trace."""
    records: list[KafkaRecord] = []
    for position, index in enumerate(plan):
        webhook = webhooks[index]
        received = ReceivedWebhook(
            provider="stripe",
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
                webhook.event_id.encode(),
                codec.encode(INPUT_TOPIC, record),
                record_headers(INPUT_TOPIC, record, traceparent=received.traceparent),
            )
        )
    return records


def produce_records(bootstrap: str, batches: Iterable[Sequence[KafkaRecord]]) -> int:
    """Produce every record to ``webhooks.stripe`` in order with one idempotent producer
    (``batches`` may be a generator: a large input is built while it is sent); returns
    how many once Kafka acknowledged all of them."""
    config = {"enable.idempotence": True, "acks": "all", "linger.ms": 5}
    producer, count = Producer({"bootstrap.servers": bootstrap, **config}), 0
    for batch in batches:
        for record in batch:
            produce(producer, INPUT_TOPIC, record.key, record.value, list(record.headers))
            producer.poll(0)
        count += len(batch)
    if left := producer.flush(60):
        raise RuntimeError(f"{left} input records were not acknowledged within 60 s")
    return count


def produce(producer: Producer, topic: str, key: Any, value: Any, headers: Any) -> None:
    while True:
        try:
            producer.produce(topic, value, key, headers=headers)
            break
        except BufferError:  # queue full: serve delivery reports, then retry
            producer.poll(0.05)


@dataclass(frozen=True, slots=True)
class BenchOrder:
    """An order (``created_body``: its ``order.created`` for the internal API, with no
    payment provider, so no Stripe call) and the signed webhook that pays it."""

    order_id: str
    created_body: bytes
    webhook: PaymentWebhook


def created_headers(token: str = INTERNAL_TOKEN) -> dict[str, str]:
    return {"X-Internal-Token": token, "Content-Type": "application/json"}


def prepare_orders(count: int, secret: str, *, timestamp: int | None = None) -> list[BenchOrder]:
    """``count`` orders, each made to match the webhook that pays it: id, user, amount
    and currency are read back from the signed body, so the join finds them matching."""
    orders: list[BenchOrder] = []
    for webhook in prepare_payment_webhooks(count, secret, timestamp=timestamp):
        payment = json.loads(webhook.body)["data"]["object"]
        order_id = str(payment["metadata"]["orderId"])
        data = {
            "orderId": order_id,
            "userId": str(payment["metadata"]["userId"]),
            "amount": int(payment["amount"]),
            "currency": str(payment["currency"]),
            "items": [
                {"productId": "sku_bench_1", "quantity": 2},
                {"productId": "sku_bench_2", "quantity": 1},
            ],
        }
        envelope = {"eventId": f"evt-created-{order_id}", "eventType": CREATED, "source": "bench"}
        body = compact_json(envelope | {"data": data})
        orders.append(BenchOrder(order_id, body, webhook))
    return orders
