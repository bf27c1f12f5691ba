"""The topic catalog and the checked-in schema catalog: the one place topics are declared.

**Topics.** Every Kafka topic Sluice reads or writes is a :class:`TopicSpec` in
:data:`TOPICS`: its name, the schema subject of its values, which entity its key is,
partitions, retention and compaction. ``streams/topology.py`` and ``sluice topics create``
read this module; nothing else declares a topic. Names are lower-case and dotted.
``orders`` and every ``billing.*`` topic share :data:`JOIN_PARTITIONS` partitions and are
keyed by order id, so the orders⇄payments join is co-partitioned. ``retry.<delay>``
topics have no schema of their own: they carry the failed record's key, value bytes and
headers unchanged (plus attempt, due-time, origin and reason headers), so a record goes
back to its origin topic byte-identical.

**Schemas.** Each subject is a directory ``schemas/avro/<subject>/`` holding
``<version>.avsc`` files, versions counting up from 1. A subject is named after the full
name of the Avro record it holds (``sluice.billing.BillingEvent``: Confluent's
RecordNameStrategy); in registry mode the codec registers the same schema under each
topic's TopicNameStrategy subject ``<topic>-value`` instead. Several topics may share a
subject: the nine ``billing.*`` topics carry one record type, as do both webhook topics.

**Schema ids.** ``schemas/ids.json`` maps subject → version → schema id, so the embedded
stack needs no registry: the id in byte 1-4 of every value written without a registry
comes from this table. The table is **append-only**:

- every ``.avsc`` file has an id; ids never collide;
- an id, once given to a (subject, version), never changes and is never reused, and a
  published ``.avsc`` file is never edited: data on the topics is read by id, so
  changing either would make old records decode with the wrong schema;
- a new version gets the next id (the largest id in the table plus one) and must be
  BACKWARD compatible with the previous version (``schemas/compat.py``).

``tests/test_schemas.py`` enforces all three against a pinned copy of the table.
Catalog ids start at 1001, away from the low ids a fresh registry hands out, so a value
written without a registry fails loudly ("unknown schema id") rather than decoding with
the wrong schema if it ever reaches a registry-mode consumer.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from base.errors import SluiceError

__all__ = [
    "AVRO_DIR",
    "BILLING_EVENT_SUBJECT",
    "BILLING_TOPICS",
    "CACHE_INVALIDATE_SUBJECT",
    "DAY_MS",
    "DEAD_LETTER_SUBJECT",
    "IDS_PATH",
    "INVENTORY_RELEASE_SUBJECT",
    "JOIN_PARTITIONS",
    "JOIN_TOPICS",
    "LEAD_DELIVERY_COMMAND_SUBJECT",
    "LEAD_PARTITIONS",
    "LEAD_RECEIVED_SUBJECT",
    "NOTIFICATION_REQUEST_SUBJECT",
    "ORDER_EVENT_SUBJECT",
    "ORDER_LIFECYCLE_SUBJECT",
    "PAYMENT_COMMAND_SUBJECT",
    "PAYMENT_SETUP_SUBJECT",
    "PAYMENT_TOPICS",
    "RAW_WEBHOOK_SUBJECT",
    "REPLY_SUBJECT",
    "RETRY_DELAYS",
    "RUNTIME_CONFIG_SUBJECT",
    "SEARCH_INDEX_SUBJECT",
    "TOPICS",
    "USER_EVENT_SUBJECT",
    "WEBHOOK_OUTCOMES_TOPIC",
    "WEBHOOK_OUTCOME_SUBJECT",
    "WEBHOOK_PARTITIONS",
    "WEBHOOK_RETENTION_MS",
    "WEBHOOK_TOPICS",
    "SchemaCatalog",
    "SchemaFile",
    "SchemaNotFound",
    "TopicSpec",
    "UnknownTopic",
    "all_topics",
    "default_catalog",
    "retry_topic_name",
    "retry_topic_spec",
    "topic_spec",
]

_HERE = Path(__file__).parent
AVRO_DIR = _HERE / "avro"
IDS_PATH = _HERE / "ids.json"

DAY_MS = 24 * 60 * 60 * 1000
WEBHOOK_RETENTION_MS = 30 * DAY_MS
"""Raw webhook (and partner lead) topics keep 30 days: Stripe's resend window."""

