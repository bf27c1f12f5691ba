"""Run side effects with the one retry/dead-letter mechanism every agent shares.

An *effect* is an async function over a batch of records (a Postgres write, say). The
runner calls it; on failure it asks the pure policy (``streams.domain.retry``) what to
do with each record and carries that out through an ``Outbox``: the next
``retry.<delay>`` topic with attempt/due/origin/reason headers, or ``dlq`` (plus an
``alerts`` record when retries were exhausted or the failure asked for one). Agents
never sleep and never retry inline, so one bad record or one slow downstream never holds
up fresh records.

An effect may choose the retry policy per record (``register(..., policy=...)``): the
lead deliveries retry as often as the lead's partner allows. Such a policy must keep the
worker's delays (the retry agents and topics are the worker's); only ``max_attempts``
and the jitter may differ.

Every dead letter of the worker goes through :meth:`EffectRunner.dead_letter`, also for
agents that run no effect (a record that does not decode, say): it counts the record in
that agent's :class:`~streams.domain.dlq.DeadLetterGuard` first (a tripped guard raises,
and the worker stops before producing) and stamps the dead letter with the injected
clock.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from base.clock import Clock
from base.errors import PermanentError
from base.metrics import WORKER_METRICS, MetricName, Metrics
from schemas.codec import Codec
from schemas.headers import TRACEPARENT, record_headers
from streams.domain.dlq import DeadLetterGuard, alert_record, dead_letter_record, encode_alert
from streams.domain.retry import (
    ALERT_RETRIES_EXHAUSTED,
    DeadLetter,
    Retry,
    RetryHeaders,
    RetryPolicy,
    classify,
    decide_failure,
    merge_headers,
)
from streams.records import Inbound, header_value

__all__ = ["Effect", "EffectRunner", "Outbox", "PolicyOf"]

log = logging.getLogger(__name__)

Effect = Callable[[Sequence[Inbound]], Awaitable[None]]
PolicyOf = Callable[[Inbound], RetryPolicy]
"""The retry policy of one record of an effect (its retries, not its delays, may vary)."""


class Outbox(Protocol):
    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        """Hand a record to the producer (durable before the consumed offset commits)."""
        ...


@dataclass
class EffectRunner:
    """Runs named effects; failures become retry or dead-letter records.

    Effects are registered by name so a retry agent can re-run the same effect for a
    record it took from a delay topic (the ``sluice-effect`` header names it).

    Each agent (or effect) name has its own dead-letter guard, made on first use by
    ``new_guard``; the retry agents re-running an effect count in that effect's guard.
    """

    outbox: Outbox
    codec: Codec
    policy: RetryPolicy
    clock: Clock
    new_guard: Callable[[], DeadLetterGuard] = DeadLetterGuard
    rand: Callable[[], float] = random.random
    effects: dict[str, Effect] = field(default_factory=dict)
    # Counts, per effect name: processed, retried, dead-lettered.
    metrics: Metrics = field(default_factory=lambda: Metrics(WORKER_METRICS))
    guards: dict[str, DeadLetterGuard] = field(default_factory=dict)
    policies: dict[str, PolicyOf] = field(default_factory=dict)

    def register(self, name: str, effect: Effect, *, policy: PolicyOf | None = None) -> None:
        """Register ``effect`` under ``name``.

        :param policy: the retry policy of each failed record of this effect (read from
            the record, e.g. its partner's attempts); default: the runner's ``policy``.
            It must keep the runner's delays: :meth:`policy_of` refuses another schedule.
        """
        self.effects[name] = effect
        if policy is not None:
            self.policies[name] = policy
        else:
            self.policies.pop(name, None)

    def policy_of(self, name: str, record: Inbound) -> RetryPolicy:
        """The retry policy for ``record`` of effect ``name``.

        :raises ValueError: the effect's policy chose delays other than the runner's (a
            bug: its delay topics might not exist, nor their agents).
        """
        choose = self.policies.get(name)
        if choose is None:
            return self.policy
        policy = choose(record)
        if policy.delays != self.policy.delays:
            raise ValueError(f"effect {name!r} chose delays {policy.delays}, not the worker's")
        return policy

    def guard(self, name: str) -> DeadLetterGuard:
        """The dead-letter guard of agent or effect ``name``."""
        guard = self.guards.get(name)
        if guard is None:
            guard = self.guards[name] = self.new_guard()
        return guard

    def passed(self, name: str) -> None:
        """Count one record that agent ``name`` handled without dead-lettering it (so
        the guard's ratio sees the agent's good records too)."""
        self.guard(name).record(False)

    async def dead_letter(
        self,
        name: str,
        record: Inbound,
        *,
        reason: str,
        error_class: str,
        attempts: int = 1,
        retry: RetryHeaders | None = None,
        alert: bool = False,
        alert_type: str = ALERT_RETRIES_EXHAUSTED,
        expected: bool = False,
    ) -> None:
        """Send ``record`` to ``dlq`` for agent or effect ``name`` (and an ``alerts``
        record of ``alert_type`` when ``alert``), naming its origin, stamped with the
        injected clock.

        :param expected: a refusal the data explains (``PermanentError(expected=True)``):
            counted by the guard as a handled record, not as a dead letter.
        :raises TooManyDeadLetters: ``name``'s guard tripped: nothing is produced, and
            the exception must stop the worker so the record is not committed.
        """
        # Trips (raises) before producing when too many records in a row go to dlq: a
        # bad deploy halts the worker, and the record that tripped the guard is
        # processed again after the fix instead of being dead-lettered.
        self.guard(name).record(not expected)
        self.metrics.inc(MetricName.EVENTS_DEAD_LETTERED, agent=name)
        await _send_dead_letter(
            self.outbox,
            self.codec,
            record,
            reason=reason,
            error_class=error_class,
            attempts=attempts,
            now=self.clock.time(),
            retry=retry,
            alert=alert,
            alert_type=alert_type,
        )

    async def run(self, name: str, records: Sequence[Inbound]) -> None:
        """Run effect ``name`` over records fresh from their origin topic."""
        await self._run(name, [(record, None) for record in records])

    async def rerun(self, record: Inbound, retry: RetryHeaders) -> None:
        """Run the effect a retried record names again (called once it is due)."""
        await self._run(retry.effect or "", [(record, retry)])

    async def _run(self, name: str, batch: Sequence[tuple[Inbound, RetryHeaders | None]]) -> None:
        effect = self.effects.get(name)
        if effect is None:
            await self._dead_letter_unknown(name, batch)
            return
        try:
            await effect([record for record, _ in batch])
        except Exception as exc:
            # Unknown exception types propagate from classify(): they are bugs, and a
            # crash is louder and safer than dead-lettering every record.
            kind = classify(exc)
            if kind != "transient" and len(batch) > 1:
                # One bad record fails its whole batch; run them one by one so only the
                # bad one is dead-lettered.
                for item in batch:
                    await self._run(name, [item])
                return
            for record, retry in batch:
                await self._fail(name, record, retry, exc)
            return
        guard = self.guard(name)
        for _ in batch:
            guard.record(False)
        self.metrics.inc(MetricName.EVENTS_PROCESSED, len(batch), agent=name)

    async def _fail(
        self, name: str, record: Inbound, retry: RetryHeaders | None, exc: Exception
    ) -> None:
        origin = retry.origin if retry and retry.origin else record.topic
        decision = decide_failure(
            exc,
            attempt=retry.attempt if retry else 0,
            policy=self.policy_of(name, record),
            now=self.clock.time(),
            rand=self.rand,
            origin=origin,
            origin_partition=retry.origin_partition if retry else record.partition,
            origin_offset=retry.origin_offset if retry else record.offset,
            effect=name,
            first_failed_at_ms=retry.first_failed_at_ms if retry else None,
        )
        if isinstance(decision, Retry):
            log.warning(
                "effect failed, retrying",
                extra={
                    "position": record.position,
                    "effect": name,
                    "attempt": decision.attempt,
                    "retry_topic": decision.topic,
                    "reason": decision.headers.reason,
                },
            )
            await self.outbox.send(
                decision.topic,
                record.key,
                record.value,
                merge_headers(record.headers, decision.headers),
            )
            self.guard(name).record(False)
            self.metrics.inc(MetricName.EVENTS_RETRIED, agent=name)
            return
        expected = isinstance(exc, PermanentError) and exc.expected
        await self._dead_letter(name, record, retry, decision, expected=expected)

    async def _dead_letter(
        self,
        name: str,
        record: Inbound,
        retry: RetryHeaders | None,
        decision: DeadLetter,
        *,
        expected: bool = False,
    ) -> None:
        await self.dead_letter(
            name,
            record,
            reason=decision.reason,
            error_class=decision.error_class,
            attempts=decision.attempts,
            retry=retry,
            alert=decision.alert,
            alert_type=decision.alert_type,
            expected=expected,
        )

    async def _dead_letter_unknown(
        self, name: str, batch: Sequence[tuple[Inbound, RetryHeaders | None]]
    ) -> None:
        for record, retry in batch:
            await self.dead_letter(
                name,
                record,
                reason=f"no effect named {name!r} in this worker",
                error_class="UnknownEffect",
                attempts=(retry.attempt if retry else 0) + 1,
                retry=retry,
            )


async def _send_dead_letter(
    outbox: Outbox,
    codec: Codec,
    record: Inbound,
    *,
    reason: str,
    error_class: str,
    attempts: int,
    now: float,
    retry: RetryHeaders | None,
    alert: bool,
    alert_type: str = ALERT_RETRIES_EXHAUSTED,
) -> None:
    """Produce the ``dlq`` record (and the alert); only :meth:`EffectRunner.dead_letter`
    calls this, after its guard."""
    origin_topic = retry.origin if retry and retry.origin else record.topic
    partition = retry.origin_partition if retry and retry.origin_partition is not None else None
    offset = retry.origin_offset if retry and retry.origin_offset is not None else None
    dead = dead_letter_record(
        origin_topic=origin_topic,
        origin_partition=record.partition if partition is None else partition,
        origin_offset=record.offset if offset is None else offset,
        key=record.key,
        value=record.value,
        headers=record.headers,
        reason=reason,
        error_class=error_class,
        attempts=attempts,
        now_ms=int(now * 1000),
        correlation_id=None,
    )
    log.error(
        "record dead-lettered",
        extra={"position": record.position, "reason": dead["reason"], "attempts": attempts},
    )
    traceparent = header_value(record.headers, TRACEPARENT)
    headers = record_headers("dlq", dead, traceparent=traceparent)
    await outbox.send("dlq", record.key, codec.encode("dlq", dead), headers)
    if alert:
        notice = alert_record(dead, alert_type)
        alert_headers = record_headers("alerts", notice, traceparent=traceparent)
        await outbox.send("alerts", dead["eventId"].encode(), encode_alert(notice), alert_headers)
