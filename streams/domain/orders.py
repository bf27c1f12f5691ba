"""The order⇄payment join as a pure state machine (DESIGN §5, §6).

The join agent keeps, per order id, the order's state (``Order``) and the payment events
that arrived before their order (``Held``). For each input record it calls :func:`step`
and carries out what it returns: the new state, and the records to emit. Nothing here
touches Kafka, RocksDB or a clock; the agent passes ``now_ms`` in.

Rules, in words:

- ``order.created`` opens the order in PENDING_PAYMENT (``order.pending_payment``) and
  then applies every payment held for it, oldest first. With ``paymentProvider:
  "stripe"`` it asks for a PaymentIntent (a command on ``commands.stripe`` carrying the
  order's own amount and currency; a client amount is never trusted).
- A succeeded payment (or a paid checkout session) whose amount and currency match the
  order pays it (``order.paid``) from PENDING_PAYMENT, PAYMENT_FAILED or
  PAYMENT_MISMATCH: a later success after a failure still pays the order. A mismatch
  gives PAYMENT_MISMATCH (``order.payment_mismatch``) and never PAID.
- A failed payment (or failed checkout) gives PAYMENT_FAILED (``order.payment_failed``)
  and the compensation ``inventory.release``; an expired checkout or ``order.cancelled``
  gives CANCELLED (``order.cancelled``) and ``inventory.release``. Stock is released at
  most once per order.
- Refunds add up per refund id (a failed refund drops out); the order becomes
  PARTIALLY_REFUNDED or REFUNDED (``order.refunded``, status tells which). An
  ``order.refunded`` caused by a refund dropping out has ``reason`` ``refund <id>
  <status>``; one that adds a refund has none.
- Statuses never regress: a late failure, pending or success after the order moved on
  changes nothing. A payment for a CANCELLED order is reported as a mismatch (someone
  must refund it) and leaves the order cancelled.
- A payment whose order is unknown is held; after the hold it is reported once
  (``order.payment_orphaned``) and kept, so an order that turns up later is still paid.

Idempotence: each order remembers the ids of the last input events it applied, and each
held list its events' ids; a repeat changes nothing. Every emitted record's id is
derived from its cause's id and its type, so even a repeat the state could not
recognise (state lost in a crash before its changelog write) emits records with the same
ids as the first time.

A repeat can also follow a crash the other way round: the agent sends the emits through
the outbox (durable by the next offset commit) and then stores the state, whose
changelog write goes through faust's own producer, so after a SIGKILL the stored state
may already include an input whose records never reached Kafka. The input's offset was
not committed (a commit waits for the outbox's delivery of everything sent before it:
``streams/transport.py``, ``connectors/kafka_outbox.py``), so it is read again; an order
that only said "seen" would emit nothing and lose those records. So an order also keeps
the emits of its recent inputs (``Order.recent``: event id, the input's position, its
emits), and the same record read again (same position) returns the same emits again (same
records, same ids; every consumer is idempotent). A duplicate at another position (sent
twice) still emits nothing: its original, if it crashed, is read again itself. An entry
may be forgotten once its input's offset is committed, as such an input is never read
again: :func:`step` drops those, given the consumer's committed offsets, whenever it
stores the order anyway. Entries whose position is unknown, or whose commit is not
known yet, are kept, up to ``RECENT_LIMIT`` per order (an order with more inputs than
that within one commit interval, about a second, is the one case left to the derived
ids). Inputs that emit nothing keep no entry.

Held payments have the same hole in the orphan sweep: a list marked reported may be
stored while its ``order.payment_orphaned`` records were not. The list remembers the
tick that reported it and when; that tick read again reports it again, with the same
records.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from streams.domain.ids import derived_event_id
from streams.domain.replies import reply_record

__all__ = [
    "RECENT_LIMIT",
    "SOURCE",
    "Committed",
    "Emit",
    "Held",
    "Order",
    "OrderStatus",
    "Position",
    "Recent",
    "Step",
    "step",
    "sweep_orphans",
]

SOURCE: Final = "streams.join_orders"
SEEN_LIMIT: Final = 64
"""Input ids an order remembers. Repeats come soon after the original (a redelivery, a
retry); older repeats are caught by the status rules and the derived ids."""
RECENT_LIMIT: Final = 16
"""Inputs whose emits an order keeps while their offsets are not known to be committed."""

Position = tuple[str, int, int]
"""Where an input was read: topic, partition, offset."""

Committed = Callable[[str, int], int | None]
"""The consumer's committed offset (the next offset to read) of a topic partition, or
None when not known."""


class OrderStatus:
    PENDING_PAYMENT: Final = "PENDING_PAYMENT"
    PAID: Final = "PAID"
    PAYMENT_FAILED: Final = "PAYMENT_FAILED"
    PAYMENT_MISMATCH: Final = "PAYMENT_MISMATCH"
    CANCELLED: Final = "CANCELLED"
    PARTIALLY_REFUNDED: Final = "PARTIALLY_REFUNDED"
    REFUNDED: Final = "REFUNDED"


_PAYABLE: Final = frozenset(
    {OrderStatus.PENDING_PAYMENT, OrderStatus.PAYMENT_FAILED, OrderStatus.PAYMENT_MISMATCH}
)
_PAID_OR_AFTER: Final = frozenset(
    {OrderStatus.PAID, OrderStatus.PARTIALLY_REFUNDED, OrderStatus.REFUNDED}
)
_REFUND_DROPPED: Final = frozenset({"failed", "canceled", "refund_failed"})


@dataclass(frozen=True)
class Emit:
    """A record to produce: topic, key, the record (encoded by the agent)."""

    topic: str
    key: str
    record: dict[str, Any]


@dataclass(frozen=True)
class Recent:
    """A recent input of an order and what it emitted (re-sent if it is read again)."""

    event_id: str
    position: Position | None
    emits: tuple[Emit, ...]

    def to_json(self) -> list[Any]:
        emits = [[emit.topic, emit.key, emit.record] for emit in self.emits]
        return [self.event_id, list(self.position) if self.position else None, emits]

    @classmethod
    def from_json(cls, data: Sequence[Any]) -> Recent:
        event_id, position, emits = data
        return cls(
            event_id=str(event_id),
            position=(str(position[0]), int(position[1]), int(position[2])) if position else None,
            emits=tuple(Emit(str(topic), str(key), dict(record)) for topic, key, record in emits),
        )


@dataclass(frozen=True)
class Order:
    """One order as the join knows it (stored as JSON in the ``orders_state`` table)."""

    order_id: str
    user_id: str
    amount_minor: int
    currency: str
    items: tuple[tuple[str, int], ...]
    payment_provider: str | None
    status: str
    revision: int
    created_at_ms: int
    refunds: tuple[tuple[str, int], ...] = ()
    reported_refunded_minor: int = 0
    payment_intent_id: str | None = None
    client_secret: str | None = None
    paid_payment_id: str | None = None
    provider_ids: tuple[str, ...] = ()
    released: bool = False
    seen: tuple[str, ...] = ()
    recent: tuple[Recent, ...] = ()

    @property
    def refunded_minor(self) -> int:
        return max(self.reported_refunded_minor, sum(amount for _, amount in self.refunds))

    def to_json(self) -> str:
        return json.dumps(
            {
                "orderId": self.order_id,
                "userId": self.user_id,
                "amountMinor": self.amount_minor,
                "currency": self.currency,
                "items": [list(item) for item in self.items],
                "paymentProvider": self.payment_provider,
                "status": self.status,
                "revision": self.revision,
                "createdAtMs": self.created_at_ms,
                "refunds": [list(refund) for refund in self.refunds],
                "reportedRefundedMinor": self.reported_refunded_minor,
                "paymentIntentId": self.payment_intent_id,
                "clientSecret": self.client_secret,
                "paidPaymentId": self.paid_payment_id,
                "providerIds": list(self.provider_ids),
                "released": self.released,
                "seen": list(self.seen),
                "recent": [entry.to_json() for entry in self.recent],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Order:
        data = json.loads(text)
        return cls(
            order_id=data["orderId"],
            user_id=data["userId"],
            amount_minor=data["amountMinor"],
            currency=data["currency"],
            items=tuple((str(p), int(q)) for p, q in data["items"]),
            payment_provider=data["paymentProvider"],
            status=data["status"],
            revision=data["revision"],
            created_at_ms=data["createdAtMs"],
            refunds=tuple((str(r), int(a)) for r, a in data["refunds"]),
            reported_refunded_minor=data["reportedRefundedMinor"],
            payment_intent_id=data["paymentIntentId"],
            client_secret=data["clientSecret"],
            paid_payment_id=data["paidPaymentId"],
            provider_ids=tuple(data["providerIds"]),
            released=data["released"],
            seen=tuple(data["seen"]),
            # States stored before ``recent`` existed have none.
            recent=tuple(Recent.from_json(entry) for entry in data.get("recent", ())),
        )


@dataclass(frozen=True)
class Held:
    """Events that arrived before their order (stored as JSON in ``payments_waiting``)."""

    events: tuple[tuple[str, Mapping[str, Any]], ...]  # (topic, decoded record)
    first_held_ms: int
    reported: bool = False
    #: The tick that reported the list, and its time: that tick read again (a crash
    #: before its records were durable) reports the list again, with the same records.
    reported_by: Position | None = None
    reported_ms: int | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "events": [[topic, dict(record)] for topic, record in self.events],
                "firstHeldMs": self.first_held_ms,
                "reported": self.reported,
                "reportedBy": list(self.reported_by) if self.reported_by else None,
                "reportedMs": self.reported_ms,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Held:
        data = json.loads(text)
        return cls(
            events=tuple((str(topic), record) for topic, record in data["events"]),
            first_held_ms=data["firstHeldMs"],
            reported=data["reported"],
            reported_by=(str(by[0]), int(by[1]), int(by[2]))
            if (by := data.get("reportedBy"))
            else None,
            reported_ms=data.get("reportedMs"),
        )


@dataclass(frozen=True)
class Step:
    """What one input did: the order's and the held list's new state, and the emits.

    ``order``/``held`` equal to the inputs mean "unchanged"; ``held`` is None when
    nothing is (or stays) held.
    """

    order: Order | None
    held: Held | None
    emits: tuple[Emit, ...] = ()


@dataclass
class _Acc:
    """Accumulates one step's changes to an order."""

    order: Order
    now_ms: int
    emits: list[Emit] = field(default_factory=list)

    def change(
        self,
        event_type: str,
        cause: Mapping[str, Any],
        *,
        payment: Mapping[str, Any] | None = None,
        reason: str | None = None,
        **updates: Any,
    ) -> None:
        previous = self.order.status
        self.order = replace(self.order, revision=self.order.revision + 1, **updates)
        self.emits.append(
            Emit(
                "orders.lifecycle",
                self.order.order_id,
                _lifecycle(self.order, event_type, cause, previous, self.now_ms, payment, reason),
            )
        )

    def release(self, cause: Mapping[str, Any], reason: str) -> None:
        if self.order.released:
            return
        self.order = replace(self.order, released=True)
        self.emits.append(
            Emit(
                "commands.inventory.release",
                self.order.order_id,
                {
                    **_envelope(cause, "inventory.release", self.now_ms),
                    "orderId": self.order.order_id,
                    "items": [
                        {"productId": product, "quantity": quantity}
                        for product, quantity in self.order.items
                    ],
                    "reason": reason,
                },
            )
        )