JOIN_PARTITIONS = 6
"""Partitions of ``orders`` and every ``billing.*`` topic: the join is co-partitioned."""

WEBHOOK_PARTITIONS = 3

RAW_WEBHOOK_SUBJECT = "sluice.webhooks.RawWebhook"
WEBHOOK_OUTCOME_SUBJECT = "sluice.webhooks.WebhookOutcome"
BILLING_EVENT_SUBJECT = "sluice.billing.BillingEvent"
ORDER_EVENT_SUBJECT = "sluice.orders.OrderEvent"
DEAD_LETTER_SUBJECT = "sluice.dlq.DeadLetter"
RUNTIME_CONFIG_SUBJECT = "sluice.config.RuntimeConfigEntry"
ORDER_LIFECYCLE_SUBJECT = "sluice.orders.OrderLifecycleEvent"
PAYMENT_COMMAND_SUBJECT = "sluice.payments.PaymentCommand"
PAYMENT_SETUP_SUBJECT = "sluice.payments.PaymentSetupEvent"
REPLY_SUBJECT = "sluice.commands.Reply"
INVENTORY_RELEASE_SUBJECT = "sluice.commands.InventoryRelease"
LEAD_RECEIVED_SUBJECT = "sluice.leads.LeadReceived"
LEAD_DELIVERY_COMMAND_SUBJECT = "sluice.leads.LeadDeliveryCommand"
USER_EVENT_SUBJECT = "sluice.users.UserEvent"
SEARCH_INDEX_SUBJECT = "sluice.search.IndexCommand"
CACHE_INVALIDATE_SUBJECT = "sluice.cache.InvalidateCommand"
NOTIFICATION_REQUEST_SUBJECT = "sluice.notifications.NotificationRequest"
LEAD_PARTITIONS = 3
"""Partitions of ``leads.received`` and ``commands.leads.deliver``: both keyed by lead id,
so a lead's deliveries and the commands about it meet in one partition."""


def _avro(name: str) -> str:
    """The content type of Avro records of one kind: ``application/vnd.sluice.<name>+avro``."""
    return f"application/vnd.sluice.{name}+avro"


