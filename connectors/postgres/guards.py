"""The billing and webhook upserts' SQL, generated once from the status rank tables.

Every billing upsert is an ``INSERT ... ON CONFLICT DO UPDATE`` whose status guard is
evaluated *in SQL* against the row as it is now, so concurrent writers and any arrival
order converge on the same row; the ranks come from ``schemas/statuses.py``, the same
tables the domain's rules read, never written twice. Each statement also claims its
event in ``processed_events`` and applies it only when the claim is new.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from psycopg import sql

from schemas.statuses import (
    CHECKOUT_RANK,
    INVOICE_RANK,
    PAYMENT_RANK,
    REFUND_RANK,
    SUBSCRIPTION_TIE_RANK,
    WEBHOOK_RANK,
    PaymentStatus,
    RefundStatus,
    WebhookStatus,
)

__all__ = [
    "CHECKOUT_UPSERT",
    "CLAIM_ONLY",
    "INVOICE_UPSERT",
    "LOCK_PAYMENTS",
    "PAYMENT_REFUND_UPDATE",
    "PAYMENT_UPSERT",
    "REFUND_UPSERT",
    "SUBSCRIPTION_UPSERT",
    "WEBHOOK_UPSERT",
]

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
        succeeded=sql.Literal(str(RefundStatus.SUCCEEDED)),
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


PAYMENT_UPSERT: Final = _payment_upsert()
PAYMENT_REFUND_UPDATE: Final = _payment_refund_update()
REFUND_UPSERT: Final = _guarded_upsert(
    "refunds",
    "refund_id",
    ("payment_id", "order_id", "amount_minor", "currency"),
    _rank_wins(REFUND_RANK.items()),
)
INVOICE_UPSERT: Final = _guarded_upsert(
    "invoices",
    "invoice_id",
    ("order_id", "user_id", "payment_id", "amount_minor", "currency"),
    _rank_wins(INVOICE_RANK.items()),
)
CHECKOUT_UPSERT: Final = _guarded_upsert(
    "checkout_sessions",
    "session_id",
    ("order_id", "user_id", "payment_id", "amount_minor", "currency"),
    _rank_wins(CHECKOUT_RANK.items()),
)
SUBSCRIPTION_UPSERT: Final = _guarded_upsert(
    "subscriptions",
    "subscription_id",
    ("user_id", "amount_minor", "currency"),
    _subscription_wins(),
)
# A refund record without a refund id (Stripe charge.refunded with no expanded refund)
# has no refund row to write; it only claims the event and updates the payment.
CLAIM_ONLY: Final = sql.SQL("WITH {claim} SELECT count(*) FROM claim").format(claim=_CLAIM)
# Keys come sorted, so concurrent batches take them in one order and cannot deadlock
# on them; unnest yields them in array order.
LOCK_PAYMENTS: Final = sql.SQL("SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) AS k")
WEBHOOK_UPSERT: Final = sql.SQL(
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
