"""The normalise decision carries the webhook's ``webhook_events`` status, and
``webhook_outcome`` turns it into the ``webhooks.outcomes`` record the webhook projection
reads (issue 10: nothing decodes and normalises a webhook twice)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas.codec import make_codec
from schemas.headers import record_headers
from streams.agents.project_webhooks import webhook_row
from streams.domain.ids import derived_event_id
from streams.domain.normalise import (
    NORMALISE_SOURCE,
    WEBHOOK_OUTCOME_TYPE,
    Normalised,
    normalise,
    webhook_outcome,
)
from streams.domain.status import UnknownStatus, WebhookStatus
from tests.payloads.stripe import stripe_event
from tests.test_normalise_stripe import RECEIVED_AT_MS, raw_record

CODEC = make_codec(None)
NOW_MS = 1_760_000_000_123


@pytest.mark.parametrize(
    ("outcome", "status"),
    [
        ("mapped", WebhookStatus.PROCESSED),
        ("unmapped", WebhookStatus.IGNORED),
        ("invalid", WebhookStatus.FAILED),
    ],
)
def test_the_decision_carries_the_webhook_status(outcome: str, status: WebhookStatus) -> None:
    assert Normalised(outcome).status is status  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (None, WebhookStatus.PROCESSED),
        (b'{"id": "evt_1", "type": "customer.created", "data": {"object": {}}}', "IGNORED"),
        (b"{not json", WebhookStatus.FAILED),
    ],
)
def test_outcome_record_round_trips_and_becomes_the_webhook_row(
    body: bytes | None, status: str
) -> None:
    raw = raw_record(stripe_event("payment_intent.succeeded", event_id="evt_outcome_1"), body=body)
    result = normalise(raw)
    outcome = webhook_outcome(raw, result, NOW_MS)

    assert outcome.topic == "webhooks.outcomes"
    assert outcome.key == raw["providerEventId"] == "evt_outcome_1"
    record = CODEC.decode(CODEC.encode(outcome.topic, outcome.record), topic=outcome.topic).record
    assert record == outcome.record
    assert record["eventId"] == derived_event_id(raw["eventId"], WEBHOOK_OUTCOME_TYPE)
    assert record["eventType"] == WEBHOOK_OUTCOME_TYPE
    assert record["source"] == NORMALISE_SOURCE
    assert record["status"] == status
    assert record["reason"] == result.reason
    headers = dict(record_headers(outcome.topic, record))
    assert headers["content-type"] == b"application/vnd.sluice.webhook-outcome+avro"

    row = webhook_row(record)
    assert (row.provider, row.event_id, row.event_type) == (
        "stripe",
        "evt_outcome_1",
        raw["eventType"],
    )
    assert row.status == status
    assert row.reason == result.reason
    assert row.raw_body == raw["rawBody"]
    assert row.content_type == raw["contentType"]
    assert row.signature == raw["signatureHeader"]
    assert row.correlation_id == raw["correlationId"]
    assert row.received_at == datetime.fromtimestamp(RECEIVED_AT_MS / 1000, UTC)
    assert row.processed_at == datetime.fromtimestamp(NOW_MS / 1000, UTC)


def test_a_redelivery_reproduces_the_outcome_id() -> None:
    raw = raw_record(stripe_event("payment_intent.succeeded", event_id="evt_outcome_2"))
    first = webhook_outcome(raw, normalise(raw), NOW_MS)
    again = webhook_outcome(raw, normalise(raw), NOW_MS + 60_000)
    assert first.record["eventId"] == again.record["eventId"]


def test_an_unknown_status_is_an_invalid_record_not_a_crash() -> None:
    raw = raw_record(stripe_event("payment_intent.succeeded", event_id="evt_outcome_3"))
    record = {**webhook_outcome(raw, normalise(raw), NOW_MS).record, "status": "DONE"}
    with pytest.raises(UnknownStatus):
        webhook_row(record)
