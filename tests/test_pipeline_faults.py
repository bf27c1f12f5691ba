"""No-loss claims proven with faults: the worker SIGKILLed mid-stream, PostgreSQL stopped.

Every accepted webhook must land exactly once in webhook_events and in its projection.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from devstack import PostgresServer
from tests.fixtures.ingress import post_stripe
from tests.fixtures.worker import Pipeline
from tests.payloads.stripe import stripe_event

pytestmark = pytest.mark.integration


def _payment_event(batch: str, n: int) -> dict[str, object]:
    return stripe_event(
        "payment_intent.succeeded",
        event_id=f"evt_{batch}_{n}",
        order_id=f"ord_{batch}_{n}",
        object_id=f"pi_{batch}_{n}",
        amount=1000 + n,
    )


async def _send_all(
    pipeline: Pipeline,
    events: list[dict[str, object]],
    concurrency: int = 16,
    pause_s: float = 0.0,
) -> None:
    queue: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    for event in events:
        queue.put_nowait(event)

    async def sender() -> None:
        while not queue.empty():
            event = queue.get_nowait()
            status = await post_stripe(pipeline.ingress, event)
            assert status == 200, status
            if pause_s:
                await asyncio.sleep(pause_s)

    await asyncio.gather(*(sender() for _ in range(concurrency)))


def _counts(pipeline: Pipeline, batch: str) -> tuple[int, int, int]:
    like = f"%\\_{batch}\\_%"
    return (
        pipeline.scalar("SELECT count(*) FROM webhook_events WHERE event_id LIKE %s", like),
        pipeline.scalar(
            "SELECT count(DISTINCT event_id) FROM webhook_events WHERE event_id LIKE %s", like
        ),
        pipeline.scalar("SELECT count(*) FROM payments WHERE provider_payment_id LIKE %s", like),
    )


async def test_sigkill_twice_mid_stream_loses_and_doubles_nothing(pipeline: Pipeline) -> None:
    batch = uuid.uuid4().hex[:8]
    events = [_payment_event(batch, n) for n in range(2000)]

    kills_at: list[int] = []

    def rows() -> int:
        return _counts(pipeline, batch)[0]

    def kill_and_restart() -> None:
        pipeline.worker.kill()
        kills_at.append(rows())
        pipeline.worker.start()

    # The first half is paced (about 100/s); the first SIGKILL lands once 400 of its rows
    # are in, while the rest are still being sent. The second lands as soon as the
    # restarted worker has made progress, in the middle of its backlog. The second half
    # is sent only then, so both kills are mid-stream by construction (a restarted worker
    # may drain a backlog in one batch, so "after N rows" alone cannot promise it).
    first, second = events[:1000], events[1000:]
    sending = asyncio.create_task(_send_all(pipeline, first, concurrency=4, pause_s=0.04))
    await pipeline.wait_for("400 rows before the first kill", lambda: rows() >= 400)
    kill_and_restart()
    await pipeline.wait_for(
        "the restarted worker to make progress", lambda: rows() > kills_at[0], timeout_s=180
    )
    kill_and_restart()
    await sending
    await _send_all(pipeline, second, concurrency=4, pause_s=0.01)
    assert 0 < kills_at[0] < kills_at[1] < len(events), kills_at

    await pipeline.wait_for(
        "all 2000 webhooks projected",
        lambda: _counts(pipeline, batch) == (2000, 2000, 2000),
        timeout_s=180,
    )
    amounts = pipeline.scalar(
        "SELECT sum(amount_minor) FROM payments WHERE provider_payment_id LIKE %s",
        f"%\\_{batch}\\_%",
    )
    assert amounts == sum(1000 + n for n in range(2000))


async def test_postgres_stopped_30s_mid_stream_retries_and_drains(
    pipeline: Pipeline, postgres_server: PostgresServer
) -> None:
    batch = uuid.uuid4().hex[:8]
    before = [_payment_event(batch, n) for n in range(100)]
    during = [_payment_event(batch, n) for n in range(100, 400)]

    await _send_all(pipeline, before)
    await asyncio.to_thread(postgres_server.stop)
    try:
        await _send_all(pipeline, during)
        await asyncio.sleep(30)
    finally:
        await asyncio.to_thread(postgres_server.start)

    await pipeline.wait_for(
        "every webhook projected after PostgreSQL returned",
        lambda: _counts(pipeline, batch) == (400, 400, 400),
        timeout_s=180,
    )
    # The retries went through the delay topics, with their attempt headers.
    from tests.fixtures.kafka import header_map, read_topic

    retried = [
        m for m in read_topic(pipeline.bootstrap, "retry.1s") if "sluice-attempt" in header_map(m)
    ]
    assert retried, "expected records to have gone through retry.1s"