def step(
    order: Order | None,
    held: Held | None,
    topic: str,
    record: Mapping[str, Any],
    now_ms: int,
    *,
    position: Position | None = None,
    committed: Committed | None = None,
) -> Step:
    """Apply one input record (decoded) to an order's state.

    ``position`` is where the input was read and ``committed`` the consumer's committed
    offsets: the order keeps the input's emits until its offset is committed, and a
    repeat of a kept input returns them again.
    """
    event_id = str(record["eventId"])
    if order is not None and event_id in order.seen:
        again = next(
            (
                entry.emits
                for entry in order.recent
                if entry.event_id == event_id and _same_input(entry.position, position)
            ),
            (),
        )
        return Step(order, _unless_applied(order, held), again)
    result = _step(order, held, topic, record, now_ms)
    if result.order is None or result.order == order:
        return result
    recent = tuple(
        entry for entry in result.order.recent if not _is_committed(entry.position, committed)
    )
    if result.emits:
        recent = (*recent, Recent(event_id, position, result.emits))
    return replace(result, order=replace(result.order, recent=recent[-RECENT_LIMIT:]))


def _same_input(remembered: Position | None, position: Position | None) -> bool:
    """The very record read again (a crash), not a duplicate sent again (a retry of the
    producer, a replay): only the former may have lost its records."""
    return remembered is None or position is None or remembered == position


