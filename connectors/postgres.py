"""The Postgres projections: raw webhooks, the billing tables and orders (DESIGN §6).

One class, :class:`PostgresProjection`, an async context manager over a psycopg 3
``AsyncConnectionPool``. Its write methods are idempotent and batched, and safe with
out-of-order events and concurrent writers:

- every billing effect is an ``INSERT ... ON CONFLICT DO UPDATE`` whose status guard is
  evaluated *in SQL* against the row as it is now (``streams/domain/status.py`` holds the
  rules; the SQL here is generated from its tables, never written twice);
- a batch is one transaction: the ``processed_events`` entry of an event is written by
  the same statement that applies it, and an event already in ``processed_events`` for
  that consumer is skipped;
- a batch is sent in pipeline mode: a handful of round trips whatever its size (the
  statements, the commit, and the pool's connection check);
- ``orders`` holds snapshots: a row is replaced only by a higher ``revision`` (the
  join's counter), so replays and late records never overwrite newer state.

Driver errors come out as :class:`~base.errors.TransientError` (connection lost or
refused, no pooled connection within the timeout, serialization failure, deadlock,
admin shutdown, statement timeout) or :class:`~base.errors.PermanentError` (data and
constraint errors: bad input); anything else — a missing table, an SQL bug — is not
translated and crashes loudly. The connector never retries: the caller's retry topics
do. While the server is down calls fail within ``timeout`` seconds; the pool reconnects
by itself once it is back.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeVar, get_args

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import TupleRow, class_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout, TooManyRequests

from base.errors import PermanentError, SluiceError, TransientError
from streams.domain.orders import OrderStatus
from streams.domain.status import (
    CHECKOUT_RANK,
    INVOICE_RANK,
    PAYMENT_RANK,
    REFUND_RANK,
    SUBSCRIPTION_TIE_RANK,
    WEBHOOK_RANK,
    PaymentStatus,
    UnknownStatus,
    WebhookStatus,
    checkout_status_for_event,
    invoice_status,
    payment_status_for_event,
    payment_status_hint_from_refund,
    refund_status,
    subscription_status,
)

__all__ = [
    "BILLING_TOPICS",
    "ORDER_STATUSES",
    "PROJECTION_TABLES",
    "CheckoutSession",
    "Invoice",
    "OrderRow",
    "Payment",
    "PostgresProjection",
    "ProjectionInputError",
    "ProjectionTable",
    "Refund",
    "Subscription",
    "WebhookEvent",
    "WebhookRow",
    "translate_error",
]

_log = logging.getLogger(__name__)
_R = TypeVar("_R")

ProjectionTable = Literal[
    "webhook_events",
    "payments",
    "refunds",
    "invoices",
    "subscriptions",
    "checkout_sessions",
    "orders",
    "processed_events",
]
PROJECTION_TABLES: Final[frozenset[str]] = frozenset(get_args(ProjectionTable))
"""The tables :meth:`PostgresProjection.count` accepts."""

_PAYMENT_TOPICS: Final = frozenset(
    {"billing.payment.succeeded", "billing.payment.failed", "billing.payment.pending"}
)
_REFUND_TOPIC: Final = "billing.payment.refunded"
_CHECKOUT_TOPICS: Final = frozenset(
    {"billing.checkout.completed", "billing.checkout.failed", "billing.checkout.expired"}
)
_INVOICE_TOPIC: Final = "billing.invoice.updated"
_SUBSCRIPTION_TOPIC: Final = "billing.subscription.updated"
BILLING_TOPICS: Final[frozenset[str]] = frozenset(
    {*_PAYMENT_TOPICS, _REFUND_TOPIC, *_CHECKOUT_TOPICS, _INVOICE_TOPIC, _SUBSCRIPTION_TOPIC}
)
"""The nine ``billing.*`` topics :meth:`PostgresProjection.apply_billing` projects."""

ORDER_STATUSES: Final[frozenset[str]] = frozenset(
    value for name, value in vars(OrderStatus).items() if name.isupper()
)
"""The ``orders.status`` vocabulary (``streams.domain.orders.OrderStatus``)."""

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_TRANSIENT_SQLSTATE_CLASSES: Final = frozenset(
    {
        "08",  # connection exception
        "40",  # transaction rollback: serialization_failure, deadlock_detected
        "53",  # insufficient resources: too many connections, disk full
        "57",  # operator intervention: admin/crash shutdown, cannot connect now, query canceled
        "58",  # system error (I/O)
    }
)
_TRANSIENT_SQLSTATES: Final = frozenset({"55P03"})  # lock_not_available (lock_timeout)


class ProjectionInputError(PermanentError):
    """A record cannot be projected (bad shape, unknown status); retrying cannot help.

    Raised before anything is written: the whole batch is refused, and ``event_id``
    names the offending record so the caller can dead-letter it and resubmit the rest.
    """

    def __init__(self, message: str, *, event_id: str | None, field: str | None) -> None:
        super().__init__(message)
        self.event_id = event_id
        self.field = field


def translate_error(exc: BaseException) -> SluiceError | None:
    """The Sluice error a psycopg / pool error stands for, or ``None`` to let it crash.

    Transient: connection failures and any ``OperationalError``, SQLSTATE classes 08,
    40 (serialization failure, deadlock), 53, 57 (admin shutdown, statement timeout),
    58 and ``lock_not_available``, pool timeouts. Permanent: classes 22 (data) and 23
    (constraints) — the input was bad. Everything else (undefined table, syntax errors:
    a deployment or code bug) is ``None``. Messages carry the class, SQLSTATE and
    primary message only, never row values.
    """
    if isinstance(exc, PoolTimeout | TooManyRequests):
        return TransientError(f"postgres: no connection available: {exc}")
    if not isinstance(exc, psycopg.Error):
        return None
    state = exc.sqlstate or ""
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError) or state[:2] in {"22", "23"}:
        return PermanentError(f"postgres rejected the data: {_describe(exc)}")
    if (
        isinstance(exc, psycopg.OperationalError)
        or state[:2] in _TRANSIENT_SQLSTATE_CLASSES
        or state in _TRANSIENT_SQLSTATES
    ):
        return TransientError(f"postgres unavailable: {_describe(exc)}")
    return None


def _describe(exc: psycopg.Error) -> str:
    sqlstate = f" [{exc.sqlstate}]" if exc.sqlstate else ""
    lines = str(exc).strip().splitlines()
    message = exc.diag.message_primary or (lines[0] if lines else "")
    return f"{type(exc).__name__}{sqlstate}: {message}"


# -- rows ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookRow:
    """One raw webhook to record, or a later status for it.

    ``processed_at`` defaults to the database's ``now()`` when ``status`` is past
    ``RECEIVED``. ``event_id`` is the provider's event id (the dedupe key).
    """

    provider: str
    event_id: str
    event_type: str
    raw_body: bytes
    content_type: str
    received_at: dt.datetime
    signature: str | None = None
    correlation_id: str | None = None
    status: WebhookStatus = WebhookStatus.RECEIVED
    reason: str | None = None
    processed_at: dt.datetime | None = None

    @classmethod
    def from_record(
        cls,
        record: Mapping[str, Any],
        *,
        status: WebhookStatus = WebhookStatus.RECEIVED,
        reason: str | None = None,
        processed_at: dt.datetime | None = None,
    ) -> WebhookRow:
        """Build a row from a decoded ``RawWebhook`` record (``receivedAt`` in ms or a
        timezone-aware datetime). Raises ``KeyError``/``TypeError`` on a malformed one."""
        return cls(
            provider=record["provider"],
            event_id=record["providerEventId"],
            event_type=record["eventType"],
            raw_body=bytes(record["rawBody"]),
            content_type=record["contentType"],
            received_at=_timestamp(record["receivedAt"]),
            signature=record.get("signatureHeader"),
            correlation_id=record.get("correlationId"),
            status=status,
            reason=reason,
            processed_at=processed_at,
        )


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A ``webhook_events`` row."""

    provider: str
    event_id: str
    event_type: str
    signature: str | None
    raw_body: bytes
    content_type: str
    correlation_id: str | None
    received_at: dt.datetime
    processed_at: dt.datetime | None
    status: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class Payment:
    """A ``payments`` row; ``last_event_*`` name the event that last moved its status."""

    provider: str
    provider_payment_id: str
    order_id: str | None
    user_id: str | None
    amount_minor: int | None
    currency: str | None
    status: str
    amount_refunded_minor: int
    last_event_id: str
    last_event_at: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Refund:
    """A ``refunds`` row."""

    provider: str
    refund_id: str
    payment_id: str | None
    order_id: str | None
    amount_minor: int | None
    currency: str | None
    status: str
    last_event_id: str
    last_event_at: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Invoice:
    """An ``invoices`` row."""

    provider: str
    invoice_id: str
    order_id: str | None
    user_id: str | None
    payment_id: str | None
    amount_minor: int | None
    currency: str | None
    status: str
    last_event_id: str
    last_event_at: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Subscription:
    """A ``subscriptions`` row; ``last_event_at`` orders its events (newest wins)."""

    provider: str
    subscription_id: str
    user_id: str | None
    amount_minor: int | None
    currency: str | None
    status: str
    last_event_id: str
    last_event_at: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    """A ``checkout_sessions`` row."""

    provider: str
    session_id: str
    order_id: str | None
    user_id: str | None
    payment_id: str | None
    amount_minor: int | None
    currency: str | None
    status: str
    last_event_id: str
    last_event_at: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class OrderRow:
    """An ``orders`` row: the newest snapshot of an order the join published.

    ``items`` are ``{"productId", "quantity"}`` objects; ``last_event_*`` and
    ``last_reason`` name the lifecycle event whose snapshot this is. ``client_secret``
    is kept out of ``repr`` so a logged row cannot leak it.
    """

    order_id: str
    user_id: str | None
    amount_minor: int | None
    currency: str | None
    status: str
    refunded_minor: int
    payment_provider: str | None
    payment_intent_id: str | None
    client_secret: str | None = field(repr=False)
    items: list[dict[str, Any]]
    provider_ids: list[str]
    revision: int
    last_event_id: str
    last_event_type: str
    last_reason: str | None
    created_at: dt.datetime | None
    updated_at: dt.datetime


