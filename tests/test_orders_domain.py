"""The order⇄payment state machine, pure: every rule of DESIGN §5/§6 and the issue."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from schemas.codec import make_codec
from streams.domain.orders import (
    RECENT_LIMIT,
    Emit,
    Held,
    Order,
    OrderStatus,
    Position,
    Step,
    step,
    sweep_orphans,
)

NOW = 1_800_000_000_000
CODEC = make_codec(None)


def created(
    order_id: str = "o1", *, amount: int = 2500, currency: str = "usd", **extra: Any
) -> dict[str, Any]:
    return {
        "eventId": f"evt-created-{order_id}",
        "eventType": "order.created",
        "version": 1,
        "occurredAt": NOW - 10_000,
        "correlationId": "corr-1",
        "source": "shop",
        "data": {
            "orderId": order_id,
            "userId": "u1",
            "amount": amount,
            "currency": currency,
            "items": [{"productId": "p1", "quantity": 2}],
            "paymentProvider": extra.pop("provider", None),
        },
    }


def cancelled(order_id: str = "o1") -> dict[str, Any]:
    return {
        "eventId": f"evt-cancel-{order_id}",
        "eventType": "order.cancelled",
        "version": 1,
        "occurredAt": NOW - 5_000,
        "correlationId": "corr-2",
        "source": "shop",
        "data": {"orderId": order_id, "reason": "customer changed mind"},
    }


def billing(
    topic: str,
    event_id: str,
    *,
    order_id: str = "o1",
    amount: int | None = 2500,
    currency: str = "usd",
    status: str = "succeeded",
    payment_id: str = "pi_1",
    occurred: int = NOW - 1_000,
    **extra: Any,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "eventId": event_id,
        "eventType": topic,
        "version": 1,
        "occurredAt": occurred,
        "correlationId": f"corr-{event_id}",
        "source": "streams.normalise_webhooks",
        "provider": "stripe",
        "providerEventId": f"evt_{event_id}",
        "providerObjectId": extra.pop("object_id", payment_id),
        "orderId": order_id,
        "userId": "u1",
        "amountMinor": amount,
        "currency": currency,
        "status": status,
        "amountRefundedMinor": extra.pop("refunded_total", None),
        "refundId": extra.pop("refund_id", None),
        "paymentId": payment_id,
        "attributes": extra.pop("attributes", {}),
    }
    assert not extra
    return record


def run(
    inputs: Sequence[tuple[str, Mapping[str, Any]]],
) -> tuple[Order | None, Held | None, list[Emit]]:
    order: Order | None = None
    held: Held | None = None
    emits: list[Emit] = []
    for topic, record in inputs:
        result = step(order, held, topic, record, NOW)
        order, held = result.order, result.held
        # Round-trip the state as the table stores it.
        order = Order.from_json(order.to_json()) if order else None
        held = Held.from_json(held.to_json()) if held else None
        emits.extend(result.emits)
    for emit in emits:  # every emitted record fits its topic's schema
        CODEC.encode(emit.topic, emit.record)
    return order, held, emits


def types(emits: Sequence[Emit]) -> list[str]:
    return [str(e.record["eventType"]) for e in emits]


SUCCEEDED = ("billing.payment.succeeded", billing("billing.payment.succeeded", "pay-ok"))
FAILED = (
    "billing.payment.failed",
    billing(
        "billing.payment.failed",
        "pay-fail",
        status="failed",
        attributes={"failure_code": "card_declined"},
    ),
)


def test_created_then_paid() -> None:
    order, held, emits = run([("orders", created()), SUCCEEDED])
    assert order is not None
    assert order.status == OrderStatus.PAID
    assert held is None
    assert types(emits) == ["order.pending_payment", "order.paid"]
    paid = emits[-1].record
    assert (paid["revision"], paid["previousStatus"], paid["paymentId"]) == (
        2,
        "PENDING_PAYMENT",
        "pi_1",
    )
    assert all(e.key == "o1" for e in emits)


def test_stripe_order_asks_for_an_intent_with_the_orders_amount() -> None:
    _, _, emits = run([("orders", created(provider="stripe", amount=4200, currency="EUR"))])
    [command] = [e for e in emits if e.topic == "commands.stripe"]
    assert command.record["eventType"] == "payments.intent.create"
    assert (command.record["amountMinor"], command.record["currency"]) == (4200, "eur")
    assert command.record["userId"] == "u1"


def test_payment_before_order_pays_it_when_the_order_arrives() -> None:
    order, held, emits = run([SUCCEEDED])
    assert order is None
    assert held is not None
    assert emits == []
    order, held, emits = run([SUCCEEDED, ("orders", created())])
    assert order is not None
    assert order.status == OrderStatus.PAID
    assert held is None
    assert types(emits) == ["order.pending_payment", "order.paid"]


@pytest.mark.parametrize(("amount", "currency"), [(2499, "usd"), (2500, "eur")])
def test_mismatch_never_pays(amount: int, currency: str) -> None:
    wrong = billing("billing.payment.succeeded", "pay-wrong", amount=amount, currency=currency)
    order, _, emits = run([("orders", created()), ("billing.payment.succeeded", wrong)])
    assert order is not None
    assert order.status == OrderStatus.PAYMENT_MISMATCH
    assert types(emits)[-1] == "order.payment_mismatch"
    assert "does not match" in str(emits[-1].record["reason"])


def test_mismatch_held_before_the_order_never_pays_either() -> None:
    wrong = billing("billing.payment.succeeded", "pay-wrong", amount=1)
    order, _, _ = run([("billing.payment.succeeded", wrong), ("orders", created())])
    assert order is not None
    assert order.status == OrderStatus.PAYMENT_MISMATCH


def test_failure_releases_stock_once_and_a_later_success_still_pays() -> None:
    again = (
        "billing.payment.failed",
        billing("billing.payment.failed", "pay-fail-2", status="failed"),
    )
    order, _, emits = run([("orders", created()), FAILED, again, SUCCEEDED])
    assert order is not None
    assert order.status == OrderStatus.PAID
    assert types(emits) == [
        "order.pending_payment",
        "order.payment_failed",
        "inventory.release",
        "order.paid",
    ]
    release = emits[2].record
    assert release["items"] == [{"productId": "p1", "quantity": 2}]
    assert release["reason"] == "payment_failed"
    assert emits[1].record["reason"] == "card_declined"


def test_late_failure_after_success_changes_nothing() -> None:
    order, _, emits = run([("orders", created()), SUCCEEDED, FAILED])
    assert order is not None
    assert order.status == OrderStatus.PAID
    assert types(emits) == ["order.pending_payment", "order.paid"]


def test_checkout_expired_cancels_and_releases() -> None:
    expired = billing(
        "billing.checkout.expired", "cs-exp", status="expired", object_id="cs_1", payment_id=""
    )
    order, _, emits = run([("orders", created()), ("billing.checkout.expired", expired)])
    assert order is not None
    assert order.status == OrderStatus.CANCELLED
    assert types(emits) == ["order.pending_payment", "order.cancelled", "inventory.release"]
    assert emits[-1].record["reason"] == "checkout_expired"


def test_paid_checkout_session_pays() -> None:
    done = billing(
        "billing.checkout.completed",
        "cs-done",
        status="complete",
        object_id="cs_1",
        attributes={"payment_status": "paid"},
    )
    order, _, _ = run([("orders", created()), ("billing.checkout.completed", done)])
    assert order is not None
    assert order.status == OrderStatus.PAID


def test_order_cancelled_releases_and_a_later_payment_is_reported() -> None:
    order, _, emits = run([("orders", created()), ("orders", cancelled()), SUCCEEDED])
    assert order is not None
    assert order.status == OrderStatus.CANCELLED
    assert types(emits) == [
        "order.pending_payment",
        "order.cancelled",
        "inventory.release",
        "order.payment_mismatch",
    ]


def refund(
    event_id: str,
    refund_id: str,
    amount: int,
    *,
    status: str = "succeeded",
    total: int | None = None,
) -> tuple[str, dict[str, Any]]:
    return (
        "billing.payment.refunded",
        billing(
            "billing.payment.refunded",
            event_id,
            amount=amount,
            status=status,
            object_id=refund_id,
            refund_id=refund_id,
            refunded_total=total,
        ),
    )


def test_partial_then_full_refund() -> None:
    order, _, emits = run([("orders", created()), SUCCEEDED, refund("r1", "re_1", 1000)])
    assert order is not None
    assert order.status == OrderStatus.PARTIALLY_REFUNDED
    assert order.refunded_minor == 1000
    order, _, emits = run(
        [("orders", created()), SUCCEEDED, refund("r1", "re_1", 1000), refund("r2", "re_2", 1500)]
    )
    assert order is not None
    assert order.status == OrderStatus.REFUNDED
    assert order.refunded_minor == 2500
    statuses = [e.record["status"] for e in emits if e.record["eventType"] == "order.refunded"]
    assert statuses == ["PARTIALLY_REFUNDED", "REFUNDED"]


def test_refund_reported_twice_by_different_events_counts_once() -> None:
    # refund.created and charge.refunded both report re_1.
    order, _, emits = run(
        [
            ("orders", created()),
            SUCCEEDED,
            refund("r1", "re_1", 1000),
            refund("r1b", "re_1", 1000, total=1000),
        ]
    )
    assert order is not None
    assert order.refunded_minor == 1000
    assert types(emits).count("order.refunded") == 1


def test_failed_refund_drops_out() -> None:
    order, _, emits = run(
        [
            ("orders", created()),
            SUCCEEDED,
            refund("r1", "re_1", 1000),
            refund("r1f", "re_1", 1000, status="failed"),
        ]
    )
    assert order is not None
    assert order.refunded_minor == 0
    # The refund that added says nothing; the one that dropped out says why.
    reasons = [e.record["reason"] for e in emits if e.record["eventType"] == "order.refunded"]
    assert reasons == [None, "refund re_1 failed"]


def test_every_scenario_replayed_gives_the_same_state_and_no_extra_events() -> None:
    scenario = [
        ("orders", created(provider="stripe")),
        FAILED,
        SUCCEEDED,
        refund("r1", "re_1", 1000),
        refund("r2", "re_2", 1500),
    ]
    once = run(scenario)
    twice = run([item for item in scenario for _ in range(2)])
    assert once[0] == twice[0]
    # Each repeat sends its input's records again (same ids), nothing new.
    ids_twice = [e.record["eventId"] for e in twice[2]]
    assert list(dict.fromkeys(ids_twice)) == [e.record["eventId"] for e in once[2]]
    assert len(ids_twice) == 2 * len(once[2])


def test_derived_ids_are_stable_across_runs() -> None:
    a = run([("orders", created()), SUCCEEDED])[2]
    b = run([("orders", created()), SUCCEEDED])[2]
    assert [e.record["eventId"] for e in a] == [e.record["eventId"] for e in b]


def test_orphans_reported_once_after_the_hold_and_still_paid_later() -> None:
    _, held, _ = run([SUCCEEDED])
    assert held is not None
    assert sweep_orphans({"o1": held}, held.first_held_ms + 999, hold_ms=1000, keep_ms=10_000) == []
    [(order_id, reported, emits)] = sweep_orphans(
        {"o1": held}, held.first_held_ms + 1000, hold_ms=1000, keep_ms=10_000
    )
    assert order_id == "o1"
    assert reported is not None
    assert reported.reported
    assert types(emits) == ["order.payment_orphaned"]
    CODEC.encode("orders.lifecycle", emits[0].record)
    assert (
        sweep_orphans({"o1": reported}, held.first_held_ms + 2000, hold_ms=1000, keep_ms=10_000)
        == []
    )
    result = step(None, reported, "orders", created(), NOW)
    assert result.order is not None
    assert result.order.status == OrderStatus.PAID
    [(_, dropped, _)] = sweep_orphans(
        {"o1": reported}, held.first_held_ms + 10_000, hold_ms=1000, keep_ms=10_000
    )
    assert dropped is None


def command(
    event_type: str, *, order_id: str = "o1", amount: int | None = None, task: str = "t1"
) -> dict[str, Any]:
    return {
        "eventId": f"cmd-{task}",
        "eventType": event_type,
        "version": 1,
        "occurredAt": NOW,
        "correlationId": "corr-cmd",
        "source": "ingress",
        "orderId": order_id,
        "taskId": task,
        "replyTo": "replies",
        "userId": None,
        "amountMinor": amount,
        "currency": None,
        "paymentIntentId": None,
        "successUrl": "https://shop.example/ok" if "checkout" in event_type else None,
        "cancelUrl": "https://shop.example/no" if "checkout" in event_type else None,
        "reason": None,
        "requestId": task,
    }


def reply_of(result: Step) -> tuple[int, str]:
    [emit] = result.emits
    assert emit.topic == "replies"
    CODEC.encode("replies", emit.record)
    return int(emit.record["status"]), str(emit.record["body"])


def test_command_for_an_unknown_order_is_answered_404() -> None:
    assert (
        reply_of(step(None, None, "commands.payments", command("payments.intent.create"), NOW))[0]
        == 404
    )


def test_intent_command_is_forwarded_with_the_orders_amount() -> None:
    order, _, _ = run([("orders", created(amount=999))])
    result = step(order, None, "commands.payments", command("payments.intent.create"), NOW)
    [emit] = result.emits
    assert emit.topic == "commands.stripe"
    assert (emit.record["amountMinor"], emit.record["currency"], emit.record["taskId"]) == (
        999,
        "usd",
        "t1",
    )


def test_intent_command_for_an_order_with_an_intent_answers_with_it() -> None:
    setup = {
        "eventId": "setup-1",
        "eventType": "payment.intent.created",
        "version": 1,
        "occurredAt": NOW,
        "correlationId": "c",
        "source": "streams.stripe_calls",
        "orderId": "o1",
        "provider": "stripe",
        "command": "payments.intent.create",
        "taskId": None,
        "intentId": "pi_9",
        "clientSecret": "pi_9_secret",
        "checkoutSessionId": None,
        "checkoutUrl": None,
        "refundId": None,
        "amountMinor": 2500,
        "currency": "usd",
        "status": "requires_payment_method",
        "errorCode": None,
        "errorMessage": None,
    }
    order, _, emits = run([("orders", created()), ("payments.setup", setup)])
    assert order is not None
    assert order.payment_intent_id == "pi_9"
    assert types(emits)[-1] == "order.updated"
    assert emits[-1].record["clientSecret"] == "pi_9_secret"
    status, body = reply_of(
        step(order, None, "commands.payments", command("payments.intent.create"), NOW)
    )
    assert status == 200
    assert "pi_9_secret" in body


def test_paid_order_refuses_a_new_intent_and_refund_checks_the_amount() -> None:
    order, _, _ = run([("orders", created()), SUCCEEDED])
    assert (
        reply_of(step(order, None, "commands.payments", command("payments.intent.create"), NOW))[0]
        == 409
    )
    assert (
        reply_of(
            step(
                order,
                None,
                "commands.payments",
                command("payments.refund.create", amount=2501),
                NOW,
            )
        )[0]
        == 400
    )
    result = step(
        order, None, "commands.payments", command("payments.refund.create", amount=500), NOW
    )
    [emit] = result.emits
    assert (emit.topic, emit.record["amountMinor"], emit.record["paymentIntentId"]) == (
        "commands.stripe",
        500,
        "pi_1",
    )


def test_refund_of_an_unpaid_order_is_refused() -> None:
    order, _, _ = run([("orders", created())])
    assert (
        reply_of(step(order, None, "commands.payments", command("payments.refund.create"), NOW))[0]
        == 409
    )


def test_refund_of_an_order_paid_elsewhere_is_refused_and_a_refused_refund_changes_nothing() -> (
    None
):
    razorpay = billing("billing.payment.succeeded", "rzp-ok", payment_id="pay_1")
    razorpay["provider"] = "razorpay"
    order, _, _ = run([("orders", created()), ("billing.payment.succeeded", razorpay)])
    assert order is not None
    assert (
        reply_of(step(order, None, "commands.payments", command("payments.refund.create"), NOW))[0]
        == 409
    )
    paid, _, _ = run([("orders", created()), SUCCEEDED])
    assert paid is not None
    refused = {
        "eventId": "setup-rf",
        "eventType": "payment.setup_failed",
        "version": 1,
        "occurredAt": NOW,
        "correlationId": "c",
        "source": "streams.stripe_calls",
        "orderId": "o1",
        "provider": "stripe",
        "command": "payments.refund.create",
        "taskId": "t1",
        "intentId": None,
        "clientSecret": None,
        "checkoutSessionId": None,
        "checkoutUrl": None,
        "refundId": None,
        "amountMinor": None,
        "currency": None,
        "status": None,
        "errorCode": "amount_too_large",
        "errorMessage": "too much",
    }
    result = step(paid, None, "payments.setup", refused, NOW)
    assert result.emits == ()
    assert result.order is not None
    assert result.order.status == OrderStatus.PAID


# -- repeats after a crash (state stored, records not durable) ---------------------


SETUP_CREATED = {
    "eventId": "setup-created",
    "eventType": "payment.intent.created",
    "version": 1,
    "occurredAt": NOW,
    "correlationId": "c",
    "source": "streams.stripe_calls",
    "orderId": "o1",
    "provider": "stripe",
    "command": "payments.intent.create",
    "taskId": None,
    "intentId": "pi_1",
    "clientSecret": "pi_1_secret",
    "checkoutSessionId": None,
    "checkoutUrl": None,
    "refundId": None,
    "amountMinor": 2500,
    "currency": "usd",
    "status": "requires_payment_method",
    "errorCode": None,
    "errorMessage": None,
}


def stored(order: Order | None) -> Order | None:
    return Order.from_json(order.to_json()) if order else None


def test_a_repeat_of_each_recent_input_sends_its_records_again() -> None:
    # Every kind of input that emits: the create (with a held payment applied), a set-up
    # outcome, a failure (lifecycle and release), a success, a refund, a command reply,
    # a forwarded command, a cancel.
    held_early = billing("billing.payment.pending", "pay-pending", status="processing")
    held = step(None, None, "billing.payment.pending", held_early, NOW).held
    order: Order | None = None
    inputs: list[tuple[str, Mapping[str, Any]]] = [
        ("orders", created(provider="stripe")),
        ("payments.setup", SETUP_CREATED),
        FAILED,
        ("commands.payments", command("payments.checkout.create", task="t-checkout")),
        SUCCEEDED,
        ("commands.payments", command("payments.intent.create", task="t-intent")),
        refund("r1", "re_1", 1000),
    ]
    originals: list[tuple[tuple[str, Mapping[str, Any]], tuple[Emit, ...]]] = []
    for offset, (topic, record) in enumerate(inputs):
        result = step(order, held, topic, record, NOW + offset, position=(topic, 0, offset))
        assert result.emits, topic
        order, held = stored(result.order), result.held
        originals.append(((topic, record), result.emits))
    assert held is None
    for offset, ((topic, record), emits) in enumerate(originals):
        # Read again later (after a restart: another clock), state as stored.
        again = step(order, None, topic, record, NOW + 60_000, position=(topic, 0, offset))
        assert again.emits == emits
        assert again.order == order
        # The same event sent twice (another position) is a duplicate: nothing again.
        assert step(order, None, topic, record, NOW, position=(topic, 0, 99)).emits == ()
        for emit in again.emits:
            CODEC.encode(emit.topic, emit.record)
    cancel_order = stored(step(None, None, "orders", created("o2"), NOW).order)
    cancel = step(cancel_order, None, "orders", cancelled("o2"), NOW)
    assert types(cancel.emits) == ["order.cancelled", "inventory.release"]
    assert step(stored(cancel.order), None, "orders", cancelled("o2"), NOW + 1).emits == (
        cancel.emits
    )


def test_a_repeat_whose_offset_is_committed_sends_nothing() -> None:
    offsets: dict[tuple[str, int], int] = {}

    def committed(topic: str, partition: int) -> int | None:
        return offsets.get((topic, partition))

    create: Position = ("orders", 3, 10)
    first = step(None, None, "orders", created(), NOW, position=create, committed=committed)
    order = stored(first.order)
    assert order is not None
    assert [entry.event_id for entry in order.recent] == ["evt-created-o1"]
    offsets[("orders", 3)] = 11  # the create's offset is committed
    topic, record = SUCCEEDED
    paid = step(order, None, topic, record, NOW, position=(topic, 3, 4), committed=committed)
    order = stored(paid.order)
    assert order is not None
    assert [entry.event_id for entry in order.recent] == ["pay-ok"]  # the create forgotten
    assert step(order, None, "orders", created(), NOW).emits == ()
    assert step(order, None, topic, record, NOW).emits == paid.emits


def test_inputs_without_a_known_commit_are_kept_up_to_the_limit() -> None:
    order = stored(step(None, None, "orders", created(), NOW).order)
    for n in range(RECENT_LIMIT):
        refunded = refund(f"r{n}", f"re_{n}", n + 1)
        order = stored(step(order, None, refunded[0], refunded[1], NOW).order)
    assert order is not None
    assert len(order.recent) == RECENT_LIMIT
    assert step(order, None, "orders", created(), NOW).emits == ()  # the oldest forgotten
    last = refund(f"r{RECENT_LIMIT - 1}", f"re_{RECENT_LIMIT - 1}", RECENT_LIMIT)
    assert types(step(order, None, last[0], last[1], NOW).emits) == ["order.refunded"]


def test_inputs_that_emit_nothing_keep_no_entry() -> None:
    pending = billing("billing.payment.pending", "pay-pending", status="processing")
    order = stored(step(None, None, "orders", created(), NOW).order)
    after = step(order, None, "billing.payment.pending", pending, NOW)
    assert after.emits == ()
    assert after.order is not None
    assert [entry.event_id for entry in after.order.recent] == ["evt-created-o1"]


def test_states_stored_before_recent_existed_still_load() -> None:
    order = step(None, None, "orders", created(), NOW).order
    assert order is not None
    old = json.loads(order.to_json())
    del old["recent"]
    loaded = Order.from_json(json.dumps(old))
    assert loaded.recent == ()
    assert loaded.seen == order.seen
    # A repeat it cannot recognise the emits of changes nothing and sends nothing.
    assert step(loaded, None, "orders", created(), NOW) == Step(loaded, None)
    held = step(None, None, *SUCCEEDED, NOW).held
    assert held is not None
    old_held = json.loads(held.to_json())
    del old_held["reportedBy"], old_held["reportedMs"]
    assert Held.from_json(json.dumps(old_held)) == held


def test_a_held_list_left_by_a_crash_is_dropped_when_its_create_is_read_again() -> None:
    held = step(None, None, *SUCCEEDED, NOW).held
    created_step = step(None, held, "orders", created(), NOW)
    assert created_step.held is None
    # Crash: the order was stored, the held list not yet deleted.
    again = step(stored(created_step.order), held, "orders", created(), NOW + 5)
    assert again.held is None
    assert again.emits == created_step.emits


def test_the_tick_that_reported_orphans_reports_them_again_when_read_again() -> None:
    held = step(None, None, *SUCCEEDED, NOW).held
    assert held is not None
    tick: Position = ("join.ticks", 2, 40)
    at = held.first_held_ms + 1000
    [(_, reported, emits)] = sweep_orphans(
        {"o1": held}, at, hold_ms=1000, keep_ms=10_000, position=tick
    )
    assert reported is not None
    reported = Held.from_json(reported.to_json())
    assert (reported.reported_by, reported.reported_ms) == (tick, at)
    [(_, same, again)] = sweep_orphans(
        {"o1": reported}, at + 30_000, hold_ms=1000, keep_ms=10_000, position=tick
    )
    assert (same, again) == (reported, emits)
    assert (
        sweep_orphans(
            {"o1": reported}, at + 2_000, hold_ms=1000, keep_ms=10_000, position=(tick[0], 2, 41)
        )
        == []
    )