def _is_committed(position: Position | None, committed: Committed | None) -> bool:
    if position is None or committed is None:
        return False
    topic, partition, offset = position
    next_offset = committed(topic, partition)
    return next_offset is not None and offset < next_offset


def _unless_applied(order: Order, held: Held | None) -> Held | None:
    """A held list whose events the order has applied is the rest of a crash between
    storing the order and deleting the list: drop it (else it is reported orphaned)."""
    if held is not None and all(str(r["eventId"]) in order.seen for _, r in held.events):
        return None
    return held


def _step(
    order: Order | None,
    held: Held | None,
    topic: str,
    record: Mapping[str, Any],
    now_ms: int,
) -> Step:
    event_id = str(record["eventId"])
    event_type = str(record["eventType"])
    if topic == "commands.payments":
        return _command(order, held, record, now_ms)
    if order is None:
        if event_type == "order.created":
            return _create(held, record, now_ms)
        return _hold(held, topic, record, now_ms)
    acc = _Acc(order, now_ms)
    _apply(acc, topic, record)
    remembered = (*acc.order.seen, event_id)[-SEEN_LIMIT:]
    return Step(replace(acc.order, seen=remembered), held, tuple(acc.emits))


def sweep_orphans(
    held: Mapping[str, Held],
    now_ms: int,
    hold_ms: float,
    keep_ms: float,
    *,
    position: Position | None = None,
) -> list[tuple[str, Held | None, tuple[Emit, ...]]]:
    """Held lists whose hold ran out: report each once (``order.payment_orphaned`` per
    held payment), and drop lists older than ``keep_ms``. Returns (order id, new held
    state or None to delete, emits) for the lists that changed.

    ``position`` is the tick's: a list reported by this very tick (read again after a
    crash) is reported again with the same records, as they may never have been sent.
    """
    changes: list[tuple[str, Held | None, tuple[Emit, ...]]] = []
    for order_id, entry in held.items():
        age = now_ms - entry.first_held_ms
        if (
            entry.reported
            and position is not None
            and entry.reported_by == position
            and entry.reported_ms is not None
        ):
            changes.append((order_id, entry, _orphan_reports(order_id, entry, entry.reported_ms)))
        elif age >= keep_ms:
            changes.append((order_id, None, ()))
        elif not entry.reported and age >= hold_ms:
            reported = replace(entry, reported=True, reported_by=position, reported_ms=now_ms)
            changes.append((order_id, reported, _orphan_reports(order_id, entry, now_ms)))
    return changes