# -- SQL, generated once from the status tables ----------------------------------------
#
# Naming in the statements: the target row is aliased ``t`` and the proposed one is
# ``EXCLUDED``. A column takes the proposed value when the proposed status wins and
# otherwise only fills a NULL, so the winning event's data wins and any event can
# complete what others left out — in every arrival order. Parameters are always cast:
# a NULL parameter in a SELECT list would otherwise be typed text.

_Sql = sql.Composable
_T = sql.Identifier("t")
_EXCLUDED = sql.SQL("EXCLUDED")


def _col(alias: _Sql, column: str) -> sql.Composed:
    return sql.Composed([alias, sql.SQL("."), sql.Identifier(column)])


def _rank_of(expr: _Sql, ranks: Iterable[tuple[str, int]]) -> sql.Composed:
    """``CASE expr WHEN 'A' THEN 0 ... END`` (NULL for anything else)."""
    parts: list[_Sql] = [sql.SQL("(CASE "), expr]
    for status, rank in ranks:
        parts += [sql.SQL(" WHEN "), sql.Literal(str(status)), sql.SQL(" THEN "), sql.Literal(rank)]
    parts.append(sql.SQL(" END)"))
    return sql.Composed(parts)


def _payment_rank(expr: _Sql) -> sql.Composed:
    return _rank_of(expr, PAYMENT_RANK.items())


def _payment_status_of_rank(expr: _Sql) -> sql.Composed:
    """Inverse of ``_payment_rank`` (payment ranks are all distinct)."""
    parts: list[_Sql] = [sql.SQL("(CASE "), expr]
    for status, rank in PAYMENT_RANK.items():
        parts += [sql.SQL(" WHEN "), sql.Literal(rank), sql.SQL(" THEN "), sql.Literal(str(status))]
    parts.append(sql.SQL(" END)"))
    return sql.Composed(parts)


def _refunded_rank(amount: _Sql, refunded: _Sql) -> sql.Composed:
    """SQL twin of ``status.refunded_payment_status`` (as a rank; NULL for ``None``)."""
    return sql.SQL(
        "(CASE WHEN {refunded} > 0 AND {amount} IS NOT NULL AND {refunded} >= {amount} "
        "THEN {full} WHEN {refunded} > 0 THEN {partial} END)"
    ).format(
        refunded=refunded,
        amount=amount,
        full=sql.Literal(PAYMENT_RANK[PaymentStatus.REFUNDED]),
        partial=sql.Literal(PAYMENT_RANK[PaymentStatus.PARTIALLY_REFUNDED]),
    )


