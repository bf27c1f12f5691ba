"""Part 1 of ``bench.pipeline``: signed webhooks through the ingress to Postgres rows.

The real processes, as deployed: ``sluice ingress`` and ``sluice worker`` (its consumer
group committed at the current end of every topic it reads, so it handles this run's
webhooks only). The bench POSTs signed Stripe ``payment_intent.succeeded`` webhooks, one
fresh payment each, records when each 200 arrives, and a thread polls ``payments`` for
the outstanding payment ids every ``POLL_EVERY_S``, recording when each row is first
visible. End-to-end latency is (first seen) - (200 read): the time the merchant's data
takes to show up after Stripe was told it was received. The poll interval bounds its
resolution (a row is stamped with the start of the first poll that returns it); with a
backlog of more than ``POLL_BATCH`` rows outstanding, rows far ahead of the oldest are
seen late (only then is the latency seconds anyway).

Phases, in one run: first a closed-loop burst against the ingress alone (after an
unmeasured one a tenth its size; no worker running yet; its webhooks stay behind on
``webhooks.stripe``, as the worker's group is committed past them), the yardstick for
the end-to-end burst. Then the worker starts: a probe (waits for it to join), a paced
warm-up, the paced run (open loop at ``rate``, by default half the ingress-alone
accepted/s: each request is sent at its scheduled time whether or not earlier ones
answered), then the same burst end to end (closed loop, ``concurrency`` requests in
flight) for the pipeline's sustained maximum. With more worker counts (``--processes``),
each further one gets a fresh worker, its probe and its burst. For the paced run the
billing records the worker wrote are read back, so their timestamps split the latency
into its two halves.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
import psycopg

from bench._pipeline_infra import (
    Child,
    TreeCpuMeter,
    end_offsets,
    progress,
    read_records,
)
from bench._pipeline_input import (
    Distribution,
    PaymentWebhook,
    distribution,
    match_latencies,
    prepare_payment_webhooks,
    stage_latencies,
)
from bench._sluice import (
    Ingress,
    WorkerOptionMissing,
    ingress_process,
    run_watched,
    send_closed,
    send_paced,
    wait_for_rows,
    worker_process,
)
from schemas.codec import make_codec

__all__ = [
    "POLL_EVERY_S",
    "E2EOptions",
    "EndToEnd",
    "PhaseResult",
    "RowWatcher",
    "new_run_id",
    "run_end_to_end",
    "worker_app_id",
]

POLL_EVERY_S: Final = 0.02
POLL_BATCH: Final = 1000
SECRET: Final = "whsec_bench_pipeline"
BILLING_TOPIC: Final = "billing.payment.succeeded"
WEBHOOK_PATH: Final = "/v1/webhooks/stripe"
#: The ingress-alone burst is preceded by an unmeasured one this many times smaller.
INGRESS_WARMUP_FRACTION: Final = 10
_PROBE_TIMEOUT_S = 180.0  # the worker's start: imports, group join, topic declaration
_ROWS_QUERY: Final = (
    "SELECT provider_payment_id FROM payments "
    "WHERE provider = 'stripe' AND provider_payment_id = ANY(%s)"
)


@dataclass
class PhaseResult:
    """One measured phase.

    :param ingress_rps: 200s per second while sending.
    :param rows_per_s: rows that became visible per second, from the first request sent
        to the last row seen: the pipeline's sustained end-to-end throughput.
    :param drain_s: from the last 200 to the last row.
    """

    name: str
    sent: int
    errors: int
    ingress_rps: float
    rows_per_s: float
    drain_s: float
    http: Distribution
    e2e: Distribution
    missing: int
    early: int
    target_rps: float | None = None
    concurrency: int | None = None
    stages: dict[str, Distribution] = field(default_factory=dict)
    cpu_percent: dict[str, float] = field(default_factory=dict)
    cpu_wait_percent: dict[str, float] = field(default_factory=dict)
    """Per process: % of the time a thread of it was runnable but had no CPU."""
    workers: int | None = None
    """Worker processes running (0: the ingress alone)."""


@dataclass
class EndToEnd:
    worker_ready_s: float = math.nan
    phases: list[PhaseResult] = field(default_factory=list)
    ingress_alone_rps: float = math.nan
    """Webhooks accepted per second by the ingress with no worker, closed loop."""
    unavailable: dict[int, str] = field(default_factory=dict)
    """Worker process counts that could not be run, and why."""

    def phase(self, name: str) -> PhaseResult | None:
        return next((p for p in self.phases if p.name == name), None)

    @property
    def paced(self) -> PhaseResult | None:
        return next((p for p in self.phases if p.target_rps is not None), None)

    def burst(self, processes: int) -> PhaseResult | None:
        """The end-to-end burst with ``processes`` worker processes."""
        return next(
            (p for p in self.phases if p.concurrency is not None and p.workers == processes),
            None,
        )

    def burst_workers(self) -> list[int]:
        return [p.workers for p in self.phases if p.concurrency is not None and p.workers]

    def capacity_ratio(self, processes: int) -> float:
        """End-to-end burst rows/s with ``processes`` workers over the ingress-alone
        burst's accepted/s, both closed loops of this run (NaN if either is missing)."""
        burst = self.burst(processes)
        if burst is None or not self.ingress_alone_rps > 0:
            return math.nan
        return burst.rows_per_s / self.ingress_alone_rps