_TOPIC_NAME = re.compile(r"[a-z][a-z0-9]*(?:\.[a-z0-9]+)*")
_RETRY_NAME = re.compile(r"retry\.([1-9][0-9]*)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class UnknownTopic(SluiceError, KeyError):
    """The topic is not in the catalog (a programming or deployment error)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SchemaNotFound(SluiceError, LookupError):
    """No checked-in schema (or id) for what was asked: a programming or deployment error,
    never the sender's fault."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One Kafka topic as Sluice declares it.

    :param name: lower-case dotted topic name.
    :param subject: schema subject of the values, or ``None`` when the topic has no schema
        of its own (``retry.<delay>``) or none is defined yet.
    :param key: which entity the record key holds: a record field name (``orderId``,
        ``providerEventId``, ``key``), a composite (``partnerId:externalLeadId``), or
        ``origin`` for the failed record's own key, unchanged (retry and dead-letter
        topics). Keys are UTF-8 strings.
    :param partitions: partition count.
    :param retention_ms: ``retention.ms``, or ``None`` for the broker default.
    :param compacted: ``cleanup.policy=compact`` (the latest record per key is kept).
    :param doc: what the topic carries and who writes it.
    :param content_type: the ``content-type`` header of the records Sluice writes to the
        topic (``schemas.headers.record_headers`` reads it), or ``None`` when they carry
        none of their own: ``retry.<delay>`` records keep the original's headers, and
        topics without a schema yet have no records from Sluice.
    """

    name: str
    subject: str | None
    key: str
    partitions: int
    retention_ms: int | None
    compacted: bool
    doc: str
    content_type: str | None = None

    def __post_init__(self) -> None:
        if not _TOPIC_NAME.fullmatch(self.name):
            raise ValueError(f"topic name {self.name!r} is not lower-case dotted")
        if self.partitions < 1:
            raise ValueError(f"topic {self.name}: partitions must be at least 1")

    def kafka_config(self) -> dict[str, str]:
        """The topic-level configs to create the topic with (``cleanup.policy``, ...)."""
        config = {"cleanup.policy": "compact" if self.compacted else "delete"}
        if self.retention_ms is not None:
            config["retention.ms"] = str(self.retention_ms)
        return config


def retry_topic_name(delay_seconds: float) -> str:
    """The canonical ``retry.<delay>`` name for a delay: ``retry.5s``, ``retry.5m``,
    ``retry.1h``, ``retry.500ms``.

    :raises ValueError: if the delay is not positive or not a whole number of ms.
    """
    millis = round(delay_seconds * 1000)
    if millis <= 0 or abs(millis - delay_seconds * 1000) > 1e-6:
        raise ValueError(f"retry delay must be a positive whole number of ms: {delay_seconds}")
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis % size == 0:
            return f"retry.{millis // size}{unit}"
    return f"retry.{millis}ms"


RETRY_DELAYS: tuple[tuple[str, float], ...] = tuple(
    (retry_topic_name(seconds), seconds) for seconds in (5.0, 30.0, 300.0, 1800.0)
)
"""The default retry schedule: (topic, delay in seconds), shortest first. Each delay
topic holds records of one delay only, so its consumer can wait for the head record."""


def retry_topic_spec(delay_seconds: float) -> TopicSpec:
    """The spec of the delay topic for ``delay_seconds``, for schedules beyond the default.

    :raises ValueError: as :func:`retry_topic_name`.
    """
    name = retry_topic_name(delay_seconds)
    return TopicSpec(
        name=name,
        subject=None,
        key="origin",
        partitions=3,
        retention_ms=7 * DAY_MS,
        compacted=False,
        doc=(
            f"Records whose side effect failed transiently, held {name[6:]} before going "
            "back to their origin topic. Key, value bytes and headers are the original's, "
            "unchanged (no schema of its own); headers add the attempt number, due time, "
            "origin topic/partition/offset and reason."
        ),
    )


_BILLING_DOCS = {
    "billing.payment.succeeded": "A payment succeeded (Stripe payment_intent.succeeded, "
    "Razorpay payment.captured).",
    "billing.payment.failed": "A payment failed or was cancelled (Stripe "
    "payment_intent.payment_failed / .canceled, Razorpay payment.failed).",
    "billing.payment.pending": "A payment is processing or needs customer action (Stripe "
    "payment_intent.processing / .requires_action).",
    "billing.payment.refunded": "A full or partial refund, or a failed refund (Stripe "
    "charge.refunded, refund.*, Razorpay refund.processed / .failed).",
    "billing.checkout.completed": "A checkout session completed or its async payment succeeded.",
    "billing.checkout.failed": "A checkout session's async payment failed.",
    "billing.checkout.expired": "A checkout session expired unpaid.",
    "billing.invoice.updated": "An invoice was finalized, paid or failed payment.",
    "billing.subscription.updated": "A subscription was created, updated, deleted, paused "
    "or resumed (Stripe customer.subscription.*, Razorpay subscription.*).",
}
BILLING_TOPICS: tuple[str, ...] = tuple(_BILLING_DOCS)
WEBHOOK_TOPICS: tuple[str, ...] = ("webhooks.stripe", "webhooks.razorpay")
"""The raw webhook topics, one per provider (ingress writes them)."""
WEBHOOK_OUTCOMES_TOPIC = "webhooks.outcomes"
PAYMENT_TOPICS: tuple[str, ...] = tuple(
    name for name in BILLING_TOPICS if name.startswith(("billing.payment.", "billing.checkout."))
)
"""The billing topics about an order's payment (keyed by order id): the join reads them."""
JOIN_TOPICS: tuple[str, ...] = (
    "orders",
    "commands.payments",
    "payments.setup",
    "join.ticks",
    *PAYMENT_TOPICS,
)
"""Topics the orders⇄payments join reads: same partition count, keyed by order id."""

# Invoices and subscriptions are not joined to orders; keying them by their own id keeps
# per-object order for their projections. They still use JOIN_PARTITIONS so that every
# billing.* topic is interchangeable for the topology.
_BILLING_KEYS = {
    "billing.invoice.updated": "providerObjectId",
    "billing.subscription.updated": "providerObjectId",
}

