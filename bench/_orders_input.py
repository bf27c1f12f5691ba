"""The pure parts of ``bench.orders``: its orders, what the load generator logged, and
the per-phase summary.

No broker, no database, no clock of its own: everything here is a function of its
arguments (plus fresh random ids), so ``tests/test_bench_orders_smoke.py`` checks it
without services and without timing assertions.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from bench._pipeline_input import (
    Distribution,
    PaymentWebhook,
    distribution,
    match_latencies,
    prepare_payment_webhooks,
)

__all__ = [
    "CREATED",
    "EVENTS_PATH",
    "INTERNAL_TOKEN",
    "WEBHOOK",
    "BenchOrder",
    "OrderLog",
    "OrdersPhase",
    "created_headers",
    "latency_ratio",
    "prepare_orders",
    "summarise",
]

INTERNAL_TOKEN: Final = "tok_bench_orders"
EVENTS_PATH: Final = "/internal/v1/events"
#: The two requests of one order, as named in ``OrderLog.refused``.
CREATED: Final = "order.created"
WEBHOOK: Final = "webhook"
_SOURCE = "bench"
_ITEMS = ({"productId": "sku_bench_1", "quantity": 2}, {"productId": "sku_bench_2", "quantity": 1})


@dataclass(frozen=True, slots=True)
class BenchOrder:
    """One order and the Stripe webhook that pays it.

    :param created_body: the ``order.created`` envelope for ``POST /internal/v1/events``
        (no ``paymentProvider``, so the worker makes no Stripe call for it).
    :param webhook: a signed ``payment_intent.succeeded`` whose ``metadata.orderId``,
        amount and currency are the order's.
    """

    order_id: str
    created_body: bytes
    webhook: PaymentWebhook


def created_headers(token: str = INTERNAL_TOKEN) -> dict[str, str]:
    return {"X-Internal-Token": token, "Content-Type": "application/json"}


def prepare_orders(count: int, secret: str, *, timestamp: int | None = None) -> list[BenchOrder]:
    """``count`` orders, each paid by one of ``bench._pipeline_input``'s webhooks.

    The webhook comes first (``prepare_payment_webhooks``: a fresh order id per payment);
    the order is then made to match what it pays: its id, user, amount and currency are
    read back from the signed body, so the join finds the payment matching.
    """
    orders: list[BenchOrder] = []
    for webhook in prepare_payment_webhooks(count, secret, timestamp=timestamp):
        payment = json.loads(webhook.body)["data"]["object"]
        order_id = str(payment["metadata"]["orderId"])
        envelope = {
            "eventId": f"evt-created-{order_id}",
            "eventType": CREATED,
            "source": _SOURCE,
            "data": {
                "orderId": order_id,
                "userId": str(payment["metadata"]["userId"]),
                "amount": int(payment["amount"]),
                "currency": str(payment["currency"]),
                "items": [dict(item) for item in _ITEMS],
            },
        }
        body = json.dumps(envelope, separators=(",", ":")).encode()
        orders.append(BenchOrder(order_id, body, webhook))
    return orders


@dataclass
class OrderLog:
    """What the load generator saw, by order id, in ``time.monotonic()`` seconds.

    :param scheduled: when the order's ``order.created`` was due to be sent.
    :param created: when its 202 was read.
    :param webhook_sent: when its webhook was sent (right after the 202).
    :param acked: when the webhook's 200 was read: where both latencies start.
    :param refused: failed requests (an error status or no answer) by kind
        (``CREATED`` / ``WEBHOOK``); an order whose ``order.created`` failed sends no
        webhook.
    """

    scheduled: dict[str, float] = field(default_factory=dict)
    created: dict[str, float] = field(default_factory=dict)
    webhook_sent: dict[str, float] = field(default_factory=dict)
    acked: dict[str, float] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)

    @property
    def first_at(self) -> float:
        return min(self.scheduled.values(), default=math.nan)

    @property
    def last_acked_at(self) -> float:
        return max(self.acked.values(), default=math.nan)


@dataclass
class OrdersPhase:
    """One measured phase.

    :param accepted_per_s: orders whose webhook got its 200, per second from the first
        order sent to the last 200.
    :param paid_per_s: orders seen PAID per second, from the first order sent to the last
        one seen PAID: the sustained end-to-end throughput.
    :param drain_s: from the last 200 to the last order seen PAID.
    :param order: webhook 200 → ``orders`` row PAID.
    :param payment: webhook 200 → ``payments`` row (the billing projection): the baseline.
    :param not_paid: orders whose webhook was acknowledged but that were not seen PAID
        within the bounded wait; ``no_payment_row``: the same for the ``payments`` row.
    """

    name: str
    orders: int
    errors: int
    accepted_per_s: float
    paid_per_s: float
    drain_s: float
    created_http: Distribution
    webhook_http: Distribution
    order: Distribution
    payment: Distribution
    not_paid: int
    no_payment_row: int
    refused: dict[str, int] = field(default_factory=dict)
    target_rps: float | None = None
    concurrency: int | None = None
    stages: dict[str, Distribution] = field(default_factory=dict)
    cpu_percent: dict[str, float] = field(default_factory=dict)
    cpu_wait_percent: dict[str, float] = field(default_factory=dict)
    """Per process: % of the time a thread of it was runnable but had no CPU."""

    @property
    def p50_ratio(self) -> float:
        return latency_ratio(self.order.p50_ms, self.payment.p50_ms)

    @property
    def p99_ratio(self) -> float:
        return latency_ratio(self.order.p99_ms, self.payment.p99_ms)


def latency_ratio(order_ms: float, payment_ms: float) -> float:
    """``order_ms / payment_ms``; NaN when either is missing or the baseline is 0."""
    if math.isnan(order_ms) or math.isnan(payment_ms) or payment_ms <= 0:
        return math.nan
    return order_ms / payment_ms


def summarise(
    name: str,
    log: OrderLog,
    paid_at: Mapping[str, float],
    payment_at: Mapping[str, float],
    orders: Sequence[BenchOrder],
) -> OrdersPhase:
    """The phase's numbers from the log and the times the watcher first saw each order
    PAID (``paid_at``) and each payment row (``payment_at``), all by order id."""
    ids = [order.order_id for order in orders]
    order = match_latencies(log.acked, paid_at)
    payment = match_latencies(log.acked, payment_at)
    paid = [paid_at[key] for key in ids if key in paid_at and key in log.acked]
    last_paid = max(paid, default=math.nan)
    return OrdersPhase(
        name=name,
        orders=len(orders),
        errors=sum(log.refused.values()),
        refused=dict(log.refused),
        accepted_per_s=_per_s(len(log.acked), log.last_acked_at - log.first_at),
        paid_per_s=_per_s(len(paid), last_paid - log.first_at),
        drain_s=last_paid - log.last_acked_at if paid else math.nan,
        created_http=distribution([log.created[key] - log.scheduled[key] for key in log.created]),
        webhook_http=distribution([log.acked[key] - log.webhook_sent[key] for key in log.acked]),
        order=distribution(order.latencies_s),
        payment=distribution(payment.latencies_s),
        not_paid=order.missing,
        no_payment_row=payment.missing,
    )


def _per_s(count: int, seconds: float) -> float:
    return count / seconds if count and seconds > 0 else math.nan