def _orphan_reports(order_id: str, entry: Held, now_ms: int) -> tuple[Emit, ...]:
    age = now_ms - entry.first_held_ms
    return tuple(
        Emit("orders.lifecycle", order_id, _orphaned(order_id, record, now_ms, age))
        for topic, record in entry.events
        if topic.startswith("billing.")
    )


# -- order events --------------------------------------------------------------------


def _create(held: Held | None, record: Mapping[str, Any], now_ms: int) -> Step:
    data = record["data"]
    order = Order(
        order_id=data["orderId"],
        user_id=data["userId"],
        amount_minor=int(data["amount"]),
        currency=str(data["currency"]).lower(),
        items=tuple((item["productId"], int(item["quantity"])) for item in data["items"]),
        payment_provider=data.get("paymentProvider"),
        status=OrderStatus.PENDING_PAYMENT,
        revision=0,
        created_at_ms=int(record["occurredAt"]),
        seen=(str(record["eventId"]),),
    )
    acc = _Acc(order, now_ms)
    acc.change("order.pending_payment", record)
    if order.payment_provider == "stripe":
        acc.emits.append(
            Emit("commands.stripe", order.order_id, _intent_command(acc.order, record, now_ms))
        )
    # Held events, oldest first: payments that beat their order, an early cancel.
    for topic, held_record in sorted(
        held.events if held else (), key=lambda item: int(item[1]["occurredAt"])
    ):
        held_id = str(held_record["eventId"])
        if held_id in acc.order.seen:
            continue
        _apply(acc, topic, held_record)
        acc.order = replace(acc.order, seen=(*acc.order.seen, held_id)[-SEEN_LIMIT:])
    return Step(acc.order, None, tuple(acc.emits))


