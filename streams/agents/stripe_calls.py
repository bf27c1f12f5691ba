"""commands.stripe → Stripe API → payments.setup (+ replies for a waiting caller).

What each command asks for and what its outcome sends is ``streams.domain.payment_calls``
(pure); this module makes the call and sends the records. Per command:

- success: ``payment.{intent,checkout,refund}.created`` on ``payments.setup`` (keyed by
  order id) and, when the command carries ``taskId`` + ``replyTo``, the reply;
- Stripe refused (``PermanentError`` from the connector): ``payment.setup_failed`` and a
  502 reply; the command is done (the join turns the failure into
  ``order.payment_setup_failed``), it is not dead-lettered;
- Stripe unreachable, 429, 5xx (``TransientError``): re-raised, so the ``EffectRunner``
  puts the command on the next ``retry.<delay>`` topic: retried, not lost;
- a command that cannot be made (undecodable, unknown type, a field the join fills in
  missing) or ``STRIPE_API_KEY`` unset: ``InvalidEvent``/``PermanentError`` before any
  call, so the runner dead-letters it with that reason.

Batches and retries. The agent takes batches like the other side-effect agents, but a
Stripe call is not a batch write: each command of a batch is run through the runner on
its own, commands of different orders concurrently (at most ``MAX_CONCURRENT_CALLS``
calls in flight), commands of one order one after the other in offset order. So one
command's transient failure sends only that command to the retry topics, and a slow call
does not delay the replies of the others. The batch is committed once every command is
done, retried or dead-lettered. The effect itself (also what the retry agents re-run)
takes any number of commands and makes their calls one by one; should a transient
failure end it part-way, the runner retries all its commands: harmless, because the
connector's idempotency keys make Stripe return the objects it already made and the
derived event ids make the re-sent records equal to the first ones.

Client secrets are never logged: log lines carry ``payment_calls.log_fields`` only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol

from base.clock import Clock
from base.errors import PermanentError
from schemas.codec import Codec
from schemas.headers import TRACEPARENT
from streams.agents.batched import agent_batches
from streams.agents.by_key import run_by_key
from streams.context import WorkerContext
from streams.domain.payment_calls import (
    SETUP_FAILED,
    CheckoutCall,
    CheckoutResult,
    IntentCall,
    IntentResult,
    Output,
    PaymentCommand,
    RefundResult,
    Rejected,
    StripeCall,
    checkout_created,
    intent_created,
    log_fields,
    plan,
    refund_created,
    rejected,
    setup_failed,
)
from streams.effects import Outbox
from streams.records import Inbound, header_value

__all__ = ["AGENT", "MAX_CONCURRENT_CALLS", "StripeCalls", "call_stripe", "register"]

log = logging.getLogger(__name__)

AGENT: Final = "stripe_calls"
MAX_CONCURRENT_CALLS: Final = 8
"""Stripe calls one worker has in flight at most (Stripe's default rate limit is 100
requests/s in live mode, 25 in test mode, per account)."""


class StripeCalls(Protocol):
    """The calls this agent makes (``connectors.stripe_api.StripeApi``)."""

    async def create_payment_intent(
        self, *, order_id: str, user_id: str, amount_minor: int, currency: str
    ) -> IntentResult: ...

    async def create_checkout_session(
        self,
        *,
        order_id: str,
        user_id: str,
        amount_minor: int,
        currency: str,
        success_url: str,
        cancel_url: str,
    ) -> CheckoutResult: ...

    async def create_refund(
        self, *, payment_intent_id: str, order_id: str, amount_minor: int | None, request_id: str
    ) -> RefundResult: ...


def register(ctx: WorkerContext) -> None:
    async def effect(records: Sequence[Inbound]) -> None:
        await call_stripe(
            records, codec=ctx.codec, outbox=ctx.outbox, clock=ctx.clock, stripe=ctx.stripe
        )

    ctx.runner.register(AGENT, effect)

    async def stripe_calls(stream: Any) -> None:
        async for events in agent_batches(ctx, stream):
            records = [Inbound.from_faust(event) for event in events]
            await run_by_key(ctx.runner, AGENT, records, limit=MAX_CONCURRENT_CALLS)

    ctx.topology.app.agent(ctx.topology.reads(AGENT), name=AGENT)(stripe_calls)


async def call_stripe(
    records: Sequence[Inbound],
    *,
    codec: Codec,
    outbox: Outbox,
    clock: Clock,
    stripe: Callable[[], Awaitable[StripeCalls]],
) -> None:
    """The effect: make the Stripe call of each command and send what it produced.

    Every command is decoded and checked before the first call, so a bad one fails the
    effect before anything happened (the runner then re-runs the records one by one and
    dead-letters only the bad one).

    :param stripe: returns the client; raises ``PermanentError`` when none is configured.
    :raises InvalidEvent: a record is not a usable command.
    :raises PermanentError: unknown command type, no Stripe client configured.
    :raises TransientError: Stripe unreachable, rate limited or failing (5xx).
    """
    planned = []
    for record in records:
        decoded = codec.decode(record.value, topic=record.topic).record
        command = PaymentCommand.from_record(decoded)
        planned.append((record, command, plan(command)))
    client: StripeCalls | None = None
    for record, command, call in planned:
        if isinstance(call, Rejected):
            outputs = rejected(command, call, _now_ms(clock))
            log.warning(
                "payment command refused without a stripe call: %s",
                call.detail,
                extra=log_fields(command, outputs),
            )
        else:
            if client is None:
                client = await stripe()
            outputs = await _make(client, command, call, clock)
            refused = outputs[0].event_type == SETUP_FAILED
            log.log(
                logging.WARNING if refused else logging.INFO,
                "stripe refused the call" if refused else "stripe call made",
                extra=log_fields(command, outputs),
            )
        await _send(codec, outbox, outputs, record)


async def _make(
    client: StripeCalls, command: PaymentCommand, call: StripeCall, clock: Clock
) -> tuple[Output, ...]:
    """The call's outputs; a ``PermanentError`` (Stripe refused) becomes
    ``payment.setup_failed``; a ``TransientError`` propagates."""
    try:
        if isinstance(call, IntentCall):
            intent = await client.create_payment_intent(
                order_id=call.order_id,
                user_id=call.user_id,
                amount_minor=call.amount_minor,
                currency=call.currency,
            )
            return intent_created(command, intent, _now_ms(clock))
        if isinstance(call, CheckoutCall):
            session = await client.create_checkout_session(
                order_id=call.order_id,
                user_id=call.user_id,
                amount_minor=call.amount_minor,
                currency=call.currency,
                success_url=call.success_url,
                cancel_url=call.cancel_url,
            )
            return checkout_created(command, session, _now_ms(clock))
        refund = await client.create_refund(
            payment_intent_id=call.payment_intent_id,
            order_id=call.order_id,
            amount_minor=call.amount_minor,
            request_id=call.request_id,
        )
        return refund_created(command, refund, _now_ms(clock))
    except PermanentError as exc:
        return setup_failed(command, exc, _now_ms(clock))


async def _send(codec: Codec, outbox: Outbox, outputs: tuple[Output, ...], cause: Inbound) -> None:
    traceparent = header_value(cause.headers, TRACEPARENT)
    for output in outputs:
        headers = output.headers(traceparent)
        value = codec.encode(output.topic, output.record)
        await outbox.send(output.topic, output.key.encode(), value, headers)


def _now_ms(clock: Clock) -> int:
    return int(clock.time() * 1000)
