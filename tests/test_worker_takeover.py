"""Scale-out under a fault: two `sluice worker` processes share the stream in one consumer
group, one is SIGKILLed while orders and their payment webhooks flow, the other takes over
its partitions.

Every order must end PAID exactly once (revision 2, one ``order.paid`` id on
``orders.lifecycle``), every payment webhook must be one ``webhook_events`` row and one
``payments`` row. The takeover time (SIGKILL until an order and its payment sent at the
kill, on every partition, are PAID) is measured with and without a standby replica and
printed (run with ``-s`` to see it), not asserted: it depends on the machine.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]

from schemas.catalog import JOIN_PARTITIONS, WEBHOOK_PARTITIONS
from tests.fixtures.kafka import group_members
from tests.fixtures.orders import lifecycle_ids, order_and_payment, paid, send_orders
from tests.fixtures.worker import Pipeline, WorkerProcess, start_group_at_end, wait_until

pytestmark = pytest.mark.integration

FIRST_HALF = 60
SECOND_HALF = 60


@dataclass
class Pair:
    """Two workers in one group, as two machines would run them (own state dirs)."""

    victim: WorkerProcess
    survivor: WorkerProcess
    group: str

    def logs(self) -> str:
        victim, survivor = self.victim.log_tail(), self.survivor.log_tail()
        return f"--- victim ---\n{victim}\n--- survivor ---\n{survivor}"


@pytest.fixture
def pair(pipeline: Pipeline, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Pair]:
    # The module's own worker would process the same topics in another group and mask a
    # loss, so only the pair runs.
    pipeline.worker.stop()
    standby: int = request.param
    group = f"{pipeline.env['SLUICE_APP_ID']}-{uuid.uuid4().hex[:4]}-sb{standby}"
    env = pipeline.env | {"SLUICE_APP_ID": group, "SLUICE_STANDBY_REPLICAS": str(standby)}
    start_group_at_end(env)
    workers = [
        WorkerProcess(env | {"SLUICE_STATE_DIR": str(tmp_path / name)}, tmp_path / f"{name}.log")
        for name in ("victim", "survivor")
    ]
    for worker in workers:
        worker.start()
    try:
        yield Pair(workers[0], workers[1], group)
    finally:
        for worker in workers:
            worker.stop()


def _partition(key: str, partitions: int) -> int:
    # Java's partitioner, as the ingress and faust use.
    hashed: int = murmur2(key.encode())
    return (hashed & 0x7FFFFFFF) % partitions


def _probes(prefix: str) -> list[str]:
    """Order ids whose orders and billing events cover every join partition and whose
    payment webhooks (keyed ``evt_<order id>``) cover every webhook partition."""
    chosen: list[str] = []
    join: set[int] = set()
    webhooks: set[int] = set()
    n = 0
    while len(join) < JOIN_PARTITIONS or len(webhooks) < WEBHOOK_PARTITIONS:
        order_id = f"{prefix}{n}"
        p = _partition(order_id, JOIN_PARTITIONS)
        w = _partition(f"evt_{order_id}", WEBHOOK_PARTITIONS)
        if p not in join or w not in webhooks:
            chosen.append(order_id)
            join.add(p)
            webhooks.add(w)
        n += 1
    return chosen


async def _send_probes(pipeline: Pipeline, orders: list[str]) -> None:
    await asyncio.gather(*(order_and_payment(pipeline, order_id, 500, 1) for order_id in orders))


async def _until_paid(pipeline: Pipeline, pair: Pair, prefix: str, count: int) -> float:
    """Seconds until ``count`` orders with ``prefix`` are PAID."""
    started = time.monotonic()
    await wait_until(
        f"{count} {prefix}* orders paid",
        lambda: paid(pipeline, prefix) == count,
        timeout_s=180,
        on_timeout=pair.logs,
    )
    return time.monotonic() - started


@pytest.mark.parametrize("pair", [1, 0], ids=["standby", "no-standby"], indirect=True)
async def test_survivor_takes_over_a_sigkilled_workers_partitions_exactly_once(
    pipeline: Pipeline, pair: Pair
) -> None:
    batch = uuid.uuid4().hex[:8]
    await wait_until(
        "both workers in one stable consumer group",
        lambda: group_members(pipeline.bootstrap, pair.group) == 2,
        timeout_s=120,
        on_timeout=pair.logs,
    )
    # The first probes show every partition is processed, the second measure the
    # pipeline's latency with both workers up.
    warm, baseline_probes, takeover_probes = (
        _probes(f"ord_{batch}_{name}_") for name in ("warm", "base", "take")
    )
    await _send_probes(pipeline, warm)
    await _until_paid(pipeline, pair, f"ord_{batch}_warm_", len(warm))
    await _send_probes(pipeline, baseline_probes)
    baseline_s = await _until_paid(pipeline, pair, f"ord_{batch}_base_", len(baseline_probes))

    # The first half is paced (about 8 orders/s); the SIGKILL lands once 20 of its orders
    # are paid, while the rest are still being sent; the takeover probes go at the kill
    # and the second half after the first, so the kill is mid-stream by construction.
    orders = [f"ord_{batch}_{n}" for n in range(FIRST_HALF + SECOND_HALF)]
    first, second = orders[:FIRST_HALF], orders[FIRST_HALF:]
    sending = asyncio.create_task(send_orders(pipeline, first, pause_s=0.5))
    await wait_until(
        "20 paid orders before the kill",
        lambda: paid(pipeline, f"ord_{batch}_") >= 20,
        timeout_s=120,
        on_timeout=pair.logs,
    )
    pair.victim.kill()
    killed_at = time.time()
    paid_at_kill = paid(pipeline, f"ord_{batch}_")
    await _send_probes(pipeline, takeover_probes)
    takeover_s = await _until_paid(pipeline, pair, f"ord_{batch}_take_", len(takeover_probes))
    await sending
    await send_orders(pipeline, second, pause_s=0.1, first_n=FIRST_HALF)
    assert 0 < paid_at_kill < len(orders), paid_at_kill

    everything = len(orders) + len(warm) + len(baseline_probes) + len(takeover_probes)
    await _until_paid(pipeline, pair, f"ord_{batch}_", everything)
    assert pair.survivor.alive(), pair.logs()
    standby = pair.group.rsplit("-sb", 1)[1]
    print(
        f"\ntakeover with {standby} standby replica(s): {takeover_s:.1f} s from SIGKILL until"
        f" an order and its payment on every partition were PAID (with both workers up:"
        f" {baseline_s:.1f} s); survivor recovered {_recovered_after(pair, killed_at)}"
    )

    like = f"ord\\_{batch}\\_%"
    # webhook_events rows come from the webhook outcomes, a hop parallel to the payments:
    # every order PAID does not mean every row is written yet.
    await wait_until(
        "a webhook_events row for every webhook",
        lambda: (
            pipeline.scalar(
                "SELECT count(*) FROM webhook_events WHERE event_id LIKE %s", f"evt_{like}"
            )
            >= everything
        ),
        timeout_s=60,
        on_timeout=pair.logs,
    )
    assert pipeline.query(
        "SELECT count(*), count(DISTINCT event_id) FROM webhook_events WHERE event_id LIKE %s",
        f"evt_{like}",
    ) == [(everything, everything)]
    assert pipeline.query(
        "SELECT count(*), count(DISTINCT order_id), sum(amount_minor) FROM payments"
        " WHERE provider_payment_id LIKE %s AND status = 'SUCCEEDED'",
        f"pi_{like}",
    ) == [
        (
            everything,
            everything,
            sum(1000 + n for n in range(len(orders)))
            + 500 * (len(warm) + len(baseline_probes) + len(takeover_probes)),
        )
    ]
    assert pipeline.query("SELECT DISTINCT revision FROM orders WHERE order_id LIKE %s", like) == [
        (2,)
    ]
    lifecycle = lifecycle_ids(pipeline, f"ord_{batch}_")
    assert len(lifecycle) == everything
    for order_id, by_type in lifecycle.items():
        events = {t: len(ids) for t, ids in by_type.items() if t != "order.payment_orphaned"}
        assert events == {"order.pending_payment": 1, "order.paid": 1}, (order_id, by_type)


def _recovered_after(pair: Pair, killed_at: float) -> str:
    """When the survivor's faust finished the recovery that followed the kill, by its log."""
    for line in pair.survivor.log_path.read_text(errors="replace").splitlines():
        if "Recovery complete" not in line or not line.startswith("["):
            continue
        stamp = time.mktime(time.strptime(line[1:20], "%Y-%m-%d %H:%M:%S"))
        stamp += int(line[21:24]) / 1000
        if stamp > killed_at:
            return f"{stamp - killed_at:.1f} s after the kill (faust log)"
    return "(no recovery line in its log)"