def _hold(held: Held | None, topic: str, record: Mapping[str, Any], now_ms: int) -> Step:
    if topic == "join.ticks" or topic == "payments.setup":
        # Set-up outcomes name orders that exist (the join asked for them); one for an
        # unknown order has nothing to attach to.
        return Step(None, held)
    event_id = str(record["eventId"])
    if held is not None and any(r["eventId"] == event_id for _, r in held.events):
        return Step(None, held)
    if held is None:
        return Step(None, Held(events=((topic, dict(record)),), first_held_ms=now_ms))
    return Step(None, replace(held, events=(*held.events, (topic, dict(record)))))


def _apply(acc: _Acc, topic: str, record: Mapping[str, Any]) -> None:
    event_type = str(record["eventType"])
    if topic == "orders":
        if event_type == "order.cancelled":
            _cancel(acc, record, reason=str(record["data"].get("reason") or "cancelled"))
        # A second order.created for a known order changes nothing.
        return
    if topic == "payments.setup":
        _setup(acc, record)
        return
    if topic == "billing.payment.succeeded":
        _succeeded(acc, record)
    elif topic == "billing.checkout.completed":
        status = record.get("attributes", {}).get("payment_status")
        if status in ("paid", "no_payment_required"):
            _succeeded(acc, record)
        else:
            _note_ids(acc, record)
    elif topic in ("billing.payment.failed", "billing.checkout.failed"):
        _failed(acc, record)
    elif topic == "billing.checkout.expired":
        if acc.order.status in _PAYABLE:
            _cancel(acc, record, reason="checkout_expired")
    elif topic == "billing.payment.refunded":
        _refunded(acc, record)
    else:  # billing.payment.pending, anything new: remember the ids, nothing else
        _note_ids(acc, record)


def _note_ids(acc: _Acc, record: Mapping[str, Any]) -> None:
    ids = _ids_of(record)
    new = tuple(i for i in ids if i not in acc.order.provider_ids)
    if new:
        acc.order = replace(acc.order, provider_ids=(*acc.order.provider_ids, *new))


def _succeeded(acc: _Acc, record: Mapping[str, Any]) -> None:
    _note_ids(acc, record)
    order = acc.order
    amount = record.get("amountMinor")
    currency = (record.get("currency") or "").lower()
    payment = record
    if order.status == OrderStatus.CANCELLED:
        acc.change(
            "order.payment_mismatch",
            record,
            payment=payment,
            reason="payment succeeded for a cancelled order",
        )
        return
    if order.status not in _PAYABLE:
        return  # already paid (or refunded): never regress, never pay twice
    if amount != order.amount_minor or currency != order.currency:
        acc.change(
            "order.payment_mismatch",
            record,
            payment=payment,
            reason=(
                f"payment of {amount} {currency or '?'} does not match the order's "
                f"{order.amount_minor} {order.currency}"
            ),
            status=OrderStatus.PAYMENT_MISMATCH,
        )
        return
    acc.change(
        "order.paid",
        record,
        payment=payment,
        status=OrderStatus.PAID,
        paid_payment_id=_payment_id(record),
        payment_provider=order.payment_provider or record.get("provider"),
    )