_TOPIC_LIST: tuple[TopicSpec, ...] = (
    *(
        TopicSpec(
            name=name,
            subject=RAW_WEBHOOK_SUBJECT,
            key="providerEventId",
            partitions=WEBHOOK_PARTITIONS,
            retention_ms=WEBHOOK_RETENTION_MS,
            compacted=False,
            doc=f"Verified {name.split('.')[1].title()} webhooks exactly as received "
            "(raw body, signature header), written by ingress before it answers 2xx.",
            content_type=_avro("raw-webhook"),
        )
        for name in WEBHOOK_TOPICS
    ),
    TopicSpec(
        name=WEBHOOK_OUTCOMES_TOPIC,
        subject=WEBHOOK_OUTCOME_SUBJECT,
        key="providerEventId",
        partitions=WEBHOOK_PARTITIONS,
        retention_ms=7 * DAY_MS,
        compacted=False,
        doc="What normalisation did with each raw webhook it processed (PROCESSED, "
        "IGNORED, FAILED), with the webhook as received: written by the normalise agent, "
        "read by the webhook_events projection, so no webhook is decoded and normalised "
        "twice. A hand-off, kept 7 days; the raw topics keep the webhooks 30.",
        content_type=_avro("webhook-outcome"),
    ),
    *(
        TopicSpec(
            name=name,
            subject=BILLING_EVENT_SUBJECT,
            key=_BILLING_KEYS.get(name, "orderId"),
            partitions=JOIN_PARTITIONS,
            retention_ms=None,
            compacted=False,
            doc=doc
            + (
                " Keyed by the provider object id."
                if name in _BILLING_KEYS
                else " Keyed by order id (the provider object id when there is none)."
            ),
            content_type=_avro("billing-event"),
        )
        for name, doc in _BILLING_DOCS.items()
    ),
    TopicSpec(
        name="orders",
        subject=ORDER_EVENT_SUBJECT,
        key="orderId",
        partitions=JOIN_PARTITIONS,
        retention_ms=None,
        compacted=False,
        doc="Order lifecycle events from internal services (order.created, "
        "order.cancelled), posted to POST /internal/v1/events.",
        content_type=_avro("order-event"),
    ),
    TopicSpec(
        name="orders.lifecycle",
        subject=ORDER_LIFECYCLE_SUBJECT,
        key="orderId",
        partitions=JOIN_PARTITIONS,
        retention_ms=None,
        compacted=False,
        doc="What the orders⇄payments join decided: order.pending_payment, order.paid, "
        "order.payment_failed, order.payment_mismatch, order.refunded, order.cancelled, "
        "order.payment_setup_failed, order.payment_orphaned, order.updated. Each record "
        "carries the order's state after the event and its revision; the Postgres and "
        "Elasticsearch projections read it.",
        content_type=_avro("order-lifecycle"),
    ),
    TopicSpec(
        name="commands.payments",
        subject=PAYMENT_COMMAND_SUBJECT,
        key="orderId",
        partitions=JOIN_PARTITIONS,
        retention_ms=7 * DAY_MS,
        compacted=False,
        doc="Payment commands naming an order (create intent, create checkout session, "
        "refund), from POST /internal/v1/payments/...; the join checks them against the "
        "order and forwards valid ones to commands.stripe.",
        content_type=_avro("payment-command"),
    ),
    TopicSpec(
        name="commands.stripe",
        subject=PAYMENT_COMMAND_SUBJECT,
        key="orderId",
        partitions=JOIN_PARTITIONS,
        retention_ms=7 * DAY_MS,
        compacted=False,
        doc="Stripe API calls to make, with the order's amount and currency filled in by "
        "the join; the stripe_calls agent makes them (idempotency keys derived from the "
        "order or request id) and writes payments.setup and replies.",
        content_type=_avro("payment-command"),
    ),
    TopicSpec(
        name="payments.setup",
        subject=PAYMENT_SETUP_SUBJECT,
        key="orderId",
        partitions=JOIN_PARTITIONS,
        retention_ms=None,
        compacted=False,
        doc="Outcomes of Stripe API calls for orders: payment.intent.created (intent id "
        "and client secret), payment.checkout.created, payment.refund.created, "
        "payment.setup_failed.",
        content_type=_avro("payment-setup"),
    ),
    TopicSpec(
        name="join.ticks",
        subject=None,
        key="partition",
        partitions=JOIN_PARTITIONS,
        retention_ms=DAY_MS,
        compacted=False,
        doc="Internal clock of the join: an empty record per partition every "
        "SLUICE_ORPHAN_CHECK_EVERY, so a quiet partition still reports its orphaned "
        "payments. No schema; the value is empty.",
    ),
    TopicSpec(
        name="replies",
        subject=REPLY_SUBJECT,
        key="taskId",
        partitions=3,
        retention_ms=DAY_MS,
        compacted=False,
        doc="Request/reply answers (HTTP status and JSON body) for commands whose caller "
        "waits; every ingress reads all of it and answers the caller holding the task id.",
        content_type=_avro("reply"),
    ),
    TopicSpec(
        name="commands.inventory.release",
        subject=INVENTORY_RELEASE_SUBJECT,
        key="orderId",
        partitions=JOIN_PARTITIONS,
        retention_ms=None,
        compacted=False,
        doc="Compensation: release the stock of an order whose payment failed, whose "
        "checkout expired or that was cancelled (at most once per order).",
        content_type=_avro("inventory-release"),
    ),
    TopicSpec(
        name="leads.received",
        subject=LEAD_RECEIVED_SUBJECT,
        key="leadId",
        partitions=LEAD_PARTITIONS,
        retention_ms=WEBHOOK_RETENTION_MS,
        compacted=False,
        doc="Partner leads accepted by the ingress (POST /v1/webhooks/partner/leads), "
        "verified and mapped to the canonical lead, the partner's payload kept; keyed by "
        "the deterministic lead id, so every copy of a lead lands in one partition. The "
        "lead delivery agent stores and delivers them.",
        content_type=_avro("lead-received"),
    ),
    TopicSpec(
        name="commands.leads.deliver",
        subject=LEAD_DELIVERY_COMMAND_SUBJECT,
        key="leadId",
        partitions=LEAD_PARTITIONS,
        retention_ms=7 * DAY_MS,
        compacted=False,
        doc="Deliver-now commands from POST /internal/v1/leads/deliver, keyed by lead id "
        "(co-partitioned with leads.received); answered on replies.",
        content_type=_avro("lead-delivery-command"),
    ),
    TopicSpec(
        name="users.contacts",
        subject=USER_EVENT_SUBJECT,
        key="userId",
        partitions=3,
        retention_ms=None,
        compacted=True,
        doc="How to reach each user (user.contact_updated from POST /internal/v1/events): "
        "email, phone, push tokens, preferred channels, locale. Compacted: the latest "
        "contact per user is kept; the worker projects it into user_contacts.",
        content_type=_avro("user-event"),
    ),
    TopicSpec(
        name="notifications.requested",
        subject=NOTIFICATION_REQUEST_SUBJECT,
        key="to",
        partitions=3,
        retention_ms=7 * DAY_MS,
        compacted=False,
        doc="Notifications to send (POST /internal/v1/notifications/send, and the order "
        "and billing lifecycle), keyed by the recipient so one user's notifications are "
        "in order for the per-user cap; the notify agent renders, sends and records them.",
        content_type=_avro("notification-request"),
    ),
    TopicSpec(
        name="commands.search.index",
        subject=SEARCH_INDEX_SUBJECT,
        key="index:id",
        partitions=3,
        retention_ms=7 * DAY_MS,
        compacted=False,
        doc="Search document upserts and deletes from POST /internal/v1/search/index, "
        "keyed by index:id; the search agent writes them with _bulk and external "
        "versioning.",
        content_type=_avro("search-index-command"),
    ),
    TopicSpec(
        name="commands.cache.invalidate",
        subject=CACHE_INVALIDATE_SUBJECT,
        key="taskId",
        partitions=3,
        retention_ms=DAY_MS,
        compacted=False,
        doc="Cache keys and prefixed patterns to drop from Redis (POST "
        "/internal/v1/cache/invalidate, and projections' key templates after a commit); "
        "answered on replies when the caller waits.",
        content_type=_avro("cache-invalidate-command"),
    ),
    TopicSpec(
        name="config.runtime",
        subject=RUNTIME_CONFIG_SUBJECT,
        key="key",
        partitions=1,
        retention_ms=None,
        compacted=True,
        doc="Runtime config, latest value per key; a tombstone deletes the key. One "
        "partition, so every reader sees all writes in one order.",
        content_type=_avro("runtime-config-entry"),
    ),
    *(retry_topic_spec(seconds) for _, seconds in RETRY_DELAYS),
    TopicSpec(
        name="dlq",
        subject=DEAD_LETTER_SUBJECT,
        key="origin",
        partitions=1,
        retention_ms=30 * DAY_MS,
        compacted=False,
        doc="Dead letters: records that failed permanently or exhausted their retries, "
        "with origin and reason, kept 30 days to list and replay. One partition keeps "
        "them in failure order.",
        content_type=_avro("dead-letter"),
    ),
    TopicSpec(
        name="alerts",
        subject=None,
        key="eventId",
        partitions=1,
        retention_ms=None,
        compacted=False,
        doc="Alert events, e.g. a record that exhausted its retries (schema to come).",
        content_type="application/json",
    ),
)

