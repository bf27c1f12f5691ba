"""Every dead letter goes through one guarded path, ``EffectRunner.dead_letter``: the
agent's own guard first, the injected clock for its time, the envelope headers. Against
the real broker (the worker's ``KafkaOutbox``)."""

from __future__ import annotations

import uuid

import pytest

from base.clock import FrozenClock
from connectors.kafka_outbox import KafkaOutbox
from schemas.codec import make_codec
from streams.domain.dlq import DeadLetterGuard, TooManyDeadLetters
from streams.domain.retry import RetryPolicy
from streams.effects import EffectRunner
from streams.records import Inbound
from tests.fixtures.kafka import header_map, read_topic

pytestmark = pytest.mark.integration

CODEC = make_codec(None)
NOW = 1_767_000_000.25
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _record(key: str, offset: int) -> Inbound:
    return Inbound(
        topic="webhooks.stripe",
        partition=0,
        offset=offset,
        key=key.encode(),
        value=b"not avro",
        headers=(("correlation-id", b"corr-7"), ("traceparent", TRACEPARENT.encode())),
    )


async def test_dead_letters_use_the_agents_guard_and_the_injected_clock(
    catalog_topics: str,
) -> None:
    key = f"dl-{uuid.uuid4().hex[:10]}"
    base = uuid.uuid4().int % 10**9  # origin offsets unique to this run (ids derive from them)
    outbox = KafkaOutbox(catalog_topics)
    runner = EffectRunner(
        outbox=outbox,
        codec=CODEC,
        policy=RetryPolicy(),
        clock=FrozenClock(NOW),
        new_guard=lambda: DeadLetterGuard(max_consecutive=2),
    )
    try:
        for n in range(2):
            await runner.dead_letter(
                "normalise_webhooks", _record(key, base + n), reason="bad", error_class="X"
            )
        # The third in a row trips normalise_webhooks' guard: nothing is produced.
        with pytest.raises(TooManyDeadLetters):
            await runner.dead_letter(
                "normalise_webhooks", _record(key, base + 2), reason="bad", error_class="X"
            )
        # Another agent has its own guard; a good record resets a run.
        runner.passed("normalise_webhooks")
        await runner.dead_letter("join_orders", _record(key, base + 3), reason="j", error_class="X")
        await runner.dead_letter(
            "normalise_webhooks", _record(key, base + 4), reason="again", error_class="X"
        )
        await outbox.flush(30)
    finally:
        await outbox.close()

    messages = read_topic(catalog_topics, "dlq", key=key)
    letters = [CODEC.decode(m.value() or b"", topic="dlq").record for m in messages]
    assert sorted(letter["originOffset"] - base for letter in letters) == [0, 1, 3, 4]
    assert {letter["failedAt"] for letter in letters} == {int(NOW * 1000)}
    for message, letter in zip(messages, letters, strict=True):
        assert header_map(message) == {
            "event-type": "dlq.record",
            "event-id": letter["eventId"],
            "correlation-id": "corr-7",
            "traceparent": TRACEPARENT,
            "content-type": "application/vnd.sluice.dead-letter+avro",
        }