def _failed(acc: _Acc, record: Mapping[str, Any]) -> None:
    _note_ids(acc, record)
    if acc.order.status not in (OrderStatus.PENDING_PAYMENT, OrderStatus.PAYMENT_MISMATCH):
        return  # paid, failed already, cancelled or refunded: a late failure changes nothing
    attributes = record.get("attributes") or {}
    reason = attributes.get("failure_code") or attributes.get("failure_message") or "failed"
    acc.change(
        "order.payment_failed",
        record,
        payment=record,
        reason=str(reason),
        status=OrderStatus.PAYMENT_FAILED,
    )
    acc.release(record, "payment_failed")


def _cancel(acc: _Acc, record: Mapping[str, Any], *, reason: str) -> None:
    if acc.order.status not in _PAYABLE:
        return  # paid orders are refunded, not cancelled; cancelled stays cancelled
    acc.change("order.cancelled", record, reason=reason, status=OrderStatus.CANCELLED)
    acc.release(record, "checkout_expired" if reason == "checkout_expired" else "order_cancelled")


def _refunded(acc: _Acc, record: Mapping[str, Any]) -> None:
    _note_ids(acc, record)
    order = acc.order
    if order.status not in _PAID_OR_AFTER and order.status not in _PAYABLE:
        return  # a refund on a cancelled order: money handled outside the order
    refunds = dict(order.refunds)
    refund_id = record.get("refundId")
    status = str(record.get("status") or "")
    amount = record.get("amountMinor")
    if refund_id:
        if status in _REFUND_DROPPED:
            refunds.pop(refund_id, None)
        elif isinstance(amount, int):
            refunds[refund_id] = amount
    reported = record.get("amountRefundedMinor")
    reported_total = max(
        order.reported_refunded_minor, reported if isinstance(reported, int) else 0
    )
    total = max(reported_total, sum(refunds.values()))
    if total <= 0 and order.refunded_minor <= 0:
        acc.order = replace(
            order, refunds=tuple(refunds.items()), reported_refunded_minor=reported_total
        )
        return
    new_status = (
        OrderStatus.REFUNDED if total >= order.amount_minor else OrderStatus.PARTIALLY_REFUNDED
    )
    if total == order.refunded_minor and new_status == order.status:
        acc.order = replace(
            order, refunds=tuple(refunds.items()), reported_refunded_minor=reported_total
        )
        return
    if order.status == OrderStatus.REFUNDED and new_status != OrderStatus.REFUNDED:
        # Refunds only add up: a failed refund reported after the order was fully
        # refunded (by another refund) does not take it back.
        return
    # A refund that failed or was cancelled drops out of the total: the record says so
    # in ``reason``, so nobody reads it as a refund issued (lifecycle notifications).
    dropped = bool(refund_id) and status in _REFUND_DROPPED
    acc.change(
        "order.refunded",
        record,
        payment=record,
        reason=f"refund {refund_id} {status}" if dropped else None,
        status=new_status,
        refunds=tuple(refunds.items()),
        reported_refunded_minor=reported_total,
    )


def _setup(acc: _Acc, record: Mapping[str, Any]) -> None:
    event_type = str(record["eventType"])
    order = acc.order
    if event_type == "payment.intent.created":
        intent = record.get("intentId")
        if not intent or order.payment_intent_id == intent:
            return
        acc.change(
            "order.updated",
            record,
            payment_intent_id=intent,
            client_secret=record.get("clientSecret"),
            payment_provider=order.payment_provider or "stripe",
            provider_ids=_with(order.provider_ids, intent),
        )
    elif event_type == "payment.checkout.created":
        session = record.get("checkoutSessionId")
        if not session or session in order.provider_ids:
            return
        acc.change(
            "order.updated",
            record,
            payment_provider=order.payment_provider or "stripe",
            provider_ids=_with(_with(order.provider_ids, session), record.get("intentId")),
        )
    elif event_type == "payment.setup_failed":
        if record.get("command") == "payments.refund.create":
            return  # a refused refund changes nothing about the order; its caller got a 502
        acc.change(
            "order.payment_setup_failed",
            record,
            reason=f"{record.get('errorCode') or 'error'}: {record.get('errorMessage') or ''}",
        )
    # payment.refund.created: the refund webhook that follows moves the order.