def _pick(column: str, wins: _Sql) -> sql.Composed:
    return sql.SQL(
        "CASE WHEN {wins} THEN COALESCE({new}, {old}) ELSE COALESCE({old}, {new}) END"
    ).format(wins=wins, new=_col(_EXCLUDED, column), old=_col(_T, column))


def _fills(columns: Sequence[str]) -> sql.Composed:
    return sql.SQL(" OR ").join(
        sql.SQL("({old} IS NULL AND {new} IS NOT NULL)").format(
            old=_col(_T, c), new=_col(_EXCLUDED, c)
        )
        for c in columns
    )


_CLAIM = sql.SQL(
    "claim AS ("
    "INSERT INTO processed_events (consumer, event_id) "
    "VALUES (%(consumer)s::text, %(event_id)s::text) "
    "ON CONFLICT DO NOTHING RETURNING event_id)"
)
_PARAM_TYPES: Final[Mapping[str, str]] = {
    "order_id": "text",
    "user_id": "text",
    "payment_id": "text",
    "amount_minor": "bigint",
    "currency": "text",
}


def _param(name: str) -> sql.Composed:
    # Names and types are constants of this module; values travel as parameters.
    return sql.Composed(
        [sql.SQL("%("), sql.SQL(name), sql.SQL(")s::"), sql.SQL(_PARAM_TYPES[name])]
    )


def _guarded_upsert(
    table: str, key: str, columns: Sequence[str], wins: _Sql, *, only_if: _Sql | None = None
) -> sql.Composed:
    """Claim the event, then upsert ``table`` keyed by (provider, ``key``) when ``wins``.

    Returns one row: 1 when the event was newly claimed (and applied), else 0.
    """
    return sql.SQL(
        "WITH {claim}, upsert AS ("
        "INSERT INTO {table} AS t (provider, {key}, {columns}, status, last_event_id, "
        "last_event_at) "
        "SELECT %(provider)s::text, %(object_id)s::text, {params}, %(status)s::text, "
        "claim.event_id, %(occurred_at)s::timestamptz FROM claim WHERE {only_if} "
        "ON CONFLICT (provider, {key}) DO UPDATE SET {sets}, "
        "status = CASE WHEN {wins} THEN EXCLUDED.status ELSE t.status END, "
        "last_event_id = CASE WHEN {wins} THEN EXCLUDED.last_event_id ELSE t.last_event_id END, "
        "last_event_at = CASE WHEN {wins} THEN EXCLUDED.last_event_at ELSE t.last_event_at END, "
        "updated_at = now() "
        "WHERE {wins} OR {fills}) "
        "SELECT count(*) FROM claim"
    ).format(
        claim=_CLAIM,
        table=sql.Identifier(table),
        key=sql.Identifier(key),
        columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
        params=sql.SQL(", ").join(map(_param, columns)),
        only_if=only_if if only_if is not None else sql.SQL("TRUE"),
        sets=sql.SQL(", ").join(
            sql.SQL("{c} = {v}").format(c=sql.Identifier(c), v=_pick(c, wins)) for c in columns
        ),
        wins=wins,
        fills=_fills(columns),
    )


def _rank_wins(ranks: Iterable[tuple[str, int]]) -> sql.Composed:
    pairs = list(ranks)
    return sql.SQL("({new} > {old})").format(
        new=_rank_of(_col(_EXCLUDED, "status"), pairs), old=_rank_of(_col(_T, "status"), pairs)
    )


def _subscription_wins() -> sql.Composed:
    """SQL twin of ``status.subscription_order_key``: row comparison, greatest wins."""

    def key(alias: _Sql) -> sql.Composed:
        tie = _rank_of(_col(alias, "status"), SUBSCRIPTION_TIE_RANK.items())
        return sql.SQL("({tie} >= 0, {at}, {tie}, {event})").format(
            tie=tie, at=_col(alias, "last_event_at"), event=_col(alias, "last_event_id")
        )

    return sql.SQL("({new} > {old})").format(new=key(_EXCLUDED), old=key(_T))


def _payment_upsert() -> sql.Composed:
    """payment.succeeded/failed/pending: rank guard, plus the refunds already known."""
    columns = ("order_id", "user_id", "amount_minor", "currency")
    wins = sql.SQL("({new} > {old})").format(
        new=_payment_rank(_col(_EXCLUDED, "status")), old=_payment_rank(_col(_T, "status"))
    )
    refunded = _refunded_rank(_pick("amount_minor", wins), _col(_T, "amount_refunded_minor"))
    proposed = sql.SQL("GREATEST({event}, {refunded})").format(
        event=_payment_rank(_col(_EXCLUDED, "status")), refunded=refunded
    )
    old = _payment_rank(_col(_T, "status"))
    moves = sql.SQL("({proposed} > {old})").format(proposed=proposed, old=old)
    return sql.SQL(
        "WITH {claim}, upsert AS ("
        "INSERT INTO payments AS t (provider, provider_payment_id, {columns}, status, "
        "last_event_id, last_event_at) "
        "SELECT %(provider)s::text, %(object_id)s::text, {params}, %(status)s::text, "
        "claim.event_id, %(occurred_at)s::timestamptz FROM claim "
        "ON CONFLICT (provider, provider_payment_id) DO UPDATE SET {sets}, "
        "status = {status}, "
        "last_event_id = CASE WHEN {moves} THEN EXCLUDED.last_event_id ELSE t.last_event_id END, "
        "last_event_at = CASE WHEN {moves} THEN EXCLUDED.last_event_at ELSE t.last_event_at END, "
        "updated_at = now() "
        "WHERE {moves} OR {fills}) "
        "SELECT count(*) FROM claim"
    ).format(
        claim=_CLAIM,
        columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
        params=sql.SQL(", ").join(map(_param, columns)),
        sets=sql.SQL(", ").join(
            sql.SQL("{c} = {v}").format(c=sql.Identifier(c), v=_pick(c, wins)) for c in columns
        ),
        status=_payment_status_of_rank(sql.SQL("GREATEST({old}, {p})").format(old=old, p=proposed)),
        moves=moves,
        fills=_fills(columns),
    )


