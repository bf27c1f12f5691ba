"""The run of ``bench.orders``: orders and their payments through the real processes.

``sluice ingress`` and ``sluice worker`` as child processes, as ``bench._pipeline_e2e``
starts them (the worker's consumer group committed at the current end of every topic it
reads, so it handles this run's records only). For each order the load generator POSTs
``order.created`` to the internal API, then, once that is accepted, the order's signed
Stripe ``payment_intent.succeeded`` webhook to the public listener, and records when the
webhook's 200 arrives.

One thread polls PostgreSQL every ``POLL_EVERY_S`` with one query for both things it
waits for: the orders that are PAID and the orders that have a ``payments`` row. From
the same 200 and the same polls come the two latencies the bench compares:

- **order**: 200 → ``orders`` row PAID. The path: ``webhooks.stripe`` → normalise →
  ``billing.payment.succeeded`` → join → ``orders.lifecycle`` → ``project_orders``;
- **payment** (the baseline): 200 → ``payments`` row, the billing projection, which
  reads the same ``billing.payment.succeeded`` record in parallel with the join.

For the paced phase the records the worker wrote (``billing.payment.succeeded`` and the
``order.paid`` records on ``orders.lifecycle``) are read back, so their timestamps split
both latencies into hops. Every wait is bounded.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import psycopg

from bench._orders_input import (
    CREATED,
    EVENTS_PATH,
    INTERNAL_TOKEN,
    WEBHOOK,
    BenchOrder,
    OrderLog,
    OrdersPhase,
    created_headers,
    prepare_orders,
    summarise,
)
from bench._pipeline_e2e import BILLING_TOPIC, POLL_BATCH, POLL_EVERY_S
from bench._pipeline_infra import (
    Child,
    TreeCpuMeter,
    end_offsets,
    progress,
    read_records,
)
from bench._pipeline_input import Distribution, distribution, match_latencies
from bench._sluice import (
    SluiceProcesses,
    run_watched,
    send_closed,
    send_paced,
    sluice_processes,
    wait_for_rows,
)
from schemas.codec import make_codec

__all__ = [
    "LIFECYCLE_TOPIC",
    "SECRET",
    "OrdersOptions",
    "OrdersRun",
    "PaidWatcher",
    "run_orders",
    "worker_app_id",
]

SECRET: Final = "whsec_bench_orders"
LIFECYCLE_TOPIC: Final = "orders.lifecycle"
PAID_EVENT: Final = "order.paid"
_PROBE_TIMEOUT_S = 180.0  # the worker's start: imports, group join, topic declaration
#: A drain waits this long, plus one second per ``_DRAIN_ORDERS_PER_S`` orders sent.
_DRAIN_BASE_S = 60.0
_DRAIN_ORDERS_PER_S = 20.0
_SEEN_QUERY: Final = (
    "SELECT 'order', order_id FROM orders "
    "WHERE status = 'PAID' AND order_id = ANY(%(orders)s) "
    "UNION ALL "
    "SELECT 'payment', order_id FROM payments "
    "WHERE provider = 'stripe' AND order_id = ANY(%(payments)s)"
)
_KINDS: Final = ("order", "payment")


# -- the watcher -----------------------------------------------------------------------


class PaidWatcher(threading.Thread):
    """Polls PostgreSQL for the orders it was given: when each is first seen PAID in
    ``orders`` and when its ``payments`` row first shows, both in one query per poll.

    Its own connection, on its own thread, so queries never stall the load generator's
    event loop. Times are ``time.monotonic()`` at the start of the query that returned
    the row, so both latencies of an order are measured by the same polls. Each poll
    asks for the ``POLL_BATCH`` longest-outstanding ids of each kind, and waits at least
    twice as long as its query took, so a backlog does not turn the watcher into load.
    """

    def __init__(self, dsn: str, interval_s: float = POLL_EVERY_S) -> None:
        super().__init__(name="paid-watcher", daemon=True)
        self._dsn = dsn
        self._interval_s = interval_s
        self._lock = threading.Lock()
        # Ordered sets (oldest first) and first-seen times, per kind.
        self._pending: dict[str, dict[str, None]] = {kind: {} for kind in _KINDS}
        self._seen: dict[str, dict[str, float]] = {kind: {} for kind in _KINDS}
        self._stop_event = threading.Event()
        self.error: BaseException | None = None

    def expect(self, order_ids: Iterable[str]) -> None:
        ids = list(order_ids)
        with self._lock:
            for pending in self._pending.values():
                pending.update(dict.fromkeys(ids))

    def forget(self, order_ids: Iterable[str]) -> None:
        """Stop waiting for these (orders whose requests were refused)."""
        ids = list(order_ids)
        with self._lock:
            for pending in self._pending.values():
                for order_id in ids:
                    pending.pop(order_id, None)

    def paid(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seen["order"])

    def payments(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seen["payment"])

    def outstanding(self) -> int:
        """Orders not yet seen PAID plus orders without their payment row."""
        with self._lock:
            return sum(len(pending) for pending in self._pending.values())

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)

    def run(self) -> None:
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                while not self._stop_event.is_set():
                    with self._lock:
                        wanted = {
                            kind: list(itertools.islice(pending, POLL_BATCH))
                            for kind, pending in self._pending.items()
                        }
                    took = 0.0
                    if any(wanted.values()):
                        at = time.monotonic()
                        rows = conn.execute(
                            _SEEN_QUERY,
                            {"orders": wanted["order"], "payments": wanted["payment"]},
                        ).fetchall()
                        took = time.monotonic() - at
                        with self._lock:
                            for kind, order_id in rows:
                                self._seen[kind].setdefault(order_id, at)
                                self._pending[kind].pop(order_id, None)
                    self._stop_event.wait(max(self._interval_s, 2 * took))
        except BaseException as exc:  # reported by the waiting side
            self.error = exc


# -- the load ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Urls:
    events: str
    webhook: str


async def _post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str], status: int
) -> bool:
    """POST and read the whole answer; True if it is ``status``."""
    try:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            return response.status == status
    except (aiohttp.ClientError, TimeoutError):
        return False


async def _order(
    session: aiohttp.ClientSession,
    urls: _Urls,
    order: BenchOrder,
    scheduled: float,
    log: OrderLog,
    headers: Mapping[str, str],
) -> None:
    """One order: ``order.created`` (202), then its webhook (200) once that is accepted."""
    key = order.order_id
    log.scheduled[key] = scheduled
    if not await _post(session, urls.events, order.created_body, headers, 202):
        log.refused[CREATED] += 1
        return
    sent = log.created[key] = time.monotonic()
    webhook = order.webhook
    if not await _post(session, urls.webhook, webhook.body, webhook.headers, 200):
        log.refused[WEBHOOK] += 1
        return
    log.webhook_sent[key], log.acked[key] = sent, time.monotonic()


async def _paced(urls: _Urls, orders: Sequence[BenchOrder], rate: float) -> OrderLog:
    log, headers = OrderLog(), created_headers()
    await send_paced(
        orders, rate, lambda session, order, at: _order(session, urls, order, at, log, headers)
    )
    return log


async def _closed(urls: _Urls, orders: Sequence[BenchOrder], concurrency: int) -> OrderLog:
    log, headers = OrderLog(), created_headers()
    await send_closed(
        orders,
        concurrency,
        lambda session, order, at: _order(session, urls, order, at, log, headers),
    )
    return log


async def _drain(
    watcher: PaidWatcher, worker: Child, orders: Sequence[BenchOrder], log: OrderLog
) -> None:
    """Wait for the orders whose webhook was acknowledged (bounded by their number)."""
    watcher.forget(o.order_id for o in orders if o.order_id not in log.acked)
    await wait_for_rows(watcher, worker, _DRAIN_BASE_S + len(orders) / _DRAIN_ORDERS_PER_S)


# -- the run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OrdersOptions:
    rate: float
    duration_s: float
    warmup_s: float
    burst: int
    burst_concurrency: int


@dataclass
class OrdersRun:
    worker_ready_s: float = math.nan
    phases: list[OrdersPhase] = field(default_factory=list)


def worker_app_id(run_id: str) -> str:
    """The worker's ``SLUICE_APP_ID``: its consumer group and its changelog topics' prefix."""
    return f"bench-orders-worker-{run_id}"


def run_orders(
    options: OrdersOptions,
    *,
    bootstrap: str,
    database_url: str,
    run_id: str,
    workdir: Path,
    pids: dict[str, int | None],
    search_url: str | None = None,
) -> OrdersRun:
    """Start ingress and worker, run the phases, stop both. Blocks; bounded by time-outs.

    :param search_url: Elasticsearch for the worker's ``orders`` index (prefixed with the
        run id); ``None`` runs without search.
    """
    app_id = worker_app_id(run_id)
    result = OrdersRun()
    with sluice_processes(
        bootstrap=bootstrap,
        database_url=database_url,
        app_id=app_id,
        workdir=workdir,
        stripe_secret=SECRET,
        ingress_env={"INTERNAL_API_TOKEN": INTERNAL_TOKEN},
        # Explicit, so neither comes from the caller's environment: orders without a
        # payment provider make no Stripe call, and search is on only when asked.
        worker_env={
            "STRIPE_API_KEY": "",
            "ELASTICSEARCH_URL": search_url or "",
            "SLUICE_SEARCH_INDEX_PREFIX": f"{app_id}-" if search_url else "",
        },
    ) as sluice:
        watcher = PaidWatcher(database_url)
        run_watched(
            watcher,
            lambda: _drive(
                options,
                result,
                urls=_Urls(
                    events=sluice.internal_url(EVENTS_PATH),
                    webhook=sluice.public_url("/v1/webhooks/stripe"),
                ),
                watcher=watcher,
                sluice=sluice,
                bootstrap=bootstrap,
                pids={**pids, **sluice.pids()},
            ),
        )
    return result


def _prepare(count: int) -> list[BenchOrder]:
    """Signed now: each phase's webhooks are well inside the ingress's tolerance."""
    return prepare_orders(count, SECRET, timestamp=int(time.time()))


async def _drive(
    options: OrdersOptions,
    result: OrdersRun,
    *,
    urls: _Urls,
    watcher: PaidWatcher,
    sluice: SluiceProcesses,
    bootstrap: str,
    pids: dict[str, int | None],
) -> None:
    ingress, worker = sluice.ingress, sluice.worker
    await sluice.wait_ready()
    probe = _prepare(1)
    began = time.monotonic()
    watcher.expect(o.order_id for o in probe)
    log = await _closed(urls, probe, 1)
    if log.refused:
        raise RuntimeError(f"the ingress refused the probe order:\n{ingress.log_tail()}")
    await wait_for_rows(watcher, worker, _PROBE_TIMEOUT_S)
    if watcher.outstanding():
        raise RuntimeError(f"the probe order was not PAID in {_PROBE_TIMEOUT_S:g} s")
    result.worker_ready_s = time.monotonic() - began
    progress(f"worker ready: first order PAID {result.worker_ready_s:.1f} s after it was sent")

    warmup_count = round(options.rate * options.warmup_s)
    if warmup_count:
        progress(f"warm-up: {warmup_count} orders at {options.rate:g}/s ...")
        warmup = _prepare(warmup_count)
        watcher.expect(o.order_id for o in warmup)
        await _drain(watcher, worker, warmup, await _paced(urls, warmup, options.rate))

    paced = _prepare(round(options.rate * options.duration_s))
    progress(f"paced: {len(paced):,} orders at {options.rate:g}/s ...")
    topics = [BILLING_TOPIC, LIFECYCLE_TOPIC]
    before = end_offsets(bootstrap, topics)
    meter = TreeCpuMeter({**pids, "bench": os.getpid()}, trees=("postgres", "elasticsearch"))
    watcher.expect(o.order_id for o in paced)
    meter.start()
    log = await _paced(urls, paced, options.rate)
    await _drain(watcher, worker, paced, log)
    cpu = meter.stop()
    after = end_offsets(bootstrap, topics)
    phase = summarise(f"paced {options.rate:g}/s", log, watcher.paid(), watcher.payments(), paced)
    phase.target_rps, phase.cpu_percent, phase.cpu_wait_percent = options.rate, cpu, meter.waited
    phase.stages = _stages(log.acked, bootstrap, before, after, watcher)
    result.phases.append(phase)
    _report(phase)

    if options.burst:
        burst = _prepare(options.burst)
        progress(f"burst: {len(burst):,} orders, {options.burst_concurrency} in flight ...")
        meter = TreeCpuMeter({**pids, "bench": os.getpid()}, trees=("postgres", "elasticsearch"))
        watcher.expect(o.order_id for o in burst)
        meter.start()
        log = await _closed(urls, burst, options.burst_concurrency)
        await _drain(watcher, worker, burst, log)
        cpu = meter.stop()
        name = f"burst c={options.burst_concurrency}"
        phase = summarise(name, log, watcher.paid(), watcher.payments(), burst)
        phase.concurrency, phase.cpu_percent = options.burst_concurrency, cpu
        phase.cpu_wait_percent = meter.waited
        result.phases.append(phase)
        _report(phase)


def _report(phase: OrdersPhase) -> None:
    progress(
        f"{phase.name}: {phase.paid_per_s:.0f} orders PAID/s; 200 -> PAID p50 "
        f"{phase.order.p50_ms:.0f} ms, p99 {phase.order.p99_ms:.0f} ms; 200 -> payment row "
        f"p50 {phase.payment.p50_ms:.0f} ms, p99 {phase.payment.p99_ms:.0f} ms; "
        f"{phase.not_paid} not PAID, {phase.errors} errors"
    )


# -- where the time goes -------------------------------------------------------------------


def _stages(
    acked: Mapping[str, float],
    bootstrap: str,
    before: Mapping[tuple[str, int], int],
    after: Mapping[tuple[str, int], int],
    watcher: PaidWatcher,
) -> dict[str, Distribution]:
    """Both latencies split at the records the worker wrote (per order id; Kafka record
    timestamps are whole milliseconds, so a hop can come out slightly negative: 0)."""
    billed = _written_at(bootstrap, BILLING_TOPIC, before, after, _billing_order)
    paid = _written_at(bootstrap, LIFECYCLE_TOPIC, before, after, _paid_order)

    def hop(start: Mapping[str, float], end: Mapping[str, float]) -> Distribution:
        return distribution(match_latencies(start, end).latencies_s)

    return {
        "200 -> billing record (normalise)": hop(acked, billed),
        "billing record -> payments row (project_billing)": hop(billed, watcher.payments()),
        "billing record -> order.paid record (join)": hop(billed, paid),
        "order.paid record -> orders row PAID (project_orders)": hop(paid, watcher.paid()),
    }


def _billing_order(record: Mapping[str, Any]) -> str | None:
    order_id = record.get("orderId")
    return order_id if isinstance(order_id, str) else None


def _paid_order(record: Mapping[str, Any]) -> str | None:
    order_id = record.get("orderId")
    paid = record.get("eventType") == PAID_EVENT
    return order_id if paid and isinstance(order_id, str) else None


def _written_at(
    bootstrap: str,
    topic: str,
    before: Mapping[tuple[str, int], int],
    after: Mapping[tuple[str, int], int],
    key: Callable[[Mapping[str, Any]], str | None],
) -> dict[str, float]:
    """``key(record)`` -> when the record was written (monotonic seconds), for the
    records of ``topic`` between ``before`` and ``after``; records keyed None are left
    out."""
    codec = make_codec(None)
    offset = time.time() - time.monotonic()
    start = {tp: o for tp, o in before.items() if tp[0] == topic}
    end = {tp: o for tp, o in after.items() if tp[0] == topic}
    written: dict[str, float] = {}
    for message in read_records(bootstrap, start, end):
        value = message.value()
        if value is None:
            continue
        found = key(codec.decode(value, topic=topic).record)
        if found is not None:
            written.setdefault(found, message.timestamp()[1] / 1000 - offset)
    return written