# -- payment commands (request/reply) ------------------------------------------------


def _command(
    order: Order | None, held: Held | None, record: Mapping[str, Any], now_ms: int
) -> Step:
    """Check a payment command against the order; forward it with the order's amount,
    or answer the caller at once (unknown order, nothing to pay or refund)."""
    event_type = str(record["eventType"])
    order_id = str(record["orderId"])
    if order is None:
        return Step(
            None, held, _reply(record, 404, _error("not_found", f"no order {order_id}"), now_ms)
        )
    remembered = replace(order, seen=(*order.seen, str(record["eventId"]))[-SEEN_LIMIT:])
    if event_type == "payments.intent.create":
        if order.payment_intent_id and order.status in _PAYABLE:
            body = {
                "orderId": order_id,
                "paymentIntentId": order.payment_intent_id,
                "clientSecret": order.client_secret,
                "status": order.status,
                "amount": order.amount_minor,
                "currency": order.currency,
            }
            return Step(remembered, held, _reply(record, 200, body, now_ms))
        if order.status not in _PAYABLE:
            return Step(remembered, held, _not_payable(record, order, now_ms))
        forward = {**_forward(record, order, now_ms)}
        return Step(remembered, held, (Emit("commands.stripe", order_id, forward),))
    if event_type == "payments.checkout.create":
        if order.status not in _PAYABLE:
            return Step(remembered, held, _not_payable(record, order, now_ms))
        return Step(
            remembered, held, (Emit("commands.stripe", order_id, _forward(record, order, now_ms)),)
        )
    if event_type == "payments.refund.create":
        if order.status not in (OrderStatus.PAID, OrderStatus.PARTIALLY_REFUNDED) or not (
            order.paid_payment_id or order.payment_intent_id
        ):
            return Step(
                remembered,
                held,
                _reply(
                    record,
                    409,
                    _error("not_refundable", f"order {order_id} is {order.status}"),
                    now_ms,
                ),
            )
        if (order.payment_provider or "stripe") != "stripe":
            detail = f"order {order_id} was paid with {order.payment_provider}; refund it there"
            return Step(
                remembered, held, _reply(record, 409, _error("not_refundable", detail), now_ms)
            )
        remaining = order.amount_minor - order.refunded_minor
        amount = record.get("amountMinor")
        if amount is not None and (amount <= 0 or amount > remaining):
            detail = f"amount must be between 1 and the refundable {remaining}"
            return Step(remembered, held, _reply(record, 400, _error("invalid", detail), now_ms))
        forward = _forward(record, order, now_ms)
        forward["amountMinor"] = amount
        forward["paymentIntentId"] = order.paid_payment_id or order.payment_intent_id
        return Step(remembered, held, (Emit("commands.stripe", order_id, forward),))
    return Step(
        remembered,
        held,
        _reply(record, 400, _error("invalid", f"unknown command {event_type}"), now_ms),
    )


def _forward(record: Mapping[str, Any], order: Order, now_ms: int) -> dict[str, Any]:
    """The command for the Stripe agent, with the order's own amount and currency."""
    return {
        **dict(record),
        "eventId": derived_event_id(str(record["eventId"]), "commands.stripe"),
        "occurredAt": now_ms,
        "source": SOURCE,
        "userId": order.user_id,
        "amountMinor": order.amount_minor,
        "currency": order.currency,
        "paymentIntentId": order.payment_intent_id,
    }


def _intent_command(order: Order, cause: Mapping[str, Any], now_ms: int) -> dict[str, Any]:
    return {
        **_envelope(cause, "payments.intent.create", now_ms),
        "orderId": order.order_id,
        "taskId": None,
        "replyTo": None,
        "userId": order.user_id,
        "amountMinor": order.amount_minor,
        "currency": order.currency,
        "paymentIntentId": None,
        "successUrl": None,
        "cancelUrl": None,
        "reason": None,
        "requestId": None,
    }


