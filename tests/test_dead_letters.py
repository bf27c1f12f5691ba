"""Every dead letter goes through one guarded path, ``EffectRunner.dead_letter``: the
agent's own guard first, the injected clock for its time, the envelope headers. Against
the real broker (the worker's ``KafkaOutbox``)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from base.clock import FrozenClock
from base.errors import Held, PermanentError, TransientError
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


async def test_an_effect_chooses_each_records_policy_and_may_ask_for_alerts(
    catalog_topics: str,
) -> None:
    """``register(..., policy=...)`` (a partner's attempts), ``PermanentError(alert=True)``
    (a refusal someone must see) and ``Held`` (switched off: wait, attempt not counted)."""
    run = uuid.uuid4().hex[:10]
    base = uuid.uuid4().int % 10**9
    outbox = KafkaOutbox(catalog_topics)
    runner = EffectRunner(outbox=outbox, codec=CODEC, policy=RetryPolicy(), clock=FrozenClock(NOW))
    failures: dict[bytes | None, Exception] = {
        f"{run}-no-retries".encode(): TransientError("crm down"),
        f"{run}-default".encode(): TransientError("crm down"),
        f"{run}-refused".encode(): PermanentError("crm refused: HTTP 400", alert=True),
        f"{run}-held".encode(): Held("delivery disabled"),
    }

    async def effect(records: Sequence[Inbound]) -> None:
        raise failures[records[0].key]

    def policy(record: Inbound) -> RetryPolicy:
        no_retries = record.key == f"{run}-no-retries".encode()
        return RetryPolicy(max_attempts=0) if no_retries else runner.policy

    runner.register("deliver", effect, policy=policy)
    try:
        for n, key in enumerate(failures):
            await runner.run("deliver", [_record(key.decode(), base + n)])  # type: ignore[union-attr]
        await outbox.flush(30)
    finally:
        await outbox.close()

    def letters(suffix: str) -> list[dict[str, Any]]:
        found = read_topic(catalog_topics, "dlq", key=f"{run}-{suffix}")
        return [CODEC.decode(m.value() or b"", topic="dlq").record for m in found]

    def alert_types(letter: dict[str, Any]) -> list[str]:
        found = read_topic(catalog_topics, "alerts", key=letter["eventId"])
        return [json.loads(m.value() or b"{}")["eventType"] for m in found]

    [exhausted] = letters("no-retries")
    assert alert_types(exhausted) == ["alert.retries_exhausted"]
    [refused] = letters("refused")
    assert alert_types(refused) == ["alert.permanent_failure"]
    assert letters("default") == letters("held") == []
    [retried] = read_topic(catalog_topics, "retry.5s", key=f"{run}-default")
    assert header_map(retried)["sluice-attempt"] == "1"
    [held] = read_topic(catalog_topics, "retry.30m", key=f"{run}-held")
    assert header_map(held)["sluice-attempt"] == "0"


def test_an_effects_policy_must_keep_the_workers_delays() -> None:
    runner = EffectRunner(
        outbox=None,  # type: ignore[arg-type]
        codec=CODEC,
        policy=RetryPolicy(),
        clock=FrozenClock(NOW),
    )

    async def effect(records: Sequence[Inbound]) -> None:
        return None

    runner.register("deliver", effect, policy=lambda _: RetryPolicy((5.0,)))
    with pytest.raises(ValueError, match="not the worker's"):
        runner.policy_of("deliver", _record("k", 0))
    assert runner.policy_of("other", _record("k", 0)) is runner.policy


async def test_expected_refusals_are_dead_lettered_without_tripping_the_guard(
    catalog_topics: str,
) -> None:
    """A flood of refusals the data explains (``PermanentError(expected=True)``: users
    without a contact, a partner CRM refusing its leads) is dead-lettered record by
    record and never stops the worker; an unexpected one still counts."""
    key = f"dl-expected-{uuid.uuid4().hex[:10]}"
    base = uuid.uuid4().int % 10**9
    outbox = KafkaOutbox(catalog_topics)
    runner = EffectRunner(
        outbox=outbox,
        codec=CODEC,
        policy=RetryPolicy(),
        clock=FrozenClock(NOW),
        new_guard=lambda: DeadLetterGuard(max_consecutive=2),
    )

    async def no_contact(records: Sequence[Inbound]) -> None:
        raise PermanentError("unknown user user_7: no contact stored", expected=True)

    async def broken(records: Sequence[Inbound]) -> None:
        raise PermanentError("a bug's refusal")

    runner.register("send", no_contact)
    runner.register("broken", broken)
    try:
        for n in range(5):  # well past the guard's 2 in a row
            await runner.run("send", [_record(key, base + n)])
        await runner.run("broken", [_record(key, base + 10)])
        await runner.run("broken", [_record(key, base + 11)])
        with pytest.raises(TooManyDeadLetters):
            await runner.run("broken", [_record(key, base + 12)])
        await outbox.flush(30)
    finally:
        await outbox.close()
    letters = [
        CODEC.decode(m.value() or b"", topic="dlq").record
        for m in read_topic(catalog_topics, "dlq", key=key)
    ]
    assert sorted(letter["originOffset"] - base for letter in letters) == [0, 1, 2, 3, 4, 10, 11]
