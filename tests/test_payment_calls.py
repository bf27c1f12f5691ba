"""``streams.domain.payment_calls`` (pure) and the ``stripe_calls`` effect's control flow.

The first part is the pure mapping: command → call → records. The second drives the
effect (``streams.agents.stripe_calls.call_stripe``) and the per-record runner loop
(``run_by_key``) with an in-memory outbox and a scripted Stripe client: a stand-in, on
purpose, because what is tested here is how the agent reacts to each *kind* of outcome
(created, refused, unavailable) — which a real server cannot be made to produce on cue.
The connector itself is tested against the local Stripe-compatible server.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from base.clock import FrozenClock
from base.errors import InvalidEvent, PermanentError, TransientError
from schemas.codec import make_codec
from streams.agents.by_key import run_by_key
from streams.agents.stripe_calls import AGENT, call_stripe
from streams.domain.ids import derived_event_id
from streams.domain.payment_calls import (
    CHECKOUT_CREATE,
    CHECKOUT_CREATED,
    INTENT_CREATE,
    INTENT_CREATED,
    REFUND_CREATE,
    REFUND_CREATED,
    SETUP_FAILED,
    SETUP_TOPIC,
    SOURCE,
    CheckoutCall,
    IntentCall,
    Output,
    PaymentCommand,
    RefundCall,
    Rejected,
    checkout_created,
    intent_created,
    log_fields,
    plan,
    redact,
    refund_created,
    rejected,
    setup_failed,
)
from streams.domain.replies import REPLY_TYPE
from streams.domain.retry import RetryPolicy
from streams.effects import EffectRunner
from streams.records import Inbound, header_value

CODEC = make_codec(None)
NOW_MS = 1_735_689_600_000
SECRET = "pi_3Abc_secret_Zyx987"


def command_record(event_type: str = INTENT_CREATE, **fields: Any) -> dict[str, Any]:
    """A PaymentCommand as the join forwards it to commands.stripe."""
    record: dict[str, Any] = {
        "eventId": "cmd-1",
        "eventType": event_type,
        "version": 1,
        "occurredAt": NOW_MS - 1000,
        "correlationId": "corr-1",
        "source": "streams.join_orders",
        "orderId": "ord_1",
        "taskId": "task-1",
        "replyTo": "replies",
        "userId": "usr_1",
        "amountMinor": 2500,
        "currency": "eur",
        "paymentIntentId": "pi_3Abc" if event_type == REFUND_CREATE else None,
        "successUrl": "https://shop.example/ok" if event_type == CHECKOUT_CREATE else None,
        "cancelUrl": "https://shop.example/no" if event_type == CHECKOUT_CREATE else None,
        "reason": None,
        "requestId": None,
    }
    record.update(fields)
    CODEC.encode("commands.stripe", record)  # the fixture itself is a valid command
    return record


def command(event_type: str = INTENT_CREATE, **fields: Any) -> PaymentCommand:
    return PaymentCommand.from_record(command_record(event_type, **fields))


@dataclass(frozen=True)
class Intent:
    intent_id: str = "pi_3Abc"
    client_secret: str = field(default=SECRET, repr=False)
    status: str = "requires_payment_method"
    amount_minor: int = 2500
    currency: str = "eur"


@dataclass(frozen=True)
class Checkout:
    session_id: str = "cs_test_1"
    url: str = "https://checkout.example/c/pay/cs_test_1"
    payment_intent_id: str | None = None


@dataclass(frozen=True)
class Refund:
    refund_id: str = "re_1"
    payment_intent_id: str = "pi_3Abc"
    amount_minor: int = 1000
    currency: str = "eur"
    status: str = "succeeded"


def encoded(outputs: Sequence[Output]) -> None:
    """Every output is a valid record of its topic."""
    for output in outputs:
        CODEC.encode(output.topic, output.record)


def split(outputs: Sequence[Output]) -> tuple[Output, Output | None]:
    setups = [o for o in outputs if o.topic == SETUP_TOPIC]
    replies = [o for o in outputs if o.topic == "replies"]
    assert len(setups) == 1
    assert len(replies) <= 1
    assert len(outputs) == len(setups) + len(replies)
    return setups[0], (replies[0] if replies else None)


def reply_of(output: Output | None) -> tuple[int, dict[str, Any]]:
    assert output is not None
    return int(output.record["status"]), json.loads(output.record["body"])


# -- commands and calls ----------------------------------------------------------------


def test_intent_command_plans_a_payment_intent_with_the_joined_amount() -> None:
    assert plan(command(INTENT_CREATE)) == IntentCall(
        order_id="ord_1", user_id="usr_1", amount_minor=2500, currency="eur"
    )


def test_checkout_command_plans_a_checkout_session() -> None:
    assert plan(command(CHECKOUT_CREATE)) == CheckoutCall(
        order_id="ord_1",
        user_id="usr_1",
        amount_minor=2500,
        currency="eur",
        success_url="https://shop.example/ok",
        cancel_url="https://shop.example/no",
    )


def test_refund_command_plans_a_refund_with_a_stable_request_id() -> None:
    assert plan(command(REFUND_CREATE, amountMinor=None, requestId="idem-7")) == RefundCall(
        payment_intent_id="pi_3Abc", order_id="ord_1", amount_minor=None, request_id="idem-7"
    )
    # Without the caller's key: the task id, else the command's own (redelivery-stable) id.
    assert command(REFUND_CREATE).refund_request_id == "task-1"
    untasked = command(REFUND_CREATE, taskId=None, replyTo=None)
    assert untasked.refund_request_id == "cmd-1"


def test_unknown_command_type_is_permanent() -> None:
    with pytest.raises(PermanentError, match=r"payments\.capture"):
        plan(command("payments.capture"))


@pytest.mark.parametrize(
    ("event_type", "fields", "missing"),
    [
        (INTENT_CREATE, {"amountMinor": None}, "amountMinor"),
        (INTENT_CREATE, {"currency": None}, "currency"),
        (CHECKOUT_CREATE, {"userId": ""}, "userId"),
        (REFUND_CREATE, {"paymentIntentId": None}, "paymentIntentId"),
    ],
)
def test_a_field_the_join_fills_in_missing_is_an_invalid_event(
    event_type: str, fields: dict[str, Any], missing: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        plan(command(event_type, **fields))
    assert caught.value.field == missing


def test_reply_topic_must_be_a_reply_topic() -> None:
    with pytest.raises(InvalidEvent) as caught:
        command(replyTo="payments.setup")
    assert caught.value.field == "replyTo"


def test_checkout_without_urls_is_answered_400_without_a_stripe_call() -> None:
    cmd = command(CHECKOUT_CREATE, successUrl=None)
    decision = plan(cmd)
    assert isinstance(decision, Rejected)
    outputs = rejected(cmd, decision, NOW_MS)
    encoded(outputs)
    [reply] = outputs  # no payments.setup record: the order is not marked as failed
    assert reply.topic == "replies"
    status, body = reply_of(reply)
    assert status == 400
    assert body == {"error": "invalid", "detail": "successUrl is required for a checkout session"}


# -- outcomes --------------------------------------------------------------------------


def test_intent_created_sets_up_the_order_and_answers_200() -> None:
    outputs = intent_created(command(INTENT_CREATE), Intent(), NOW_MS)
    encoded(outputs)
    setup, reply = split(outputs)
    assert setup.key == "ord_1"
    assert setup.record == {
        "eventId": derived_event_id("cmd-1", INTENT_CREATED),
        "eventType": INTENT_CREATED,
        "version": 1,
        "occurredAt": NOW_MS,
        "correlationId": "corr-1",
        "source": SOURCE,
        "orderId": "ord_1",
        "provider": "stripe",
        "command": INTENT_CREATE,
        "taskId": "task-1",
        "intentId": "pi_3Abc",
        "clientSecret": SECRET,
        "checkoutSessionId": None,
        "checkoutUrl": None,
        "refundId": None,
        "amountMinor": 2500,
        "currency": "eur",
        "status": "requires_payment_method",
        "errorCode": None,
        "errorMessage": None,
    }
    assert reply is not None
    assert reply.key == "task-1"
    assert reply.record["taskId"] == "task-1"
    assert reply.record["correlationId"] == "corr-1"
    assert reply_of(reply) == (
        200,
        {
            "orderId": "ord_1",
            "paymentIntentId": "pi_3Abc",
            "clientSecret": SECRET,
            "status": "requires_payment_method",
            "amount": 2500,
            "currency": "eur",
        },
    )


def test_checkout_created_answers_201_with_the_url() -> None:
    outputs = checkout_created(command(CHECKOUT_CREATE), Checkout(payment_intent_id="pi_9"), NOW_MS)
    encoded(outputs)
    setup, reply = split(outputs)
    assert setup.record["eventType"] == CHECKOUT_CREATED
    assert setup.record["checkoutSessionId"] == "cs_test_1"
    assert setup.record["checkoutUrl"] == "https://checkout.example/c/pay/cs_test_1"
    assert setup.record["intentId"] == "pi_9"
    assert setup.record["clientSecret"] is None
    assert reply_of(reply) == (
        201,
        {
            "orderId": "ord_1",
            "checkoutSessionId": "cs_test_1",
            "url": "https://checkout.example/c/pay/cs_test_1",
        },
    )


def test_refund_created_answers_201() -> None:
    outputs = refund_created(command(REFUND_CREATE, amountMinor=1000), Refund(), NOW_MS)
    encoded(outputs)
    setup, reply = split(outputs)
    assert setup.record["eventType"] == REFUND_CREATED
    assert setup.record["refundId"] == "re_1"
    assert setup.record["intentId"] == "pi_3Abc"
    assert (setup.record["amountMinor"], setup.record["currency"]) == (1000, "eur")
    assert setup.record["status"] == "succeeded"
    assert reply_of(reply) == (
        201,
        {"orderId": "ord_1", "refundId": "re_1", "amount": 1000, "status": "succeeded"},
    )


def test_stripe_refusal_becomes_setup_failed_and_a_502_reply() -> None:
    error = PermanentError(
        "stripe create payment intent: InvalidRequestError: Amount must be at least 50 "
        "(http 400, code amount_too_small) key sk_test_abcdef123"
    )
    outputs = setup_failed(command(INTENT_CREATE), error, NOW_MS)
    encoded(outputs)
    setup, reply = split(outputs)
    assert setup.record["eventType"] == SETUP_FAILED
    assert setup.record["eventId"] == derived_event_id("cmd-1", SETUP_FAILED)
    assert setup.record["errorCode"] == "PermanentError"
    message = setup.record["errorMessage"]
    assert "Amount must be at least 50" in message
    assert "sk_test_abcdef123" not in message
    assert setup.record["clientSecret"] is None
    status, body = reply_of(reply)
    assert status == 502
    assert body == {"error": "stripe_refused", "detail": message}


def test_setup_failed_uses_the_errors_own_code_when_it_has_one() -> None:
    class CardDeclined(PermanentError):
        code = "card_declined"

    [setup, _] = setup_failed(command(REFUND_CREATE), CardDeclined("declined"), NOW_MS)
    assert setup.record["errorCode"] == "card_declined"
    assert setup.record["intentId"] == "pi_3Abc"  # the intent the refund was for


def test_no_reply_without_task_and_reply_topic() -> None:
    for fields in ({"taskId": None}, {"replyTo": None}, {"taskId": None, "replyTo": None}):
        cmd = command(INTENT_CREATE, **fields)
        assert cmd.task_id is None
        assert cmd.reply_to is None
        for outputs in (
            intent_created(cmd, Intent(), NOW_MS),
            setup_failed(cmd, PermanentError("no"), NOW_MS),
        ):
            setup, reply = split(outputs)
            assert reply is None
            assert setup.record["taskId"] is None
    rejection = Rejected(400, "invalid", "x")
    assert rejected(command(CHECKOUT_CREATE, taskId=None), rejection, NOW_MS) == ()


def test_output_ids_are_deterministic_per_command_and_outcome() -> None:
    first = intent_created(command(INTENT_CREATE), Intent(), NOW_MS)
    again = intent_created(command(INTENT_CREATE), Intent(), NOW_MS + 60_000)
    assert [o.record["eventId"] for o in first] == [o.record["eventId"] for o in again]
    setup, reply = split(first)
    assert reply is not None
    assert reply.record["eventId"] == derived_event_id("cmd-1", REPLY_TYPE)
    failed, _ = split(setup_failed(command(INTENT_CREATE), PermanentError("x"), NOW_MS))
    other, _ = split(intent_created(command(INTENT_CREATE, eventId="cmd-2"), Intent(), NOW_MS))
    ids = {setup.record["eventId"], failed.record["eventId"], other.record["eventId"]}
    assert len(ids) == 3


def test_headers_carry_the_envelope() -> None:
    setup, reply = split(intent_created(command(INTENT_CREATE), Intent(), NOW_MS))
    headers = dict(setup.headers())
    assert headers == {
        "event-type": INTENT_CREATED.encode(),
        "event-id": setup.record["eventId"].encode(),
        "correlation-id": b"corr-1",
        "content-type": b"application/vnd.sluice.payment-setup+avro",
    }
    assert reply is not None
    assert dict(reply.headers())["content-type"] == b"application/vnd.sluice.reply+avro"


def test_client_secret_never_reaches_a_log_line_or_repr() -> None:
    cmd = command(INTENT_CREATE)
    outputs = intent_created(cmd, Intent(), NOW_MS)
    fields = log_fields(cmd, outputs)
    assert fields["intent_id"] == "pi_3Abc"
    assert fields["reply_status"] == 200
    assert SECRET not in repr(fields)
    assert SECRET not in repr(outputs)
    # An error message that quotes a client secret is masked before it goes anywhere.
    failed = setup_failed(cmd, PermanentError(f"intent {SECRET} is in a bad state"), NOW_MS)
    assert SECRET not in repr(log_fields(cmd, failed))
    assert all(SECRET not in json.dumps(o.record) for o in failed)
    assert redact(f"x {SECRET} y") == "x pi_3Abc_secret_*** y"


# -- the effect, with a scripted Stripe client -------------------------------------------


class ListOutbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]] = []

    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        self.sent.append((topic, key, value, list(headers)))

    def topics(self) -> list[str]:
        return [topic for topic, *_ in self.sent]

    def decoded(self, topic: str) -> list[dict[str, Any]]:
        return [CODEC.decode(v).record for t, _, v, _ in self.sent if t == topic]


class ScriptedStripe:
    """Answers each call with the next scripted result (or raises it)."""

    def __init__(self, *script: object) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def _next(self, name: str, kwargs: dict[str, Any]) -> Any:
        self.calls.append((name, kwargs))
        result = self.script.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result

    async def create_payment_intent(self, **kwargs: Any) -> Intent:
        result: Intent = self._next("intent", kwargs)
        return result

    async def create_checkout_session(self, **kwargs: Any) -> Checkout:
        result: Checkout = self._next("checkout", kwargs)
        return result

    async def create_refund(self, **kwargs: Any) -> Refund:
        result: Refund = self._next("refund", kwargs)
        return result


def inbound(record: dict[str, Any], offset: int = 0) -> Inbound:
    return Inbound(
        topic="commands.stripe",
        partition=0,
        offset=offset,
        key=str(record["orderId"]).encode(),
        value=CODEC.encode("commands.stripe", record),
        headers=(("traceparent", b"00-abc-def-01"),),
    )


async def run_effect(
    records: Sequence[Inbound], stripe: ScriptedStripe | None, outbox: ListOutbox
) -> None:
    async def client() -> ScriptedStripe:
        if stripe is None:
            raise PermanentError("STRIPE_API_KEY is not set")
        return stripe

    await call_stripe(
        records, codec=CODEC, outbox=outbox, clock=FrozenClock(NOW_MS / 1000), stripe=client
    )


async def test_effect_sends_setup_and_reply_with_headers() -> None:
    outbox, stripe = ListOutbox(), ScriptedStripe(Intent())
    await run_effect([inbound(command_record(INTENT_CREATE))], stripe, outbox)
    assert stripe.calls == [
        (
            "intent",
            {"order_id": "ord_1", "user_id": "usr_1", "amount_minor": 2500, "currency": "eur"},
        )
    ]
    assert outbox.topics() == [SETUP_TOPIC, "replies"]
    _, key, _, headers = outbox.sent[0]
    assert key == b"ord_1"
    assert header_value(headers, "traceparent") == "00-abc-def-01"
    assert header_value(headers, "event-type") == INTENT_CREATED
    [setup] = outbox.decoded(SETUP_TOPIC)
    assert setup["clientSecret"] == SECRET
    assert outbox.sent[1][1] == b"task-1"


async def test_effect_turns_a_refusal_into_setup_failed_not_an_error() -> None:
    outbox = ListOutbox()
    stripe = ScriptedStripe(PermanentError("stripe create refund: charge already refunded"))
    await run_effect([inbound(command_record(REFUND_CREATE))], stripe, outbox)
    [setup] = outbox.decoded(SETUP_TOPIC)
    assert setup["eventType"] == SETUP_FAILED
    [reply] = outbox.decoded("replies")
    assert reply["status"] == 502


async def test_effect_reraises_transient_errors_and_sends_nothing_for_them() -> None:
    outbox = ListOutbox()
    stripe = ScriptedStripe(TransientError("stripe create payment intent: 503"))
    with pytest.raises(TransientError):
        await run_effect([inbound(command_record(INTENT_CREATE))], stripe, outbox)
    assert outbox.sent == []


async def test_effect_refuses_bad_commands_before_any_call() -> None:
    outbox, stripe = ListOutbox(), ScriptedStripe(Intent())
    good = inbound(command_record(INTENT_CREATE), offset=0)
    bad = inbound(command_record("payments.capture", eventId="cmd-2"), offset=1)
    with pytest.raises(PermanentError, match=r"payments\.capture"):
        await run_effect([good, bad], stripe, outbox)
    assert stripe.calls == []
    assert outbox.sent == []


async def test_effect_without_an_api_key_is_permanent() -> None:
    with pytest.raises(PermanentError, match="STRIPE_API_KEY"):
        await run_effect([inbound(command_record(INTENT_CREATE))], None, ListOutbox())


async def test_effect_answers_rejected_commands_without_a_client() -> None:
    outbox = ListOutbox()
    await run_effect([inbound(command_record(CHECKOUT_CREATE, cancelUrl=None))], None, outbox)
    [reply] = outbox.decoded("replies")
    assert reply["status"] == 400
    assert outbox.topics() == ["replies"]


async def test_one_transient_failure_retries_only_its_own_command(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Per-record runs: the failing command goes to a retry topic, the others finish."""
    outbox = ListOutbox()
    stripe = ScriptedStripe(Intent(), TransientError("stripe: 503"), Intent(intent_id="pi_3"))
    clock = FrozenClock(NOW_MS / 1000)

    async def client() -> ScriptedStripe:
        return stripe

    runner = EffectRunner(outbox=outbox, codec=CODEC, policy=RetryPolicy(), clock=clock)

    async def effect(records: Sequence[Inbound]) -> None:
        await call_stripe(records, codec=CODEC, outbox=outbox, clock=clock, stripe=client)

    runner.register(AGENT, effect)
    records = [
        inbound(command_record(INTENT_CREATE, eventId=f"cmd-{n}", orderId=f"ord_{n}"), offset=n)
        for n in range(3)
    ]
    with caplog.at_level(logging.DEBUG):
        await run_by_key(runner, AGENT, records, limit=1)
    retried = [sent for sent in outbox.sent if sent[0].startswith("retry.")]
    assert len(retried) == 1
    assert retried[0][1] == b"ord_1"
    assert [r["orderId"] for r in outbox.decoded(SETUP_TOPIC)] == ["ord_0", "ord_2"]
    assert len(outbox.decoded("replies")) == 2
    assert SECRET not in caplog.text
    for record in caplog.records:
        assert SECRET not in repr(vars(record))


async def test_commands_of_one_order_run_in_offset_order() -> None:
    outbox = ListOutbox()
    stripe = ScriptedStripe(Intent(), Intent(), Intent())
    clock = FrozenClock(NOW_MS / 1000)

    async def client() -> ScriptedStripe:
        return stripe

    runner = EffectRunner(outbox=outbox, codec=CODEC, policy=RetryPolicy(), clock=clock)

    async def effect(records: Sequence[Inbound]) -> None:
        await call_stripe(records, codec=CODEC, outbox=outbox, clock=clock, stripe=client)

    runner.register(AGENT, effect)
    records = [
        inbound(command_record(INTENT_CREATE, eventId=f"cmd-{n}"), offset=n) for n in range(3)
    ]
    await run_by_key(runner, AGENT, records, limit=8)
    assert [r["eventId"] for r in outbox.decoded(SETUP_TOPIC)] == [
        derived_event_id(f"cmd-{n}", INTENT_CREATED) for n in range(3)
    ]