def _not_payable(record: Mapping[str, Any], order: Order, now_ms: int) -> tuple[Emit, ...]:
    detail = f"order {order.order_id} is {order.status}; nothing to pay"
    return _reply(record, 409, _error("not_payable", detail), now_ms)


def _reply(
    record: Mapping[str, Any], status: int, body: Mapping[str, Any], now_ms: int
) -> tuple[Emit, ...]:
    task_id, reply_to = record.get("taskId"), record.get("replyTo")
    if not task_id or not reply_to:
        return ()
    reply = reply_record(
        task_id=str(task_id),
        status=status,
        body=body,
        cause_event_id=str(record["eventId"]),
        correlation_id=str(record["correlationId"]),
        now_ms=now_ms,
        source=SOURCE,
    )
    return (Emit(str(reply_to), str(task_id), reply),)


def _error(code: str, detail: str) -> dict[str, str]:
    return {"error": code, "detail": detail}


# -- records -------------------------------------------------------------------------


def _envelope(cause: Mapping[str, Any], event_type: str, now_ms: int) -> dict[str, Any]:
    return {
        "eventId": derived_event_id(str(cause["eventId"]), event_type),
        "eventType": event_type,
        "version": 1,
        "occurredAt": now_ms,
        "correlationId": str(cause.get("correlationId") or cause["eventId"]),
        "source": SOURCE,
    }


def _lifecycle(
    order: Order,
    event_type: str,
    cause: Mapping[str, Any],
    previous: str | None,
    now_ms: int,
    payment: Mapping[str, Any] | None,
    reason: str | None,
) -> dict[str, Any]:
    return {
        **_envelope(cause, event_type, now_ms),
        "orderId": order.order_id,
        "revision": order.revision,
        "status": order.status,
        "previousStatus": None if event_type == "order.pending_payment" else previous,
        "userId": order.user_id,
        "amountMinor": order.amount_minor,
        "currency": order.currency,
        "refundedMinor": order.refunded_minor,
        "paymentProvider": order.payment_provider,
        "paymentIntentId": order.payment_intent_id,
        "clientSecret": order.client_secret,
        "providerIds": list(order.provider_ids),
        "items": [{"productId": p, "quantity": q} for p, q in order.items],
        "paymentId": _payment_id(payment) if payment else None,
        "paymentAmountMinor": payment.get("amountMinor") if payment else None,
        "paymentCurrency": payment.get("currency") if payment else None,
        "reason": reason,
        "causeEventId": str(cause["eventId"]),
        "createdAt": order.created_at_ms,
    }


def _orphaned(order_id: str, record: Mapping[str, Any], now_ms: int, age_ms: int) -> dict[str, Any]:
    return {
        **_envelope(record, "order.payment_orphaned", now_ms),
        "orderId": order_id,
        "revision": 0,
        "status": None,
        "previousStatus": None,
        "userId": record.get("userId"),
        "amountMinor": None,
        "currency": None,
        "refundedMinor": 0,
        "paymentProvider": record.get("provider"),
        "paymentIntentId": None,
        "clientSecret": None,
        "providerIds": list(_ids_of(record)),
        "items": [],
        "paymentId": _payment_id(record),
        "paymentAmountMinor": record.get("amountMinor"),
        "paymentCurrency": record.get("currency"),
        "reason": f"no order {order_id} after {age_ms // 1000} s ({record['eventType']})",
        "causeEventId": str(record["eventId"]),
        "createdAt": None,
    }


def _payment_id(record: Mapping[str, Any]) -> str | None:
    value = record.get("paymentId") or record.get("providerObjectId")
    return str(value) if value else None


def _ids_of(record: Mapping[str, Any]) -> tuple[str, ...]:
    ids: list[str] = []
    for name in ("providerObjectId", "paymentId", "refundId"):
        value = record.get(name)
        if value and value not in ids:
            ids.append(str(value))
    return tuple(ids)


def _with(ids: Sequence[str], new: str | None) -> tuple[str, ...]:
    return tuple(ids) if not new or new in ids else (*ids, new)
