"""leads.received, commands.leads.deliver → Postgres ``leads`` → the partner's CRM.

What each outcome means is ``streams.domain.leads`` (pure); this module stores, calls,
records and replies. Per lead (a ``leads.received`` record, or one of its retries):

1. the lead is stored once (RECEIVED; every later copy changes nothing) and its row read
   back in the same step: the row's status, not memory, says whether it was delivered,
   so a redelivered or replayed copy of a DELIVERED lead makes no second call;
2. a partner unknown to this worker's registry: ``PermanentError`` → dead letter with
   that reason; a partner switched off (``enabled`` or ``delivery.enabled`` false, as
   the runtime config says now: ``partners.<id>.enabled``,
   ``partners.<id>.delivery.enabled``, defaulting to the registry): ``Held`` → the record
   waits on the longest delay topic, no attempt is made or counted, the lead stays as
   it is (RECEIVED) until delivery is switched back on;
3. one attempt (``connectors.crm``), recorded as a ``lead_delivery_attempts`` row with the
   lead's new status, then the decision's exception, if any, is raised so the
   ``EffectRunner`` retries it on the delay topics (408, 425, 429 with its
   ``Retry-After``, 5xx, timeouts, refused connections) or dead-letters it with an alert
   (other 4xx, and exhausted retries). The partner's ``delivery.max_attempts`` is the
   runner's policy for the record (``partner_policy``).

A deliver-now command (``sluice.leads.LeadDeliveryCommand``) is planned against the stored
lead (``plan_command``): 404/409/"already delivered"/"already that many attempts" are
answered without a call; otherwise one attempt now (trigger ``request``), answered
``{"delivered": bool, "attempt": n}``. A command that failed transiently is answered
``delivered: false`` and the lead goes on retrying: on its own chain if it has one
(RECEIVED, RETRYING), else (DELIVERY_FAILED) on the command's record, whose retries are
plain deliveries of the lead. A redelivered command finds the attempt it made (its
``eventId`` in ``lead_delivery_attempts``) and answers again without calling.

Isolation. The agent takes batches like ``stripe_calls`` and runs each record through the
runner on its own: records of one lead in order, other leads concurrently (at most
``MAX_CONCURRENT_DELIVERIES``), so a dead CRM (refused: fails at once) or a slow one
(costs its partner's ``timeout``, no more) never holds up another partner's leads, and
nothing sleeps here: waiting is the delay topics' job.

Logs carry ids, partner, attempt and outcome; never the lead's contact details, tokens
or secrets.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from base.errors import Held, InvalidEvent, PermanentError, TransientError
from base.partners import Partner
from connectors.postgres.leads import LeadRow, NewLead
from schemas.headers import TRACEPARENT, record_headers
from schemas.leads import LeadStatus
from schemas.runtime_keys import partner_delivery_key, partner_enabled_key
from streams.agents.batched import agent_batches
from streams.agents.by_key import run_by_key
from streams.context import WorkerContext
from streams.domain.leads import (
    SOURCE,
    AttemptDecision,
    DeliverNow,
    Lead,
    LeadCommand,
    LeadState,
    ReplyOnly,
    attempt_reply,
    crm_body,
    decide_attempt,
    partner_policy,
    plan_command,
)
from streams.domain.replies import reply_record
from streams.domain.retry import RetryHeaders, RetryPolicy
from streams.records import Inbound, header_value

__all__ = [
    "AGENT",
    "COMMANDS_EFFECT",
    "COMMANDS_TOPIC",
    "LEADS_EFFECT",
    "LEADS_TOPIC",
    "MAX_CONCURRENT_DELIVERIES",
    "LeadDeliveries",
    "register",
]

log = logging.getLogger(__name__)

AGENT: Final = "deliver_leads"
LEADS_EFFECT: Final = "deliver_leads"
"""The effect of ``leads.received`` records and their retries."""
COMMANDS_EFFECT: Final = "deliver_leads.commands"
"""The effect of deliver-now commands and the retries they start."""
LEADS_TOPIC: Final = "leads.received"
COMMANDS_TOPIC: Final = "commands.leads.deliver"
MAX_CONCURRENT_DELIVERIES: Final = 16
"""CRM requests one worker has in flight at most (each bounded by its partner's timeout)."""


def register(ctx: WorkerContext) -> None:
    deliveries = LeadDeliveries(ctx)
    ctx.runner.register(LEADS_EFFECT, deliveries.deliver_leads, policy=deliveries.policy_of)
    ctx.runner.register(COMMANDS_EFFECT, deliveries.run_commands, policy=deliveries.policy_of)

    async def deliver_leads(stream: Any) -> None:
        async for events in agent_batches(ctx, stream):
            records = [Inbound.from_faust(event) for event in events]
            await run_by_key(ctx.runner, _effect_of, records, limit=MAX_CONCURRENT_DELIVERIES)

    ctx.topology.app.agent(ctx.topology.reads(AGENT), name=AGENT)(deliver_leads)


def _effect_of(record: Inbound) -> str:
    return COMMANDS_EFFECT if record.topic == COMMANDS_TOPIC else LEADS_EFFECT


class LeadDeliveries:
    """The two effects (leads, commands) over the worker's connectors and registry."""

    def __init__(self, ctx: WorkerContext) -> None:
        self._ctx = ctx

    # -- the runner's hooks --------------------------------------------------------------

    def policy_of(self, record: Inbound) -> RetryPolicy:
        """The record's partner's retry policy (the worker's for a record whose partner
        cannot be read: it fails permanently anyway)."""
        worker = self._ctx.runner.policy
        try:
            partner_id = self._ctx.codec.decode(record.value).record.get("partnerId")
        except InvalidEvent:
            return worker
        partner = self._ctx.partners.get(str(partner_id))
        if partner is None:
            return worker
        return partner_policy(worker, partner.delivery.max_attempts)

    async def deliver_leads(self, records: Sequence[Inbound]) -> None:
        """The effect of ``leads.received`` records (fresh or retried)."""
        for record in records:
            await self._deliver_lead(record)

    async def run_commands(self, records: Sequence[Inbound]) -> None:
        """The effect of deliver-now commands (fresh, or retries a command started)."""
        for record in records:
            await self._run_command(record)

    # -- leads ---------------------------------------------------------------------------

    async def _deliver_lead(self, record: Inbound) -> None:
        retry = RetryHeaders.from_kafka(record.headers)
        lead = Lead.from_record(self._ctx.codec.decode(record.value, topic=LEADS_TOPIC).record)
        partner = self._partner(lead.partner_id)
        store = await self._ctx.leads()
        row = await store.store(_new_lead(lead))
        if row.status == LeadStatus.DELIVERED:
            log.info("lead already delivered: no call", extra=_fields(record, row))
            return
        await self._attempt_chain(record, row, partner, retry, lead.event_id)

    async def _attempt_chain(
        self,
        record: Inbound,
        row: LeadRow,
        partner: Partner,
        retry: RetryHeaders | None,
        event_id: str,
    ) -> None:
        """One attempt of a lead's own delivery chain (or a chain a command started);
        raises what the runner must do next."""
        if not self._enabled(partner):
            raise Held(f"partner {partner.id} or its delivery is disabled: lead held")
        decision, _, _ = await self._attempt(
            _lead_of(row),
            partner,
            trigger="retry" if retry is not None else "delivery",
            event_id=event_id,
            delivery=(retry.attempt if retry is not None else 0) + 1,
            record=record,
        )
        if decision.failure is not None:
            raise decision.failure

    async def _attempt(
        self,
        lead: Lead,
        partner: Partner,
        *,
        trigger: str,
        event_id: str,
        delivery: int,
        record: Inbound,
        metadata: dict[str, str] | None = None,
    ) -> tuple[AttemptDecision, int, LeadRow]:
        """Call the CRM once and record the attempt; the decision, the attempt's number
        and the lead as it is now."""
        started = datetime.fromtimestamp(self._ctx.clock.time(), UTC)
        response = await self._ctx.crm().deliver(partner.delivery, lead.lead_id, crm_body(lead))
        decision = decide_attempt(
            response, delivery=delivery, max_attempts=partner.delivery.max_attempts
        )
        store = await self._ctx.leads()
        attempt, row = await store.record_attempt(
            lead.lead_id,
            status=decision.status,
            http_status=response.http_status,
            error=decision.error,
            latency_ms=response.latency_ms,
            trigger=trigger,
            event_id=event_id,
            attempted_at=started,
            metadata=metadata,
        )
        log.log(
            logging.INFO if decision.delivered else logging.WARNING,
            "lead delivered" if decision.delivered else "lead delivery failed",
            extra={
                **_fields(record, row),
                "attempt": attempt,
                "trigger": trigger,
                "http_status": response.http_status,
                "latency_ms": response.latency_ms,
                "outcome": decision.status,
            },
        )
        return decision, attempt, row

    def _enabled(self, partner: Partner) -> bool:
        """Whether ``partner``'s leads may be delivered now: ``partners.<id>.enabled`` and
        ``partners.<id>.delivery.enabled`` in the runtime config (defaults: the
        registry's ``enabled`` and ``delivery.enabled``), read on every attempt."""
        return bool(
            self._ctx.live(partner_enabled_key(partner.id), partner.enabled)
            and self._ctx.live(partner_delivery_key(partner.id), partner.delivery.enabled)
        )

    def _partner(self, partner_id: str) -> Partner:
        partner = self._ctx.partners.get(partner_id)
        if partner is None:
            raise PermanentError(f"partner {partner_id!r} is not in this worker's registry")
        return partner

    # -- commands ------------------------------------------------------------------------

    async def _run_command(self, record: Inbound) -> None:
        decoded = self._ctx.codec.decode(record.value, topic=COMMANDS_TOPIC).record
        command = LeadCommand.from_record(decoded)
        retry = RetryHeaders.from_kafka(record.headers)
        store = await self._ctx.leads()
        row = await store.lead(command.lead_id)
        if retry is not None:
            # A chain this command started: a plain retry of the lead, nobody waits.
            if row is not None and row.status != LeadStatus.DELIVERED:
                owner = self._partner(row.partner_id)
                await self._attempt_chain(record, row, owner, retry, command.event_id)
            return
        state = (
            None if row is None else LeadState(row.partner_id, LeadStatus(row.status), row.attempts)
        )
        plan = plan_command(command, state)
        if isinstance(plan, ReplyOnly) or row is None:
            assert isinstance(plan, ReplyOnly)  # plan_command answers an unknown lead
            await self._reply(record, command, plan.status, plan.body)
            return
        assert isinstance(plan, DeliverNow)
        made = await store.attempt_of(command.lead_id, command.event_id, "request")
        if made is not None:  # a redelivered command: its attempt was made
            delivered = row.status == LeadStatus.DELIVERED
            await self._reply(record, command, 200, attempt_reply(delivered, made))
            return
        partner = self._ctx.partners.get(row.partner_id)
        if partner is None or not self._enabled(partner):
            error = "partner_not_configured" if partner is None else "delivery_disabled"
            await self._reply(record, command, 409, {"error": error, "partnerId": row.partner_id})
            return
        decision, attempt, after = await self._attempt(
            _lead_of(row),
            partner,
            trigger="request",
            event_id=command.event_id,
            delivery=1,
            record=record,
            metadata=dict(command.metadata),
        )
        delivered = after.status == LeadStatus.DELIVERED and decision.delivered
        await self._reply(record, command, 200, attempt_reply(delivered, attempt))
        failure = decision.failure
        # A refusal is dead-lettered with its alert like any other. A transient failure
        # starts a chain on this command only when the lead has none of its own running
        # (it had failed for good); a RECEIVED or RETRYING lead's own record retries it.
        if isinstance(failure, PermanentError) or (
            isinstance(failure, TransientError) and row.status == LeadStatus.DELIVERY_FAILED
        ):
            raise failure

    async def _reply(
        self, cause: Inbound, command: LeadCommand, status: int, body: Mapping[str, Any]
    ) -> None:
        if command.task_id is None or command.reply_to is None:
            return
        reply = reply_record(
            task_id=command.task_id,
            status=status,
            body=body,
            cause_event_id=command.event_id,
            correlation_id=command.correlation_id,
            now_ms=int(self._ctx.clock.time() * 1000),
            source=SOURCE,
        )
        traceparent = header_value(cause.headers, TRACEPARENT)
        headers = record_headers(command.reply_to, reply, traceparent=traceparent)
        value = self._ctx.codec.encode(command.reply_to, reply)
        await self._ctx.outbox.send(command.reply_to, command.task_id.encode(), value, headers)


def _new_lead(lead: Lead) -> NewLead:
    return NewLead(
        lead_id=lead.lead_id,
        partner_id=lead.partner_id,
        external_lead_id=lead.external_lead_id,
        name=lead.name,
        email=lead.email,
        phone=lead.phone,
        listing_id=lead.listing_id,
        message=lead.message,
        payload=lead.payload,
        received_at=datetime.fromtimestamp(lead.received_at_ms / 1000, UTC),
    )


def _lead_of(row: LeadRow) -> Lead:
    """The lead as stored: what every delivery sends, whichever record asked for it."""
    return Lead.stored(
        lead_id=row.lead_id,
        partner_id=row.partner_id,
        external_lead_id=row.external_lead_id,
        name=row.name,
        email=row.email,
        phone=row.phone,
        listing_id=row.listing_id,
        message=row.message,
        payload=row.payload,
        received_at_ms=int(row.received_at.timestamp() * 1000),
    )


def _fields(record: Inbound, row: LeadRow) -> dict[str, Any]:
    return {
        "position": record.position,
        "lead_id": row.lead_id,
        "partner": row.partner_id,
        "status": row.status,
        "correlation_id": header_value(record.headers, "correlation-id"),
    }