# -- the row watcher -----------------------------------------------------------------------


class RowWatcher(threading.Thread):
    """Polls ``payments`` for the payment ids it was given; records when each first shows.

    Its own connection, on its own thread, so queries never stall the load generator's
    event loop. Times are ``time.monotonic()`` at the start of the query that returned
    the row. Each poll asks for the ``POLL_BATCH`` longest-outstanding ids (rows appear
    roughly in send order), and waits at least twice as long as its query took before
    the next one, so a backlog does not turn the watcher into load on Postgres.
    """

    def __init__(self, dsn: str, interval_s: float = POLL_EVERY_S) -> None:
        super().__init__(name="row-watcher", daemon=True)
        self._dsn = dsn
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._pending: dict[str, None] = {}  # an ordered set: oldest first
        self._seen: dict[str, float] = {}
        self._stop_event = threading.Event()
        self.error: BaseException | None = None

    def expect(self, ids: Iterable[str]) -> None:
        with self._lock:
            self._pending.update(dict.fromkeys(ids))

    def seen(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seen)

    def outstanding(self) -> int:
        with self._lock:
            return len(self._pending)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)

    def run(self) -> None:
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                while not self._stop_event.is_set():
                    with self._lock:
                        pending = list(itertools.islice(self._pending, POLL_BATCH))
                    took = 0.0
                    if pending:
                        at = time.monotonic()
                        rows = conn.execute(_ROWS_QUERY, (pending,)).fetchall()
                        took = time.monotonic() - at
                        with self._lock:
                            for (payment_id,) in rows:
                                self._seen.setdefault(payment_id, at)
                                self._pending.pop(payment_id, None)
                    self._stop_event.wait(max(self._interval_s, 2 * took))
        except BaseException as exc:  # reported by the waiting side
            self.error = exc


# -- the load ---------------------------------------------------------------------------


@dataclass
class _Sent:
    scheduled: dict[str, float] = field(default_factory=dict)
    acked: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    first_at: float = math.inf
    last_acked_at: float = -math.inf


async def _post(
    session: aiohttp.ClientSession, url: str, webhook: PaymentWebhook, scheduled: float, log: _Sent
) -> None:
    log.scheduled[webhook.payment_id] = scheduled
    log.first_at = min(log.first_at, scheduled)
    try:
        async with session.post(url, data=webhook.body, headers=webhook.headers) as response:
            await response.read()
            ok = response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        ok = False
    now = time.monotonic()
    if ok:
        log.acked[webhook.payment_id] = now
        log.last_acked_at = max(log.last_acked_at, now)
    else:
        log.errors += 1