def _payment_refund_update() -> sql.Composed:
    """After refunds were upserted: move their payment by its refunded total.

    The total is the greater of the sum of the payment's succeeded refunds and the
    ``amountRefundedMinor`` the provider reported; it never decreases. Creates the
    payment (amount unknown) when the refund arrived first. Not claim-gated: it is
    idempotent by itself, and runs under the payment's advisory lock so that
    concurrent batches refunding one payment each see the other's refunds.
    """
    columns = ("order_id", "user_id", "currency")
    total = _col(_EXCLUDED, "amount_refunded_minor")
    new_total = sql.SQL("GREATEST({old}, {new})").format(
        old=_col(_T, "amount_refunded_minor"), new=total
    )
    proposed = sql.SQL("GREATEST({hint}, {derived})").format(
        hint=_payment_rank(_col(_EXCLUDED, "status")),
        derived=_refunded_rank(_col(_T, "amount_minor"), new_total),
    )
    old = _payment_rank(_col(_T, "status"))
    moves = sql.SQL("({proposed} > {old})").format(proposed=proposed, old=old)
    initial = _payment_status_of_rank(
        sql.SQL("GREATEST({hint}, {derived})").format(
            hint=_payment_rank(sql.SQL("%(payment_hint)s::text")),
            derived=_refunded_rank(sql.SQL("NULL::bigint"), sql.SQL("r.total")),
        )
    )
    return sql.SQL(
        "WITH r AS (SELECT GREATEST(COALESCE(("
        "SELECT sum(amount_minor) FROM refunds "
        "WHERE provider = %(provider)s::text AND payment_id = %(payment_id)s::text "
        "AND status = {succeeded}), 0), COALESCE(%(amount_refunded_minor)s::bigint, 0)) AS total) "
        "INSERT INTO payments AS t (provider, provider_payment_id, {columns}, status, "
        "amount_refunded_minor, last_event_id, last_event_at) "
        "SELECT %(provider)s::text, %(payment_id)s::text, {params}, {initial}, r.total, "
        "%(event_id)s::text, %(occurred_at)s::timestamptz FROM r "
        "WHERE r.total > 0 OR %(payment_hint)s::text IS NOT NULL "
        "ON CONFLICT (provider, provider_payment_id) DO UPDATE SET "
        "{fill_sets}, amount_refunded_minor = {new_total}, "
        "status = {status}, "
        "last_event_id = CASE WHEN {moves} THEN EXCLUDED.last_event_id ELSE t.last_event_id END, "
        "last_event_at = CASE WHEN {moves} THEN EXCLUDED.last_event_at ELSE t.last_event_at END, "
        "updated_at = now() "
        "WHERE {moves} OR {total} > t.amount_refunded_minor OR {fills}"
    ).format(
        succeeded=sql.Literal("SUCCEEDED"),
        columns=sql.SQL(", ").join(map(sql.Identifier, columns)),
        params=sql.SQL(", ").join(map(_param, columns)),
        initial=initial,
        fill_sets=sql.SQL(", ").join(
            sql.SQL("{c} = COALESCE({old}, {new})").format(
                c=sql.Identifier(c), old=_col(_T, c), new=_col(_EXCLUDED, c)
            )
            for c in columns
        ),
        new_total=new_total,
        status=_payment_status_of_rank(sql.SQL("GREATEST({old}, {p})").format(old=old, p=proposed)),
        moves=moves,
        total=total,
        fills=_fills(columns),
    )


_PAYMENT_UPSERT: Final = _payment_upsert()
_PAYMENT_REFUND_UPDATE: Final = _payment_refund_update()
_REFUND_UPSERT: Final = _guarded_upsert(
    "refunds",
    "refund_id",
    ("payment_id", "order_id", "amount_minor", "currency"),
    _rank_wins(REFUND_RANK.items()),
)
_INVOICE_UPSERT: Final = _guarded_upsert(
    "invoices",
    "invoice_id",
    ("order_id", "user_id", "payment_id", "amount_minor", "currency"),
    _rank_wins(INVOICE_RANK.items()),
)
_CHECKOUT_UPSERT: Final = _guarded_upsert(
    "checkout_sessions",
    "session_id",
    ("order_id", "user_id", "payment_id", "amount_minor", "currency"),
    _rank_wins(CHECKOUT_RANK.items()),
)
_SUBSCRIPTION_UPSERT: Final = _guarded_upsert(
    "subscriptions",
    "subscription_id",
    ("user_id", "amount_minor", "currency"),
    _subscription_wins(),
)
# A refund record without a refund id (Stripe charge.refunded with no expanded refund)
# has no refund row to write; it only claims the event and updates the payment.
_CLAIM_ONLY: Final = sql.SQL("WITH {claim} SELECT count(*) FROM claim").format(claim=_CLAIM)
# Keys come sorted, so concurrent batches take them in one order and cannot deadlock
# on them; unnest yields them in array order.
_LOCK_PAYMENTS: Final = sql.SQL("SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) AS k")
# Every batch runs its statement groups in this order, and each group sorted by key, so
# concurrent batches mostly lock rows in the same order (a deadlock is still possible
# across tables and comes out as a TransientError).
_STATEMENT_ORDER: Final = (
    _PAYMENT_UPSERT,
    _REFUND_UPSERT,
    _CLAIM_ONLY,
    _CHECKOUT_UPSERT,
    _INVOICE_UPSERT,
    _SUBSCRIPTION_UPSERT,
)

_WEBHOOK_UPSERT: Final = sql.SQL(
    "INSERT INTO webhook_events AS t (provider, event_id, event_type, signature, raw_body, "
    "content_type, correlation_id, received_at, processed_at, status, reason) "
    "VALUES (%(provider)s::text, %(event_id)s::text, %(event_type)s::text, %(signature)s::text, "
    "%(raw_body)s::bytea, %(content_type)s::text, %(correlation_id)s::text, "
    "%(received_at)s::timestamptz, "
    "COALESCE(%(processed_at)s::timestamptz, "
    "CASE WHEN %(status)s::text <> {received} THEN now() END), "
    "%(status)s::text, %(reason)s::text) "
    "ON CONFLICT (provider, event_id) DO UPDATE SET "
    "status = EXCLUDED.status, reason = EXCLUDED.reason, processed_at = EXCLUDED.processed_at "
    "WHERE {new} > {old}"
).format(
    received=sql.Literal(str(WebhookStatus.RECEIVED)),
    new=_rank_of(_col(_EXCLUDED, "status"), WEBHOOK_RANK.items()),
    old=_rank_of(_col(_T, "status"), WEBHOOK_RANK.items()),
)


