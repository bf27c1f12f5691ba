"""Unit tests for ``streams.domain.leads``: the CRM body, what an attempt means, what a
deliver-now command gets. No event loop, no services."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from base.errors import InvalidEvent, PermanentError, TransientError
from schemas.leads import LeadStatus
from streams.domain.leads import (
    DeliverNow,
    Lead,
    LeadCommand,
    LeadState,
    ReplyOnly,
    crm_body,
    decide_attempt,
    partner_policy,
    plan_command,
)
from streams.domain.retry import RetryPolicy


@dataclass(frozen=True)
class Outcome:
    http_status: int | None
    error: str | None = None
    retry_after: float | None = None


def _record(**fields: Any) -> dict[str, Any]:
    return {
        "eventId": "lead-1",
        "eventType": "lead.received",
        "version": 1,
        "occurredAt": 0,
        "correlationId": "corr-1",
        "source": "ingress",
        "leadId": "lead-1",
        "partnerId": "acme",
        "externalLeadId": "ext-1",
        "name": "Ada",
        "email": "ada@example.com",
        "phone": None,
        "listingId": "l-9",
        "message": None,
        "payload": json.dumps({"contact": {"email": "ada@example.com"}}),
        "idempotencyKey": None,
        "receivedAt": 1_767_000_000_123,
        **fields,
    }


def _command(**fields: Any) -> LeadCommand:
    record = {
        "eventId": "cmd-1",
        "correlationId": "corr-2",
        "leadId": "lead-1",
        "partnerId": "acme",
        "attempt": None,
        "force": False,
        "metadata": {},
        "taskId": "task-1",
        "replyTo": "replies",
        **fields,
    }
    return LeadCommand.from_record(record)


def test_crm_body_is_the_canonical_lead_with_its_payload() -> None:
    lead = Lead.from_record(_record())
    assert crm_body(lead) == {
        "leadId": "lead-1",
        "partnerId": "acme",
        "externalLeadId": "ext-1",
        "name": "Ada",
        "email": "ada@example.com",
        "phone": None,
        "listingId": "l-9",
        "message": None,
        "payload": {"contact": {"email": "ada@example.com"}},
        "receivedAt": "2025-12-29T09:20:00.123Z",
    }
    assert lead.event_id == "lead-1"


def test_the_stored_lead_delivers_the_same_body() -> None:
    lead = Lead.from_record(_record())
    stored = Lead.stored(
        lead_id="lead-1",
        partner_id="acme",
        external_lead_id="ext-1",
        name="Ada",
        email="ada@example.com",
        phone=None,
        listing_id="l-9",
        message=None,
        payload={"contact": {"email": "ada@example.com"}},
        received_at_ms=1_767_000_000_123,
    )
    assert crm_body(stored) == crm_body(lead)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"payload": "[1]"}, "payload"),
        ({"payload": "{not json"}, "payload"),
        ({"leadId": ""}, "leadId"),
    ],
)
def test_unusable_lead_records_are_invalid(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        Lead.from_record(_record(**fields))
    assert caught.value.field == field


def test_a_lead_record_without_a_field_is_invalid() -> None:
    record = _record()
    del record["externalLeadId"]
    with pytest.raises(InvalidEvent, match="externalLeadId"):
        Lead.from_record(record)


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_delivered(status: int) -> None:
    decision = decide_attempt(Outcome(status), delivery=1, max_attempts=3)
    assert decision.status == LeadStatus.DELIVERED
    assert decision.delivered
    assert decision.failure is None
    assert decision.error is None


@pytest.mark.parametrize(
    ("outcome", "error"),
    [
        (Outcome(None, "connection failed: Connection refused"), "no answer: connection failed"),
        (Outcome(None, "timed out after 1s"), "no answer: timed out after 1s"),
        (Outcome(408), "HTTP 408"),
        (Outcome(429, "slow down", 2.0), "HTTP 429: slow down"),
        (Outcome(500), "HTTP 500"),
        (Outcome(503), "HTTP 503"),
    ],
)
def test_transient_outcomes_retry(outcome: Outcome, error: str) -> None:
    decision = decide_attempt(outcome, delivery=1, max_attempts=3)
    assert decision.status == LeadStatus.RETRYING
    assert isinstance(decision.failure, TransientError)
    assert decision.failure.retry_after == outcome.retry_after
    assert decision.error is not None
    assert decision.error.startswith(error)


def test_the_last_allowed_delivery_fails_the_lead_and_still_raises_transient() -> None:
    decision = decide_attempt(Outcome(502), delivery=3, max_attempts=3)
    assert decision.status == LeadStatus.DELIVERY_FAILED
    # The runner's exhausted retries dead-letter it with the retries_exhausted alert.
    assert isinstance(decision.failure, TransientError)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422, 301, 101])
def test_other_statuses_fail_the_lead_with_an_alerting_refusal(status: int) -> None:
    decision = decide_attempt(Outcome(status, "nope"), delivery=1, max_attempts=8)
    assert decision.status == LeadStatus.DELIVERY_FAILED
    assert isinstance(decision.failure, PermanentError)
    assert decision.failure.alert
    assert decision.error == f"HTTP {status}: nope"


def test_an_error_text_is_cleaned() -> None:
    decision = decide_attempt(Outcome(401, "bad token=abc123\nline"), delivery=1, max_attempts=8)
    assert decision.error == "HTTP 401: bad token=*** line"


def test_partner_policy_counts_the_first_delivery() -> None:
    worker = RetryPolicy((1.0, 2.0, 5.0), 20, 0.1)
    assert partner_policy(worker, 4) == RetryPolicy((1.0, 2.0, 5.0), 3, 0.1)
    assert partner_policy(worker, 1).max_attempts == 0


DELIVERED = LeadState("acme", LeadStatus.DELIVERED, 2)
FAILED = LeadState("acme", LeadStatus.DELIVERY_FAILED, 3)


@pytest.mark.parametrize(
    ("command", "lead", "plan"),
    [
        (_command(), None, ReplyOnly(404, {"error": "lead_not_found", "leadId": "lead-1"})),
        (
            _command(partnerId="other"),
            DELIVERED,
            ReplyOnly(
                409, {"error": "partner_mismatch", "detail": "the lead belongs to another partner"}
            ),
        ),
        (_command(), DELIVERED, ReplyOnly(200, {"delivered": True, "attempt": 2})),
        (_command(force=True), DELIVERED, DeliverNow()),
        (
            _command(force=True, attempt=2),
            DELIVERED,
            ReplyOnly(200, {"delivered": True, "attempt": 2}),
        ),
        (_command(force=True, attempt=3), DELIVERED, DeliverNow()),
        (_command(attempt=3), FAILED, ReplyOnly(200, {"delivered": False, "attempt": 3})),
        (_command(attempt=4), FAILED, DeliverNow()),
        (_command(), FAILED, DeliverNow()),
        (_command(), LeadState("acme", LeadStatus.RETRYING, 1), DeliverNow()),
    ],
)
def test_plan_command(command: LeadCommand, lead: LeadState | None, plan: object) -> None:
    assert plan_command(command, lead) == plan


def test_a_command_without_reply_to_has_no_task() -> None:
    command = _command(replyTo=None)
    assert command.task_id is None
    assert command.reply_to is None


@pytest.mark.parametrize(
    ("fields", "field"), [({"attempt": 0}, "attempt"), ({"replyTo": "orders"}, "replyTo")]
)
def test_bad_commands_are_invalid(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        _command(**fields)
    assert caught.value.field == field