async def _paced(url: str, webhooks: Sequence[PaymentWebhook], rate: float) -> _Sent:
    log = _Sent()
    await send_paced(webhooks, rate, lambda session, w, at: _post(session, url, w, at, log))
    return log


async def _closed(url: str, webhooks: Sequence[PaymentWebhook], concurrency: int) -> _Sent:
    log = _Sent()
    await send_closed(webhooks, concurrency, lambda session, w, at: _post(session, url, w, at, log))
    return log


def _phase(name: str, log: _Sent, seen: dict[str, float], sent: int) -> PhaseResult:
    matched = match_latencies(log.acked, seen)
    rows = [seen[key] for key in log.scheduled if key in seen]
    last_row = max(rows, default=math.nan)
    return PhaseResult(
        name=name,
        sent=sent,
        errors=log.errors,
        ingress_rps=_per_s(len(log.acked), log.last_acked_at - log.first_at),
        rows_per_s=_per_s(len(rows), last_row - log.first_at),
        drain_s=last_row - log.last_acked_at if rows and log.acked else math.nan,
        http=distribution([log.acked[key] - log.scheduled[key] for key in log.acked]),
        e2e=distribution(matched.latencies_s),
        missing=matched.missing,
        early=matched.early,
    )


def _per_s(count: int, seconds: float) -> float:
    return count / seconds if count and seconds > 0 else math.nan


# -- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class E2EOptions:
    """:param rate: paced webhooks/s; ``None``: half the ingress-alone burst's accepted/s.
    :param workers: worker process counts to measure, one after the other; the first
        runs every phase, each further one its probe and burst (its capacity)."""

    rate: float | None
    duration_s: float
    warmup_s: float
    burst: int
    burst_concurrency: int
    workers: tuple[int, ...] = (1,)


def run_end_to_end(
    options: E2EOptions,
    *,
    bootstrap: str,
    database_url: str,
    run_id: str,
    workdir: Path,
    pids: dict[str, int | None],
) -> EndToEnd:
    """Start the ingress; burst it alone; then per worker count start the worker(s) and
    run the phases. Blocks; bounded by time-outs."""
    result = EndToEnd()
    with ingress_process(bootstrap=bootstrap, workdir=workdir, stripe_secret=SECRET) as ingress:
        asyncio.run(ingress.wait_ready())
        if options.burst:
            alone = asyncio.run(
                _ingress_alone(options, ingress, {**pids, "ingress": ingress.child.pid})
            )
            result.phases.append(alone)
            result.ingress_alone_rps = alone.ingress_rps
        rate = options.rate if options.rate is not None else result.ingress_alone_rps / 2
        if not rate > 0:
            raise RuntimeError("no paced rate: the ingress accepted nothing in its burst")
        for index, processes in enumerate(options.workers):
            try:
                with worker_process(
                    bootstrap=bootstrap,
                    database_url=database_url,
                    app_id=worker_app_id(run_id, processes),
                    workdir=workdir,
                    processes=processes,
                    name=f"worker{processes}" if processes > 1 else "worker",
                ) as worker:
                    _with_worker(
                        options,
                        result,
                        ingress=ingress,
                        worker=worker,
                        processes=processes,
                        rate=rate if index == 0 else None,
                        database_url=database_url,
                        bootstrap=bootstrap,
                        pids={**pids, "ingress": ingress.child.pid, "worker": worker.pid},
                    )
            except WorkerOptionMissing as exc:
                progress(f"{processes} worker processes: unavailable ({exc})")
                result.unavailable[processes] = str(exc)
    return result


def worker_app_id(run_id: str, processes: int) -> str:
    """The worker's app id (and consumer group) for a run with ``processes`` processes."""
    return f"bench-worker-{run_id}" if processes == 1 else f"bench-worker{processes}-{run_id}"


