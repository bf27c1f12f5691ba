"""Lead delivery as pure decisions: what the CRM is sent, what one attempt's outcome
means, what a deliver-now command gets, what its caller is answered.

The agent (``streams/agents/deliver_leads.py``) stores the lead, makes the HTTP call and
records the attempt; everything it decides comes from here:

- :func:`crm_body`: the JSON the partner's CRM receives (the canonical lead, the
  partner's payload kept), the same bytes for every copy of one lead;
- :func:`decide_attempt`: an outcome (HTTP status, or none when the request never got an
  answer) → :class:`AttemptDecision`: the lead's new status and the exception the effect
  raises so the ``EffectRunner`` retries (``TransientError``, ``Retry-After`` kept) or
  dead-letters with an alert (``PermanentError(alert=True)``);
- :func:`plan_command`: a deliver-now command against the lead as stored → a reply
  without a call, or one attempt;
- :func:`attempt_reply`: ``{"delivered": bool, "attempt": n}``.

**Two counts.** ``leads.attempts`` counts every delivery ever made to the CRM (one
``lead_delivery_attempts`` row each, numbered 1, 2, …). The partner's
``delivery.max_attempts`` bounds one *chain* of deliveries: a record and its retries
(the runner's ``sluice-attempt`` header counts them), so a deliver-now command or a dlq
replay starts a fresh allowance rather than being refused for the lead's history.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from base.errors import InvalidEvent, PermanentError, TransientError
from base.http_status import classify_http_status
from schemas.leads import LeadStatus
from streams.domain.retry import RetryPolicy, clean_reason

__all__ = [
    "ATTEMPT_TRIGGERS",
    "REPLY_TOPICS",
    "SOURCE",
    "AttemptDecision",
    "CommandPlan",
    "DeliverNow",
    "Lead",
    "LeadCommand",
    "LeadState",
    "Outcome",
    "ReplyOnly",
    "attempt_reply",
    "crm_body",
    "decide_attempt",
    "partner_policy",
    "plan_command",
]

SOURCE: Final = "streams.deliver_leads"
REPLY_TOPICS: Final = frozenset({"replies"})
"""Topics a command may name as ``replyTo`` (topics with the Reply schema)."""
ATTEMPT_TRIGGERS: Final = ("delivery", "retry", "request")
"""``lead_delivery_attempts.trigger``: the lead's own first delivery, one of its retries,
or a deliver-now command."""


# -- records -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lead:
    """A lead as delivered: from a ``sluice.leads.LeadReceived`` record
    (:meth:`from_record`) or from its ``leads`` row (:meth:`stored`)."""

    lead_id: str
    partner_id: str
    external_lead_id: str
    name: str | None
    email: str | None
    phone: str | None
    listing_id: str | None
    message: str | None
    payload: str
    """The partner's payload object as JSON text."""
    received_at_ms: int
    event_id: str = ""
    """The record's ``eventId`` (equal to ``lead_id`` from the ingress); empty when stored."""

    @classmethod
    def stored(
        cls,
        *,
        lead_id: str,
        partner_id: str,
        external_lead_id: str,
        name: str | None,
        email: str | None,
        phone: str | None,
        listing_id: str | None,
        message: str | None,
        payload: Any,
        received_at_ms: int,
    ) -> Lead:
        """The lead from its ``leads`` row (``payload`` decoded from jsonb)."""
        return cls(
            lead_id=lead_id,
            partner_id=partner_id,
            external_lead_id=external_lead_id,
            name=name,
            email=email,
            phone=phone,
            listing_id=listing_id,
            message=message,
            payload=json.dumps(payload, separators=(",", ":"), ensure_ascii=False),
            received_at_ms=received_at_ms,
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Lead:
        """:raises InvalidEvent: a required field is missing or the payload is not a JSON
        object (the ingress never publishes one; a hand-made record might)."""
        try:
            lead = cls(
                event_id=str(record["eventId"]),
                lead_id=str(record["leadId"]),
                partner_id=str(record["partnerId"]),
                external_lead_id=str(record["externalLeadId"]),
                name=record.get("name"),
                email=record.get("email"),
                phone=record.get("phone"),
                listing_id=record.get("listingId"),
                message=record.get("message"),
                payload=str(record["payload"]),
                received_at_ms=_epoch_ms(record["receivedAt"]),
            )
        except KeyError as exc:
            raise InvalidEvent(f"lead record without {exc.args[0]}", field=exc.args[0]) from None
        if not lead.lead_id or not lead.partner_id:
            raise InvalidEvent("lead record without leadId or partnerId", field="leadId")
        if not isinstance(_payload_object(lead.payload), dict):
            raise InvalidEvent("lead payload is not a JSON object", field="payload")
        return lead

    @property
    def payload_object(self) -> dict[str, Any]:
        value = _payload_object(self.payload)
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class LeadCommand:
    """A ``sluice.leads.LeadDeliveryCommand`` record."""

    event_id: str
    correlation_id: str
    lead_id: str
    partner_id: str
    attempt: int | None
    force: bool
    metadata: Mapping[str, str]
    task_id: str | None
    reply_to: str | None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> LeadCommand:
        """``task_id``/``reply_to`` are kept only when both are set (a reply needs both).

        :raises InvalidEvent: a required field is missing, ``attempt`` is below 1, or
            ``replyTo`` names a topic that is not a reply topic.
        """
        try:
            event_id, lead_id = str(record["eventId"]), str(record["leadId"])
            partner_id = str(record["partnerId"])
        except KeyError as exc:
            raise InvalidEvent(f"command without {exc.args[0]}", field=exc.args[0]) from None
        attempt = record.get("attempt")
        if attempt is not None and (not isinstance(attempt, int) or attempt < 1):
            raise InvalidEvent(f"attempt must be 1 or more, got {attempt!r}", field="attempt")
        task_id, reply_to = record.get("taskId") or None, record.get("replyTo") or None
        if not task_id or not reply_to:
            task_id = reply_to = None
        elif reply_to not in REPLY_TOPICS:
            raise InvalidEvent(f"replyTo {reply_to!r} is not a reply topic", field="replyTo")
        return cls(
            event_id=event_id,
            correlation_id=str(record.get("correlationId") or event_id),
            lead_id=lead_id,
            partner_id=partner_id,
            attempt=attempt,
            force=bool(record.get("force", False)),
            metadata=dict(record.get("metadata") or {}),
            task_id=task_id,
            reply_to=reply_to,
        )


@dataclass(frozen=True, slots=True)
class LeadState:
    """What the worker knows of a stored lead when it decides (the ``leads`` row)."""

    partner_id: str
    status: LeadStatus
    attempts: int


# -- the CRM request ---------------------------------------------------------------------


def crm_body(lead: Lead) -> dict[str, Any]:
    """The JSON the partner's CRM receives: the canonical lead, the partner's own id of
    it and its payload as received. Depends on the lead only (not on the attempt), so
    every copy of one lead is the same request under the same ``Idempotency-Key``."""
    return {
        "leadId": lead.lead_id,
        "partnerId": lead.partner_id,
        "externalLeadId": lead.external_lead_id,
        "name": lead.name,
        "email": lead.email,
        "phone": lead.phone,
        "listingId": lead.listing_id,
        "message": lead.message,
        "payload": lead.payload_object,
        "receivedAt": datetime.fromtimestamp(lead.received_at_ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
    }


# -- one attempt -------------------------------------------------------------------------


class Outcome(Protocol):
    """What one HTTP attempt gave (``connectors.crm.CrmResponse``)."""

    @property
    def http_status(self) -> int | None:
        """The CRM's status; ``None`` when no answer came (refused, timeout, reset)."""
        ...

    @property
    def error(self) -> str | None:
        """Why the request got no answer (or the start of a failure answer's body)."""
        ...

    @property
    def retry_after(self) -> float | None:
        """Seconds from the answer's ``Retry-After``, when it had a usable one."""
        ...


@dataclass(frozen=True, slots=True)
class AttemptDecision:
    """What one attempt means for the lead.

    :param status: the lead's status after it.
    :param error: what is recorded as the attempt's error (``None`` on success).
    :param failure: what the effect raises after recording it, so the ``EffectRunner``
        retries (``TransientError``) or dead-letters with an alert
        (``PermanentError(alert=True)``); ``None`` when delivered.
    """

    status: LeadStatus
    error: str | None
    failure: TransientError | PermanentError | None

    @property
    def delivered(self) -> bool:
        return self.status == LeadStatus.DELIVERED


def decide_attempt(outcome: Outcome, *, delivery: int, max_attempts: int) -> AttemptDecision:
    """The decision for one attempt's ``outcome`` (``base.http_status`` classifies).

    - 2xx → DELIVERED;
    - no answer (refused, timeout), 408, 425, 429, 5xx → RETRYING and a
      ``TransientError`` (``retry_after`` from a ``Retry-After``); on the chain's last
      allowed delivery (``delivery >= max_attempts``) → DELIVERY_FAILED, still a
      ``TransientError``: the runner's exhausted retries dead-letter it with an alert;
    - any other status → DELIVERY_FAILED and a ``PermanentError(alert=True,
      expected=True)``: dead letter and alert at once, not counted by the dead-letter
      guard.

    :param delivery: the delivery this was within its chain, the first being 1.
    :param max_attempts: deliveries the partner allows per chain (``delivery.max_attempts``).
    """
    status = outcome.http_status
    if status is not None and 200 <= status < 300:
        return AttemptDecision(LeadStatus.DELIVERED, None, None)
    if status is None:
        error = clean_reason(f"no answer: {outcome.error or 'unknown error'}")
        transient = True
    else:
        detail = f": {outcome.error}" if outcome.error else ""
        error = clean_reason(f"HTTP {status}{detail}")
        # An informational status as the final answer is nonsense: not worth retrying.
        transient = status >= 300 and classify_http_status(status) == "transient"
    if not transient:
        return AttemptDecision(
            LeadStatus.DELIVERY_FAILED,
            error,
            # Expected: one partner's CRM refusing its leads must not stop the worker
            # (and every other partner) through the dead-letter guard; the alert says it.
            PermanentError(f"crm refused the lead: {error}", alert=True, expected=True),
        )
    last = delivery >= max_attempts
    failure = TransientError(f"crm delivery failed: {error}", retry_after=outcome.retry_after)
    status_after = LeadStatus.DELIVERY_FAILED if last else LeadStatus.RETRYING
    return AttemptDecision(status_after, error, failure)


def partner_policy(worker: RetryPolicy, max_attempts: int) -> RetryPolicy:
    """The retry policy of a partner's deliveries: the worker's delays and jitter,
    ``max_attempts - 1`` retries (``delivery.max_attempts`` counts the first delivery)."""
    return RetryPolicy(worker.delays, max(max_attempts - 1, 0), worker.jitter)


# -- deliver-now commands ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplyOnly:
    """Answer the command without calling the CRM."""

    status: int
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class DeliverNow:
    """Make one attempt now (trigger ``request``)."""


CommandPlan = ReplyOnly | DeliverNow


def plan_command(command: LeadCommand, lead: LeadState | None) -> CommandPlan:
    """What a deliver-now command gets, given the lead as stored (``None``: unknown).

    - unknown lead → 404; the lead belongs to another partner → 409;
    - DELIVERED and not ``force`` → 200 ``{"delivered": true, "attempt": <attempts>}``;
    - ``attempt`` given and the lead already has that many attempts → 200 with the
      current state (a retried call does not deliver twice);
    - otherwise one attempt now.
    """
    if lead is None:
        return ReplyOnly(404, {"error": "lead_not_found", "leadId": command.lead_id})
    if lead.partner_id != command.partner_id:
        return ReplyOnly(
            409, {"error": "partner_mismatch", "detail": "the lead belongs to another partner"}
        )
    delivered = lead.status == LeadStatus.DELIVERED
    if delivered and not command.force:
        return ReplyOnly(200, attempt_reply(True, lead.attempts))
    if command.attempt is not None and lead.attempts >= command.attempt:
        return ReplyOnly(200, attempt_reply(delivered, lead.attempts))
    return DeliverNow()


def attempt_reply(delivered: bool, attempt: int) -> dict[str, Any]:
    """The deliver-now answer: ``{"delivered": bool, "attempt": n}``."""
    return {"delivered": delivered, "attempt": attempt}


def _payload_object(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _epoch_ms(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)