# Orders: a snapshot replaces the row only when its revision is higher, so any order
# and any repetition of snapshots ends with the newest one. Returns 1 when written.
_ORDER_COLUMNS: Final = (
    ("order_id", "text"),
    ("user_id", "text"),
    ("amount_minor", "bigint"),
    ("currency", "text"),
    ("status", "text"),
    ("refunded_minor", "bigint"),
    ("payment_provider", "text"),
    ("payment_intent_id", "text"),
    ("client_secret", "text"),
    ("items", "jsonb"),
    ("provider_ids", "text[]"),
    ("revision", "bigint"),
    ("last_event_id", "text"),
    ("last_event_type", "text"),
    ("last_reason", "text"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
)
_ORDER_UPSERT: Final = sql.SQL(
    "WITH upsert AS ("
    "INSERT INTO orders AS t ({columns}) VALUES ({values}) "
    "ON CONFLICT (order_id) DO UPDATE SET {sets} "
    "WHERE t.revision < EXCLUDED.revision RETURNING 1) "
    "SELECT count(*) FROM upsert"
).format(
    columns=sql.SQL(", ").join(sql.Identifier(name) for name, _ in _ORDER_COLUMNS),
    values=sql.SQL(", ").join(
        sql.SQL("%({})s::{}").format(sql.SQL(name), sql.SQL(kind)) for name, kind in _ORDER_COLUMNS
    ),
    sets=sql.SQL(", ").join(
        sql.SQL("{c} = {v}").format(
            c=sql.Identifier(name),
            # A snapshot always has createdAt; never forget a known one all the same.
            v=sql.SQL("COALESCE(EXCLUDED.created_at, t.created_at)")
            if name == "created_at"
            else _col(_EXCLUDED, name),
        )
        for name, _ in _ORDER_COLUMNS
        if name != "order_id"
    ),
)
_RECORD_PROCESSED: Final = sql.SQL(
    "INSERT INTO processed_events (consumer, event_id) "
    "SELECT %s::text, e FROM unnest(%s::text[]) AS e ON CONFLICT DO NOTHING"
)


def _select(row_type: type[Any], table: str, where: str) -> sql.Composed:
    columns = sql.SQL(", ").join(sql.Identifier(f.name) for f in fields(row_type))
    return sql.SQL("SELECT {columns} FROM {table} WHERE ").format(
        columns=columns, table=sql.Identifier(table)
    ) + sql.SQL(where)  # where: a constant of this module, never a value


_SELECT_PAYMENT: Final = _select(Payment, "payments", "provider = %s AND provider_payment_id = %s")
_SELECT_PAYMENTS_FOR_ORDER: Final = _select(
    Payment, "payments", "order_id = %s ORDER BY created_at, provider, provider_payment_id"
)
_SELECT_REFUND: Final = _select(Refund, "refunds", "provider = %s AND refund_id = %s")
_SELECT_REFUNDS_FOR_PAYMENT: Final = _select(
    Refund, "refunds", "provider = %s AND payment_id = %s ORDER BY created_at, refund_id"
)
_SELECT_INVOICE: Final = _select(Invoice, "invoices", "provider = %s AND invoice_id = %s")
_SELECT_SUBSCRIPTION: Final = _select(
    Subscription, "subscriptions", "provider = %s AND subscription_id = %s"
)
_SELECT_CHECKOUT: Final = _select(
    CheckoutSession, "checkout_sessions", "provider = %s AND session_id = %s"
)
_SELECT_WEBHOOK: Final = _select(WebhookEvent, "webhook_events", "provider = %s AND event_id = %s")
_SELECT_ORDER: Final = _select(OrderRow, "orders", "order_id = %s")
_SELECT_PROCESSED: Final = sql.SQL(
    "SELECT EXISTS (SELECT 1 FROM processed_events WHERE consumer = %s AND event_id = %s)"
)


# -- batch planning (pure) -------------------------------------------------------------


@dataclass
class _BillingPlan:
    """The statements of one ``apply_billing`` batch, grouped by statement."""

    gated: dict[int, tuple[sql.Composed, list[dict[str, Any]]]] = field(default_factory=dict)
    refund_updates: list[dict[str, Any]] = field(default_factory=list)
    lock_keys: set[int] = field(default_factory=set)

    def add(self, statement: sql.Composed, params: dict[str, Any]) -> None:
        self.gated.setdefault(id(statement), (statement, []))[1].append(params)

    def groups(self) -> list[tuple[sql.Composed, list[dict[str, Any]]]]:
        rank = {id(statement): n for n, statement in enumerate(_STATEMENT_ORDER)}
        # A statement missing from _STATEMENT_ORDER still runs (last), never gets lost.
        keys = sorted(self.gated, key=lambda key: rank.get(key, len(rank)))
        return [self.gated[key] for key in keys]


def _plan_billing(events: Sequence[Mapping[str, Any]], consumer: str) -> _BillingPlan:
    plan = _BillingPlan()
    for record in events:
        event_id = record.get("eventId") if isinstance(record, Mapping) else None
        try:
            _plan_one(plan, record, consumer)
        except UnknownStatus as exc:
            raise ProjectionInputError(
                f"event {event_id!r}: {exc}", event_id=_str_or_none(event_id), field="status"
            ) from exc
    for _, params in plan.gated.values():
        # One order for every batch: fewer lock-order deadlocks between concurrent ones.
        params.sort(key=lambda p: (p["provider"], p["object_id"] or "", p["event_id"]))
    plan.refund_updates.sort(key=lambda p: (p["provider"], p["payment_id"], p["event_id"]))
    return plan


def _plan_one(plan: _BillingPlan, record: Mapping[str, Any], consumer: str) -> None:
    if not isinstance(record, Mapping):
        raise ProjectionInputError("a billing record must be a mapping", event_id=None, field=None)
    check = _Checker(record)
    topic = check.text("eventType")
    if topic not in BILLING_TOPICS:
        raise ProjectionInputError(
            f"event {check.event_id!r}: {topic!r} is not a billing topic",
            event_id=check.event_id,
            field="eventType",
        )
    raw_status = check.text("status")
    params: dict[str, Any] = {
        "consumer": consumer,
        "event_id": check.event_id,
        "provider": check.text("provider"),
        "object_id": check.text("providerObjectId"),
        "order_id": check.optional_text("orderId"),
        "user_id": check.optional_text("userId"),
        "payment_id": check.optional_text("paymentId"),
        "amount_minor": check.amount("amountMinor"),
        "amount_refunded_minor": check.amount("amountRefundedMinor"),
        "currency": check.optional_text("currency"),
        "occurred_at": check.occurred_at(),
    }
    if topic in _PAYMENT_TOPICS:
        params["status"] = str(payment_status_for_event(topic))
        plan.add(_PAYMENT_UPSERT, params)
    elif topic == _REFUND_TOPIC:
        _plan_refund(plan, check, params, raw_status)
    elif topic in _CHECKOUT_TOPICS:
        params["status"] = str(checkout_status_for_event(topic))
        plan.add(_CHECKOUT_UPSERT, params)
    elif topic == _INVOICE_TOPIC:
        params["status"] = str(invoice_status(raw_status))
        plan.add(_INVOICE_UPSERT, params)
    else:
        params["status"] = str(subscription_status(raw_status))
        plan.add(_SUBSCRIPTION_UPSERT, params)


def _plan_refund(
    plan: _BillingPlan, check: _Checker, params: dict[str, Any], raw_status: str
) -> None:
    attributes = check.record.get("attributes")
    attribute = attributes.get("refund_status") if isinstance(attributes, Mapping) else None
    params["status"] = str(refund_status(raw_status, _str_or_none(attribute)))
    hint = payment_status_hint_from_refund(raw_status)
    params["payment_hint"] = None if hint is None else str(hint)
    refund_id = check.optional_text("refundId")
    if refund_id is None:
        plan.add(_CLAIM_ONLY, params)
    else:
        # The refund row is keyed by the refund id, never by whatever object the event
        # was about (a charge), so totals cannot double count.
        params["object_id"] = refund_id
        plan.add(_REFUND_UPSERT, params)
    if params["payment_id"] is not None:
        plan.refund_updates.append(params)
        plan.lock_keys.add(_payment_lock_key(params["provider"], params["payment_id"]))


def _payment_lock_key(provider: str, payment_id: str) -> int:
    digest = hashlib.blake2b(
        f"sluice.payment-refunds\0{provider}\0{payment_id}".encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


def _plan_orders(
    events: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[str]]:
    """The upserts of one ``apply_order_snapshots`` call (the newest snapshot per order,
    sorted by order id) and every event id (sorted). Raises ``ProjectionInputError``."""
    newest: dict[str, dict[str, Any]] = {}
    event_ids: set[str] = set()
    for record in events:
        if not isinstance(record, Mapping):
            raise ProjectionInputError(
                "an order lifecycle record must be a mapping", event_id=None, field=None
            )
        params = _order_params(_Checker(record))
        event_ids.add(params["last_event_id"])
        kept = newest.get(params["order_id"])
        if kept is None or (params["revision"], params["last_event_id"]) > (
            kept["revision"],
            kept["last_event_id"],
        ):
            newest[params["order_id"]] = params
    return [newest[order_id] for order_id in sorted(newest)], sorted(event_ids)


def _order_params(check: _Checker) -> dict[str, Any]:
    record = check.record
    status = check.text("status")
    if status not in ORDER_STATUSES:
        raise check._fail("status", f"{status!r} is not an order status")
    revision = record.get("revision")
    if type(revision) is not int or revision < 1:
        raise check._fail("revision", "must be an integer >= 1 (a snapshot's revision)")
    refunded = check.amount("refundedMinor")
    if refunded is None:
        raise check._fail("refundedMinor", "must be an integer (minor units)")
    created_at = record.get("createdAt")
    try:
        created = None if created_at is None else _timestamp(created_at)
    except (TypeError, ValueError, OverflowError):
        raise check._fail(
            "createdAt", "must be milliseconds since the epoch, an aware datetime or null"
        ) from None
    return {
        "order_id": check.text("orderId"),
        "user_id": check.optional_text("userId"),
        "amount_minor": check.amount("amountMinor"),
        "currency": check.optional_text("currency"),
        "status": status,
        "refunded_minor": refunded,
        "payment_provider": check.optional_text("paymentProvider"),
        "payment_intent_id": check.optional_text("paymentIntentId"),
        "client_secret": check.optional_text("clientSecret"),
        "items": Jsonb(_order_items(check)),
        "provider_ids": _text_list(check, "providerIds"),
        "revision": revision,
        "last_event_id": check.event_id,
        "last_event_type": check.text("eventType"),
        "last_reason": check.optional_text("reason"),
        "created_at": created,
        "updated_at": check.occurred_at(),
    }


def _order_items(check: _Checker) -> list[dict[str, Any]]:
    items = check.record.get("items")
    if items is None:
        return []
    if not isinstance(items, list | tuple):
        raise check._fail("items", "must be a list")
    shaped: list[dict[str, Any]] = []
    for item in items:
        product = item.get("productId") if isinstance(item, Mapping) else None
        quantity = item.get("quantity") if isinstance(item, Mapping) else None
        if not isinstance(product, str) or type(quantity) is not int:
            raise check._fail("items", "must hold {productId: string, quantity: int} objects")
        shaped.append({"productId": product, "quantity": quantity})
    return shaped


def _text_list(check: _Checker, name: str) -> list[str]:
    values = check.record.get(name)
    if values is None:
        return []
    if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
        raise check._fail(name, "must be a list of strings")
    return list(values)


class _Checker:
    """Reads one BillingEvent record, raising ``ProjectionInputError`` naming the field.

    Checks shape only (presence, types, the status vocabulary). Value rules — amounts
    not negative, currency lower-case — live in the migrations' CHECK constraints alone
    and come back as ``PermanentError`` from the database.
    """

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.record = record
        self.event_id: str | None = None
        self.event_id = self.text("eventId")

    def _fail(self, name: str, problem: str) -> ProjectionInputError:
        return ProjectionInputError(
            f"event {self.event_id!r}: {name} {problem}", event_id=self.event_id, field=name
        )

    def text(self, name: str) -> str:
        value = self.record.get(name)
        if not isinstance(value, str) or not value:
            raise self._fail(name, "must be a non-empty string")
        return value

    def optional_text(self, name: str) -> str | None:
        value = self.record.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._fail(name, "must be a string or null")
        return value or None

    def amount(self, name: str) -> int | None:
        # Only the type: value rules (non-negative) are the schema's CHECK constraints,
        # so an operator who relaxes one by migration can replay what it refused.
        value = self.record.get(name)
        if value is None:
            return None
        if type(value) is not int:
            raise self._fail(name, "must be an integer (minor units) or null")
        return value

    def occurred_at(self) -> dt.datetime:
        value = self.record.get("occurredAt")
        try:
            return _timestamp(value)
        except (TypeError, ValueError, OverflowError):
            raise self._fail(
                "occurredAt", "must be milliseconds since the epoch or an aware datetime"
            ) from None


def _timestamp(value: object) -> dt.datetime:
    """Milliseconds since the epoch (how the codec decodes timestamp-millis) or an aware
    datetime, as an aware UTC datetime. Raises ``TypeError``/``ValueError``."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value
    if type(value) is not int:
        raise TypeError(f"not a timestamp: {type(value).__name__}")
    return _EPOCH + dt.timedelta(milliseconds=value)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _webhook_params(row: WebhookRow) -> dict[str, Any]:
    return {
        "provider": row.provider,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "signature": row.signature,
        "raw_body": bytes(row.raw_body),
        "content_type": row.content_type,
        "correlation_id": row.correlation_id,
        "received_at": row.received_at,
        "processed_at": row.processed_at,
        "status": str(WebhookStatus(row.status)),
        "reason": row.reason,
    }


# -- the connector ---------------------------------------------------------------------


class PostgresProjection:
    """Writes and reads the webhook and billing projections. Use as an async context
    manager, or call :meth:`start` and :meth:`close`.

    :param dsn: a libpq connection string or URL (``DATABASE_URL``).
    :param min_size: connections kept open; :param max_size: the most ever opened.
    :param timeout: seconds a call waits for a working connection before it fails with
        ``TransientError`` — the bound on calls while the server is down.
    :param reconnect_timeout: seconds the pool retries a lost connection (with backoff)
        before giving up and starting afresh on the next call. Kept short so the first
        call after an outage waits for at most a few seconds of backoff.
    :param statement_timeout: server-side limit per statement; exceeding it is transient.

    One instance is shared by the tasks of one event loop; calls may run concurrently
    (each takes its own pooled connection).
    """

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 5.0,
        reconnect_timeout: float = 5.0,
        statement_timeout: float = 30.0,
        name: str = "sluice-projection",
    ) -> None:
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout
        self._reconnect_timeout = reconnect_timeout
        self._statement_timeout_ms = max(1, round(statement_timeout * 1000))
        self._name = name
        self._pool: AsyncConnectionPool[AsyncConnection[TupleRow]] | None = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the pool and wait for its first connection (at most ``timeout`` s).

        Idempotent. Raises ``TransientError`` (and holds nothing open) when the server
        cannot be reached.
        """
        if self._pool is not None:
            return
        pool: AsyncConnectionPool[AsyncConnection[TupleRow]] = AsyncConnectionPool(
            self._dsn,
            min_size=self._min_size,
            max_size=self._max_size,
            open=False,
            check=AsyncConnectionPool.check_connection,
            timeout=self._timeout,
            reconnect_timeout=self._reconnect_timeout,
            name=self._name,
            kwargs={
                "autocommit": True,
                "application_name": self._name,
                "options": f"-c statement_timeout={self._statement_timeout_ms}",
                # A server that vanishes without closing its sockets is noticed, too.
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
            },
        )
        try:
            await pool.open(wait=True, timeout=self._timeout)
        except BaseException as exc:
            await pool.close()
            error = translate_error(exc)
            if error is not None:
                raise error from exc
            raise
        self._pool = pool

    async def close(self) -> None:
        """Close every connection (waits up to 5 s for calls in flight). Idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close(timeout=5.0)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[TupleRow]]:
        if self._pool is None:
            raise RuntimeError("PostgresProjection used before start() or after close()")
        try:
            async with self._pool.connection(timeout=self._timeout) as conn:
                yield conn
        except (psycopg.Error, PoolTimeout, TooManyRequests) as exc:
            error = translate_error(exc)
            if error is None:
                raise
            raise error from exc

    async def ping(self) -> None:
        """Run one trivial query. Raises ``TransientError`` when the server is unusable."""
        async with self._connection() as conn:
            await conn.execute("SELECT 1")

    # -- writes ------------------------------------------------------------------------

    async def record_webhooks(self, rows: Sequence[WebhookRow]) -> None:
        """Insert raw webhooks, or move their status forward; one transaction per call.

        Idempotent: a row exists once per (provider, event_id); a repeat never rewrites
        ``raw_body`` or the other received fields, and the status only moves up
        ``RECEIVED < FAILED < IGNORED < PROCESSED`` (``reason`` and ``processed_at`` move
        with it). A status row may arrive before its ``RECEIVED`` row.

        :raises TransientError: database unavailable (nothing was written).
        :raises PermanentError: a row violates the table's constraints.
        """
        if not rows:
            return
        params = [_webhook_params(row) for row in rows]
        async with self._connection() as conn, conn.pipeline(), conn.transaction():
            await conn.cursor().executemany(_WEBHOOK_UPSERT, params)

    async def apply_billing(self, events: Sequence[Mapping[str, Any]], consumer: str) -> int:
        """Project decoded ``BillingEvent`` records; returns how many were newly applied.

        All in one transaction, pipelined (round trips do not grow with the batch): each
        event is claimed in ``processed_events(consumer, eventId)`` by the very statement
        that applies it, so an event already processed by ``consumer`` (or repeated
        within the batch) is skipped. Effects per topic (``eventType``):

        - ``billing.payment.{succeeded,failed,pending}`` → ``payments`` by
          (provider, providerObjectId), status from the topic, never regressing;
        - ``billing.payment.refunded`` → ``refunds`` by (provider, refundId), then the
          payment (provider, paymentId) moves to ``PARTIALLY_REFUNDED``/``REFUNDED`` by
          the larger of its succeeded refunds' sum and ``amountRefundedMinor``, created
          with an unknown amount if it does not exist yet;
        - ``billing.checkout.*`` → ``checkout_sessions``; ``billing.invoice.updated`` →
          ``invoices`` (ranked); ``billing.subscription.updated`` → ``subscriptions``
          (newest ``occurredAt`` wins).

        Idempotent and order-independent: any order and any repetition of the same
        events ends in the same rows. Safe against concurrent batches.

        :param consumer: the ``processed_events`` namespace, e.g. the agent's name.
        :raises ProjectionInputError: a record's shape cannot be projected: a missing or
            mistyped field, an unknown topic or status (checked before anything is
            written; ``event_id`` names it). A ``PermanentError``.
        :raises TransientError: database unavailable, deadlock, serialization failure
            (nothing was written).
        :raises PermanentError: a value a CHECK constraint refused (negative amount,
            upper-case currency); nothing was written, and the message names the
            constraint but not the record — re-run records one by one to find it.
        """
        if not consumer:
            raise ValueError("consumer must be a non-empty string")
        plan = _plan_billing(events, consumer)
        if not plan.gated:
            return 0
        cursors = []
        async with self._connection() as conn:
            async with conn.pipeline(), conn.transaction():
                if plan.lock_keys:
                    await conn.execute(_LOCK_PAYMENTS, (sorted(plan.lock_keys),))
                for statement, params in plan.groups():
                    cursor = conn.cursor()
                    await cursor.executemany(statement, params, returning=True)
                    cursors.append(cursor)
                if plan.refund_updates:
                    await conn.cursor().executemany(_PAYMENT_REFUND_UPDATE, plan.refund_updates)
            applied = 0
            for cursor in cursors:
                while True:
                    row = await cursor.fetchone()
                    applied += int(row[0]) if row is not None else 0
                    if not cursor.nextset():
                        break
        return applied

    async def apply_order_snapshots(
        self, events: Sequence[Mapping[str, Any]], consumer: str
    ) -> int:
        """Project decoded ``OrderLifecycleEvent`` snapshots into ``orders``; returns how
        many rows were inserted or replaced.

        Per order only the highest ``revision`` among ``events`` is written, and only
        if it is higher than the stored row's (``ON CONFLICT ... WHERE t.revision <
        EXCLUDED.revision``): a replayed, repeated or late snapshot changes nothing, so
        any order and any repetition of the same snapshots ends in the same rows. Every
        event id is recorded in ``processed_events(consumer, eventId)`` in the same
        transaction (superseded and stale ones too: they were handled). The revision,
        not ``processed_events``, decides what is written, so truncating ``orders`` and
        replaying ``orders.lifecycle`` rebuilds the table. One transaction, pipelined.

        ``order.payment_orphaned`` records (revision 0, no status) are not snapshots of
        an order: the caller leaves them out, and they are refused here.

        :param consumer: the ``processed_events`` namespace, e.g. the agent's name.
        :raises ProjectionInputError: a record's shape cannot be projected (a missing or
            mistyped field, an unknown status, a revision below 1); checked before
            anything is written, ``event_id`` names it. A ``PermanentError``.
        :raises TransientError: database unavailable, deadlock (nothing was written).
        :raises PermanentError: the database refused a value (nothing was written).
        """
        if not consumer:
            raise ValueError("consumer must be a non-empty string")
        upserts, event_ids = _plan_orders(events)
        if not upserts:
            return 0
        async with self._connection() as conn:
            async with conn.pipeline(), conn.transaction():
                cursor = conn.cursor()
                await cursor.executemany(_ORDER_UPSERT, upserts, returning=True)
                await conn.execute(_RECORD_PROCESSED, (consumer, event_ids))
            written = 0
            while True:
                row = await cursor.fetchone()
                written += int(row[0]) if row is not None else 0
                if not cursor.nextset():
                    break
        return written

    # -- reads -------------------------------------------------------------------------

    async def fetch_order(self, order_id: str) -> OrderRow | None:
        """The ``orders`` row of ``order_id``, or None. Raises ``TransientError``."""
        return await self._one(OrderRow, _SELECT_ORDER, (order_id,))

    async def payment(self, provider: str, payment_id: str) -> Payment | None:
        """The payment (provider, provider_payment_id), or None. Raises ``TransientError``."""
        return await self._one(Payment, _SELECT_PAYMENT, (provider, payment_id))

    async def payments_for_order(self, order_id: str) -> list[Payment]:
        """Every payment of an order, oldest first. Raises ``TransientError``."""
        return await self._all(Payment, _SELECT_PAYMENTS_FOR_ORDER, (order_id,))

    async def refund(self, provider: str, refund_id: str) -> Refund | None:
        """The refund (provider, refund_id), or None. Raises ``TransientError``."""
        return await self._one(Refund, _SELECT_REFUND, (provider, refund_id))

    async def refunds_for_payment(self, provider: str, payment_id: str) -> list[Refund]:
        """Every refund of a payment, oldest first. Raises ``TransientError``."""
        return await self._all(Refund, _SELECT_REFUNDS_FOR_PAYMENT, (provider, payment_id))

    async def invoice(self, provider: str, invoice_id: str) -> Invoice | None:
        """The invoice (provider, invoice_id), or None. Raises ``TransientError``."""
        return await self._one(Invoice, _SELECT_INVOICE, (provider, invoice_id))

    async def subscription(self, provider: str, subscription_id: str) -> Subscription | None:
        """The subscription (provider, subscription_id), or None. Raises ``TransientError``."""
        return await self._one(Subscription, _SELECT_SUBSCRIPTION, (provider, subscription_id))

    async def checkout_session(self, provider: str, session_id: str) -> CheckoutSession | None:
        """The checkout session (provider, session_id), or None. Raises ``TransientError``."""
        return await self._one(CheckoutSession, _SELECT_CHECKOUT, (provider, session_id))

    async def webhook_event(self, provider: str, event_id: str) -> WebhookEvent | None:
        """The raw webhook (provider, event_id), or None. Raises ``TransientError``."""
        return await self._one(WebhookEvent, _SELECT_WEBHOOK, (provider, event_id))

    async def is_processed(self, consumer: str, event_id: str) -> bool:
        """Whether ``consumer`` has applied ``event_id``. Raises ``TransientError``."""
        async with self._connection() as conn:
            cursor = await conn.execute(_SELECT_PROCESSED, (consumer, event_id))
            row = await cursor.fetchone()
        return bool(row and row[0])

    async def count(self, table: ProjectionTable) -> int:
        """Rows in one of :data:`PROJECTION_TABLES` (tests, operators). Raises
        ``ValueError`` for any other name, ``TransientError`` when unavailable."""
        if table not in PROJECTION_TABLES:
            raise ValueError(f"not a projection table: {table!r}")
        query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        async with self._connection() as conn:
            cursor = await conn.execute(query)
            row = await cursor.fetchone()
        return int(row[0]) if row is not None else 0

    async def _one(
        self, row_type: type[_R], query: sql.Composed, args: tuple[str, ...]
    ) -> _R | None:
        async with self._connection() as conn:
            cursor = conn.cursor(row_factory=class_row(row_type))
            await cursor.execute(query, args)
            return await cursor.fetchone()

    async def _all(
        self, row_type: type[_R], query: sql.Composed, args: tuple[str, ...]
    ) -> list[_R]:
        async with self._connection() as conn:
            cursor = conn.cursor(row_factory=class_row(row_type))
            await cursor.execute(query, args)
            return await cursor.fetchall()