async def _ingress_alone(
    options: E2EOptions, ingress: Ingress, pids: dict[str, int | None]
) -> PhaseResult:
    """The closed-loop burst against the ingress with no worker running: what the front
    door accepts on its own, the yardstick for the end-to-end burst."""
    url = ingress.public_url(WEBHOOK_PATH)
    # Unmeasured first: the ingress's first requests pay for connections, the producer's
    # metadata and cold caches, which the end-to-end burst (it runs later) does not.
    warmup = _signed(max(1, options.burst // INGRESS_WARMUP_FRACTION))
    progress(f"ingress alone: warm-up, {len(warmup):,} webhooks ...")
    await _closed(url, warmup, options.burst_concurrency)
    webhooks = _signed(options.burst)
    progress(
        f"ingress alone: {len(webhooks):,} webhooks, {options.burst_concurrency} in flight ..."
    )
    meter = TreeCpuMeter({**pids, "bench": os.getpid()}, trees=("postgres",))
    meter.start()
    log = await _closed(url, webhooks, options.burst_concurrency)
    cpu = meter.stop()
    phase = _phase(f"ingress alone c={options.burst_concurrency}", log, {}, len(webhooks))
    phase.concurrency, phase.cpu_percent, phase.cpu_wait_percent = (
        options.burst_concurrency,
        cpu,
        meter.waited,
    )
    phase.missing, phase.workers = 0, 0  # no worker: no rows are expected
    progress(f"ingress alone: {phase.ingress_rps:,.0f} webhooks accepted/s")
    return phase


def _signed(count: int) -> list[PaymentWebhook]:
    """Signed now: the ingress refuses a signature older than its tolerance, so each
    batch is signed just before it is sent."""
    return prepare_payment_webhooks(count, SECRET, timestamp=int(time.time()))


def _with_worker(
    options: E2EOptions,
    result: EndToEnd,
    *,
    ingress: Ingress,
    worker: Child,
    processes: int,
    rate: float | None,
    database_url: str,
    bootstrap: str,
    pids: dict[str, int | None],
) -> None:
    """The phases with the worker(s) running: probe, then (when ``rate`` is given) a
    paced warm-up and the paced run, then the burst."""
    paced_count = round(rate * options.duration_s) if rate else 0
    warmup_count = round(rate * options.warmup_s) if rate else 0
    progress(f"preparing {1 + warmup_count + paced_count + options.burst:,} signed webhooks ...")
    probe, warmup, paced, burst = _split(
        _signed(1 + warmup_count + paced_count + options.burst),
        (1, warmup_count, paced_count, options.burst),
    )
    watcher = RowWatcher(database_url)
    run_watched(
        watcher,
        lambda: _drive(
            options,
            result,
            url=ingress.public_url(WEBHOOK_PATH),
            batches=(probe, warmup, paced, burst),
            rate=rate,
            processes=processes,
            watcher=watcher,
            worker=worker,
            bootstrap=bootstrap,
            pids=pids,
        ),
    )


def _split(items: list[PaymentWebhook], sizes: Sequence[int]) -> tuple[list[PaymentWebhook], ...]:
    parts: list[list[PaymentWebhook]] = []
    start = 0
    for size in sizes:
        parts.append(items[start : start + size])
        start += size
    return tuple(parts)


def _drain_timeout_s(count: int) -> float:
    """How long the rows of ``count`` webhooks may take after the last 200: a minute,
    plus the time a pipeline at 250 rows/s (half the slowest seen) needs for them."""
    return 60.0 + count / 250.0


async def _drive(
    options: E2EOptions,
    result: EndToEnd,
    *,
    url: str,
    batches: tuple[list[PaymentWebhook], ...],
    rate: float | None,
    processes: int,
    watcher: RowWatcher,
    worker: Child,
    bootstrap: str,
    pids: dict[str, int | None],
) -> None:
    probe, warmup, paced, burst = batches
    suffix = f", {processes} workers" if processes > 1 else ""
    began = time.monotonic()
    watcher.expect(w.payment_id for w in probe)
    log = await _closed(url, probe, 1)
    if log.errors:
        raise RuntimeError("the ingress refused the probe webhook")
    await wait_for_rows(watcher, worker, _PROBE_TIMEOUT_S)
    if watcher.outstanding():
        raise RuntimeError(f"the worker wrote no row in {_PROBE_TIMEOUT_S:g} s")
    ready_s = time.monotonic() - began
    result.worker_ready_s = ready_s if math.isnan(result.worker_ready_s) else result.worker_ready_s
    progress(f"worker ready: first row {ready_s:.1f} s after the first webhook")

    if warmup and rate:
        progress(f"warm-up: {len(warmup)} webhooks at {rate:,.0f}/s ...")
        watcher.expect(w.payment_id for w in warmup)
        await _paced(url, warmup, rate)
        await wait_for_rows(watcher, worker, _drain_timeout_s(len(warmup)))

    if paced and rate:
        progress(f"paced: {len(paced):,} webhooks at {rate:,.0f}/s ...")
        before = end_offsets(bootstrap, [BILLING_TOPIC])
        meter = TreeCpuMeter({**pids, "bench": os.getpid()}, trees=("postgres", "worker"))
        watcher.expect(w.payment_id for w in paced)
        meter.start()
        log = await _paced(url, paced, rate)
        await wait_for_rows(watcher, worker, _drain_timeout_s(len(paced)))
        cpu = meter.stop()
        after = end_offsets(bootstrap, [BILLING_TOPIC])
        phase = _phase(f"paced {rate:,.0f}/s{suffix}", log, watcher.seen(), len(paced))
        phase.target_rps, phase.cpu_percent, phase.cpu_wait_percent = rate, cpu, meter.waited
        phase.workers = processes
        phase.stages = stage_latencies(
            log.acked, _billed_at(bootstrap, before, after), watcher.seen()
        )
        result.phases.append(phase)
        _report(phase)

    if burst:
        progress(f"burst: {len(burst):,} webhooks, {options.burst_concurrency} in flight ...")
        meter = TreeCpuMeter({**pids, "bench": os.getpid()}, trees=("postgres", "worker"))
        watcher.expect(w.payment_id for w in burst)
        meter.start()
        log = await _closed(url, burst, options.burst_concurrency)
        await wait_for_rows(watcher, worker, _drain_timeout_s(len(burst)))
        cpu = meter.stop()
        name = f"burst c={options.burst_concurrency}{suffix}"
        phase = _phase(name, log, watcher.seen(), len(burst))
        phase.concurrency, phase.cpu_percent = options.burst_concurrency, cpu
        phase.cpu_wait_percent, phase.workers = meter.waited, processes
        result.phases.append(phase)
        _report(phase)


def _report(phase: PhaseResult) -> None:
    progress(
        f"{phase.name}: {phase.rows_per_s:.0f} rows/s, end to end p50 "
        f"{phase.e2e.p50_ms:.0f} ms, p99 {phase.e2e.p99_ms:.0f} ms, {phase.missing} missing, "
        f"{phase.errors} errors"
    )


def _billed_at(
    bootstrap: str, before: dict[tuple[str, int], int], after: dict[tuple[str, int], int]
) -> dict[str, float]:
    """paymentId -> when the worker wrote its billing record (monotonic seconds)."""
    codec = make_codec(None)
    offset = time.time() - time.monotonic()
    billed: dict[str, float] = {}
    for message in read_records(bootstrap, before, after):
        value = message.value()
        if value is None:
            continue
        record = codec.decode(value, topic=BILLING_TOPIC).record
        payment_id = record.get("paymentId")
        if isinstance(payment_id, str):
            billed[payment_id] = message.timestamp()[1] / 1000 - offset
    return billed


def new_run_id() -> str:
    return uuid.uuid4().hex[:8]
