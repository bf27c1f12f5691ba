"""The worker's topology, declared once and read top to bottom.

Which topic feeds which agent, which table each agent owns, which topics it writes.
This is the only module that turns catalog entries into faust topics and tables;
agents take their handles from the ``Topology`` built here.

    webhooks.stripe, webhooks.razorpay
        └─► normalise_webhooks  (table dedupe_seen) ─► billing.* · webhooks.outcomes · dlq
    webhooks.outcomes
        └─► project_webhooks    (Postgres webhook_events) ─► retry.* · dlq
    billing.*
        └─► project_billing     (Postgres payments, refunds, ...) ─► retry.* · dlq
    orders, commands.payments, payments.setup, join.ticks, billing.payment.*, billing.checkout.*
        └─► join_orders         (tables orders_state, payments_waiting)
                                ─► orders.lifecycle · commands.stripe · commands.inventory.release
                                   · replies · dlq
    commands.stripe
        └─► stripe_calls        (Stripe API) ─► payments.setup · replies · retry.* · dlq
    leads.received, commands.leads.deliver
        └─► deliver_leads       (Postgres leads, partner CRMs) ─► replies · retry.* · dlq · alerts
    users.contacts
        └─► project_contacts    (Postgres user_contacts) ─► retry.* · dlq
    notifications.requested
        └─► send_notifications  (Postgres notifications, user_contacts; SMTP, SMS, push APIs)
                                ─► retry.* · dlq · alerts
    orders.lifecycle
        └─► project_orders      (Postgres orders, Elasticsearch orders)
                                ─► commands.cache.invalidate · retry.* · dlq
    commands.search.index
        └─► index_search        (Elasticsearch: the declared search indices) ─► retry.* · dlq
    commands.cache.invalidate
        └─► invalidate_cache    (Redis UNLINK, SCAN) ─► replies · retry.* · dlq · alerts
    orders.lifecycle, billing.invoice.updated
        └─► notify_lifecycle    (Postgres user_contacts, read) ─► notifications.requested
                                   · retry.* · dlq
    retry.<delay>  (one agent per delay topic; waits for the head record's due time)
        └─► retry_<delay>       re-runs the named effect ─► next retry.* · dlq · alerts
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from schemas.catalog import (
    BILLING_TOPICS,
    JOIN_TOPICS,
    WEBHOOK_OUTCOMES_TOPIC,
    WEBHOOK_TOPICS,
    topic_spec,
)
from streams.domain.retry import RetryPolicy

__all__ = ["WIRING", "Topology", "Wire", "build_topology"]


@dataclass(frozen=True)
class Wire:
    agent: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    tables: tuple[str, ...] = ()


def wiring(policy: RetryPolicy) -> tuple[Wire, ...]:
    """Every agent with what it reads, writes and owns (checked against the catalog)."""
    retry_topics = policy.topics
    failures = (*retry_topics, "dlq", "alerts")
    return (
        Wire(
            "normalise_webhooks",
            reads=tuple(WEBHOOK_TOPICS),
            writes=(*BILLING_TOPICS, WEBHOOK_OUTCOMES_TOPIC, "dlq"),
            tables=("dedupe_seen",),
        ),
        Wire("project_webhooks", reads=(WEBHOOK_OUTCOMES_TOPIC,), writes=failures),
        Wire("project_billing", reads=tuple(BILLING_TOPICS), writes=failures),
        Wire(
            "join_orders",
            reads=JOIN_TOPICS,
            writes=(
                "orders.lifecycle",
                "commands.stripe",
                "commands.inventory.release",
                "replies",
                "dlq",
            ),
            tables=("orders_state", "payments_waiting"),
        ),
        Wire(
            "stripe_calls",
            reads=("commands.stripe",),
            writes=("payments.setup", "replies", *failures),
        ),
        Wire(
            "deliver_leads",
            reads=("leads.received", "commands.leads.deliver"),
            writes=("replies", *failures),
        ),
        Wire("project_contacts", reads=("users.contacts",), writes=failures),
        Wire("send_notifications", reads=("notifications.requested",), writes=failures),
        Wire(
            "project_orders",
            reads=("orders.lifecycle",),
            writes=("commands.cache.invalidate", *failures),
        ),
        Wire("index_search", reads=("commands.search.index",), writes=failures),
        Wire(
            "invalidate_cache",
            reads=("commands.cache.invalidate",),
            writes=("replies", *failures),
        ),
        Wire(
            "notify_lifecycle",
            reads=("orders.lifecycle", "billing.invoice.updated"),
            writes=("notifications.requested", *failures),
        ),
        *(
            Wire(f"retry_{topic.removeprefix('retry.')}", reads=(topic,), writes=failures)
            for topic in retry_topics
        ),
    )


WIRING = wiring(RetryPolicy())


@dataclass(frozen=True)
class Topology:
    app: faust.App
    topics: dict[str, Any]  # name -> faust TopicT
    dedupe_seen: Any  # faust Table: dedupe key -> [first-seen epoch ms, record position]
    wires: tuple[Wire, ...]
    orders_state: Any = None  # faust Table: order id -> Order as JSON (domain.orders)
    payments_waiting: Any = None  # faust Table: order id -> Held as JSON (domain.orders)

    def topic(self, name: str) -> Any:
        return self.topics[name]

    def reads(self, agent: str) -> Any:
        """One faust topic over every topic ``agent`` reads."""
        [wire] = [wire for wire in self.wires if wire.agent == agent]
        return self.app.topic(
            *wire.reads,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )


def rocksdb_options() -> dict[str, Any]:
    """Options of each table partition's RocksDB (a new dict each time: faust pops from it).

    faust's defaults allow 3 x 64 MiB of write buffers and a 2 GiB block cache per
    partition; the worker has 15 table partitions. These bound one partition at
    2 x 16 MiB of write buffers (flushed to disk when full) and a 32 MiB block cache, so a
    worker's RocksDB memory stays under about 1 GiB however many ids it remembers.
    """
    mib = 1024 * 1024
    return {
        "driver": "rocksdict",
        "write_buffer_size": 16 * mib,
        "max_write_buffer_number": 2,
        "block_cache_size": 32 * mib,
    }


def build_topology(app: faust.App, policy: RetryPolicy) -> Topology:
    wires = wiring(policy)
    names = sorted({name for wire in wires for name in (*wire.reads, *wire.writes)})
    topics = {
        name: app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=topic_spec(name).partitions,
        )
        for name in names
    }
    dedupe_seen = app.Table(
        "dedupe_seen",
        default=None,
        key_type=str,
        # [first-seen epoch ms, "topic[partition]@offset"] as JSON (see domain.dedupe).
        value_type=None,
        # Co-partitioned with the webhook topics: an entry lives in the partition of the
        # webhook that created it.
        partitions=topic_spec(WEBHOOK_TOPICS[0]).partitions,
        options=rocksdb_options(),
        help="dedupe key (provider:eventId) -> [first-seen epoch ms, record position]",
    )
    # The join's state, co-partitioned with the join topics (all keyed by order id).
    orders_state = app.Table(
        "orders_state",
        default=None,
        key_type=str,
        value_type=None,
        partitions=topic_spec("orders").partitions,
        options=rocksdb_options(),
        help="order id -> the order as the join knows it (JSON, streams.domain.orders.Order)",
    )
    payments_waiting = app.Table(
        "payments_waiting",
        default=None,
        key_type=str,
        value_type=None,
        partitions=topic_spec("orders").partitions,
        options=rocksdb_options(),
        help="order id -> events that arrived before their order (JSON, domain.orders.Held)",
    )
    return Topology(
        app=app,
        topics=topics,
        dedupe_seen=dedupe_seen,
        wires=wires,
        orders_state=orders_state,
        payments_waiting=payments_waiting,
    )