TOPICS: Mapping[str, TopicSpec] = MappingProxyType({t.name: t for t in _TOPIC_LIST})
"""Every topic of the default deployment, by name, in declaration order."""


def topic_spec(name: str) -> TopicSpec:
    """The spec of topic ``name``.

    Besides :data:`TOPICS`, any canonical ``retry.<delay>`` name resolves (a configured
    retry schedule may use delays beyond :data:`RETRY_DELAYS`).

    :raises UnknownTopic: (a ``KeyError``) naming the topic, when it is not in the catalog.
    """
    spec = TOPICS.get(name)
    if spec is not None:
        return spec
    match = _RETRY_NAME.fullmatch(name)
    if match is not None:
        seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        if retry_topic_name(seconds) == name:
            return retry_topic_spec(seconds)
        raise UnknownTopic(
            f"unknown topic {name!r}: the delay topic for that delay is "
            f"{retry_topic_name(seconds)!r}"
        )
    raise UnknownTopic(
        f"unknown topic {name!r}: not in the topic catalog (schemas/catalog.py); "
        f"known topics: {', '.join(TOPICS)}"
    )


def all_topics() -> list[TopicSpec]:
    """Every topic of the default deployment (including the default retry topics)."""
    return list(TOPICS.values())


@dataclass(frozen=True, slots=True)
class SchemaFile:
    """One checked-in schema version: ``schemas/avro/<subject>/<version>.avsc``."""

    subject: str
    version: int
    path: Path


class SchemaCatalog:
    """The ``.avsc`` files and the schema id table, loaded from disk.

    Files are listed when the catalog is built; each schema is read and parsed the first
    time it is asked for, then cached (thread-safe). Parsed schemas are shared: callers
    must not mutate them.

    :param avro_dir: the directory holding ``<subject>/<version>.avsc``.
    :param ids_path: the id table, ``{subject: {version: id}}``.
    :raises ValueError: if a file name is not ``<positive int>.avsc`` or the id table is
        malformed.
    """

    def __init__(self, avro_dir: Path = AVRO_DIR, ids_path: Path = IDS_PATH) -> None:
        self._avro_dir = avro_dir
        self._files: dict[str, dict[int, SchemaFile]] = {}
        for subject_dir in sorted(p for p in avro_dir.iterdir() if p.is_dir()):
            versions: dict[int, SchemaFile] = {}
            for path in subject_dir.glob("*.avsc"):
                if not re.fullmatch(r"[1-9][0-9]*", path.stem):
                    raise ValueError(f"{path}: schema files are named <version>.avsc")
                versions[int(path.stem)] = SchemaFile(subject_dir.name, int(path.stem), path)
            if versions:
                self._files[subject_dir.name] = dict(sorted(versions.items()))
        self._ids = _load_ids(ids_path)
        self._by_id: dict[int, tuple[str, int]] = {}
        for subject, versions_ in self._ids.items():
            for version, schema_id in versions_.items():
                owner = self._by_id.setdefault(schema_id, (subject, version))
                if owner != (subject, version):
                    raise ValueError(
                        f"{ids_path}: schema id {schema_id} is given to both {owner[0]} "
                        f"v{owner[1]} and {subject} v{version}"
                    )
        self._lock = threading.Lock()
        self._raw: dict[tuple[str, int], dict[str, Any]] = {}
        self._parsed: dict[tuple[str, int], Any] = {}
        self._canonical: dict[tuple[str, int], str] = {}
        self._by_name: dict[str, str] | None = None

    def files(self) -> list[SchemaFile]:
        """Every schema file, by subject then version."""
        return [f for versions in self._files.values() for f in versions.values()]

    def subjects(self) -> list[str]:
        """Subjects that have at least one schema file, sorted."""
        return list(self._files)

    def versions(self, subject: str) -> list[int]:
        """The subject's versions, ascending.

        :raises SchemaNotFound: if the subject has no schema file.
        """
        return list(self._subject_files(subject))

    def latest_version(self, subject: str) -> int:
        """The subject's highest version: what producers write.

        :raises SchemaNotFound: if the subject has no schema file.
        """
        return next(reversed(self._subject_files(subject)))

    def schema(self, subject: str, version: int) -> dict[str, Any]:
        """The schema as written in its file (JSON), as a fresh copy.

        :raises SchemaNotFound: if there is no such file.
        """
        return copy.deepcopy(self._load_raw(subject, version))

    def parsed(self, subject: str, version: int) -> Any:
        """The schema parsed by ``fastavro.parse_schema`` (cached; do not mutate).

        :raises SchemaNotFound: if there is no such file.
        """
        key = (subject, version)
        parsed = self._parsed.get(key)
        if parsed is None:
            parsed = fastavro.parse_schema(self._load_raw(subject, version))
            with self._lock:
                parsed = self._parsed.setdefault(key, parsed)
        return parsed

    def schema_id(self, subject: str, version: int) -> int:
        """The checked-in schema id of (subject, version).

        :raises SchemaNotFound: if the id table has no entry for it.
        """
        try:
            return self._ids[subject][version]
        except KeyError:
            raise SchemaNotFound(
                f"no schema id for {subject} version {version} in {IDS_PATH.name}; "
                "append one (see schemas/catalog.py)"
            ) from None

    def lookup_id(self, schema_id: int) -> tuple[str, int] | None:
        """The (subject, version) that owns ``schema_id`` in the id table, if any."""
        return self._by_id.get(schema_id)

    def ids(self) -> Mapping[str, Mapping[int, int]]:
        """The id table: subject → version → id (read-only view)."""
        return MappingProxyType({s: MappingProxyType(v) for s, v in self._ids.items()})

    def subject_for_name(self, fullname: str) -> str | None:
        """The subject whose schemas define the record named ``fullname``, if any."""
        if self._by_name is None:
            by_name = {
                str(self.parsed(f.subject, f.version)["name"]): f.subject for f in self.files()
            }
            self._by_name = by_name
        return self._by_name.get(fullname)

    def match_version(self, subject: str, schema: Any) -> int | None:
        """The highest version of ``subject`` whose Parsing Canonical Form equals that of
        ``schema`` (a parsed schema), or ``None`` when it is none of the checked-in ones.
        """
        wanted = to_parsing_canonical_form(schema)
        for version in reversed(self.versions(subject)):
            key = (subject, version)
            canonical = self._canonical.get(key)
            if canonical is None:
                canonical = to_parsing_canonical_form(self.parsed(subject, version))
                self._canonical[key] = canonical
            if canonical == wanted:
                return version
        return None

    def _subject_files(self, subject: str) -> dict[int, SchemaFile]:
        versions = self._files.get(subject)
        if not versions:
            raise SchemaNotFound(f"no schema files for subject {subject!r} in {self._avro_dir}")
        return versions

    def _load_raw(self, subject: str, version: int) -> dict[str, Any]:
        key = (subject, version)
        raw = self._raw.get(key)
        if raw is None:
            schema_file = self._subject_files(subject).get(version)
            if schema_file is None:
                raise SchemaNotFound(f"no schema file for {subject} version {version}")
            raw = json.loads(schema_file.path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict):
                raise ValueError(f"{schema_file.path}: expected a JSON object")
            with self._lock:
                raw = self._raw.setdefault(key, raw)
        return raw


def _load_ids(path: Path) -> dict[str, dict[int, int]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected {{subject: {{version: id}}}}")
    table: dict[str, dict[int, int]] = {}
    for subject, versions in data.items():
        if not isinstance(versions, dict):
            raise ValueError(f"{path}: {subject}: expected {{version: id}}")
        entries: dict[int, int] = {}
        for version, schema_id in versions.items():
            if not (str(version).isdigit() and type(schema_id) is int and schema_id > 0):
                raise ValueError(f"{path}: {subject}: bad entry {version!r}: {schema_id!r}")
            entries[int(version)] = schema_id
        table[subject] = entries
    return table


@functools.cache
def default_catalog() -> SchemaCatalog:
    """The catalog of the schemas shipped in this package (built once)."""
    return SchemaCatalog()
