"""The load generator: pre-built signed Stripe requests, closed-loop and paced runs.

Everything that costs CPU per request on the client side (building the event, JSON,
signing) happens before a run starts, so during a run the generator only sends bytes and
reads answers. Latencies are wall-clock from ``time.perf_counter``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import aiohttp

from tests.payloads import random_id
from tests.payloads.stripe import signed_stripe_request, stripe_event

__all__ = [
    "EVENT_TYPES",
    "CpuMeter",
    "PhaseResult",
    "PreparedRequest",
    "closed_loop",
    "cpu_seconds",
    "gc_frozen",
    "machine_busy_seconds",
    "paced",
    "percentile",
    "prepare_stripe_requests",
]

#: Rotated through, so bodies have realistic sizes (about 1.5 to 4 KB, 3 KB on average).
EVENT_TYPES: tuple[str, ...] = (
    "payment_intent.succeeded",
    "charge.refunded",
    "invoice.paid",
    "customer.subscription.updated",
    "checkout.session.completed",
)

_CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=30)
_PACED_MAX_CONNECTIONS = 512


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    body: bytes
    headers: Mapping[str, str]


def prepare_stripe_requests(
    count: int,
    secret: str,
    *,
    timestamp: int | None = None,
    event_types: Sequence[str] = EVENT_TYPES,
) -> list[PreparedRequest]:
    """``count`` signed Stripe webhook requests, each with a unique event id.

    One event per type is built with ``stripe_event``; each request is that event with a
    fresh ``evt_...`` id, serialised and signed by ``signed_stripe_request`` at
    ``timestamp`` (default: now; the ingress accepts it for five minutes).
    """
    if count < 0:
        raise ValueError("count must not be negative")
    if not event_types:
        raise ValueError("no event types")
    signed_at = int(time.time()) if timestamp is None else timestamp
    templates = [stripe_event(event_type) for event_type in event_types]
    requests: list[PreparedRequest] = []
    for template in itertools.islice(itertools.cycle(templates), count):
        event = {**template, "id": random_id("evt")}
        body, headers = signed_stripe_request(event, secret, signed_at)
        requests.append(PreparedRequest(body, headers))
    return requests


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 < q <= 100) of ascending ``sorted_values``, nearest rank.

    Nearest rank returns an observed value: p99 of 1000 samples is the 990th smallest.
    :raises ValueError: no values, or ``q`` out of range.
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile must be in (0, 100], not {q}")
    rank = math.ceil(q / 100 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` (all its threads), from ``/proc``.

    ``None`` when the process is gone or there is no ``/proc``.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; the fields after it do not.
    fields = stat[stat.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLK_TCK


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (``/proc/stat``), or ``None``."""
    try:
        with open("/proc/stat", "rb") as fh:
            first = fh.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / _CLK_TCK


class CpuMeter:
    """CPU used between ``start()`` and ``stop()``, in % of one core, per named process,
    plus ``other``: everything else the machine ran meanwhile (a noisy neighbour shows
    up there)."""

    def __init__(self, pids: Mapping[str, int | None]) -> None:
        self._pids = {name: pid for name, pid in pids.items() if pid is not None}
        self._began: dict[str, float] = {}
        self._machine_began: float | None = None
        self._wall = 0.0

    def start(self) -> None:
        self._wall = time.perf_counter()
        self._machine_began = machine_busy_seconds()
        self._began = {
            name: used for name, pid in self._pids.items() if (used := cpu_seconds(pid)) is not None
        }

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._wall
        if wall <= 0:
            return {}
        usage: dict[str, float] = {}
        for name, began in self._began.items():
            used = cpu_seconds(self._pids[name])
            if used is not None:
                usage[name] = round(100 * (used - began) / wall, 1)
        machine = machine_busy_seconds()
        if machine is not None and self._machine_began is not None:
            busy = 100 * (machine - self._machine_began) / wall
            usage["other"] = round(max(0.0, busy - sum(usage.values())), 1)
        return usage


@dataclass
class PhaseResult:
    """One measured run against one route.

    ``requests`` and the latencies count answers that arrived within the measured window
    (after the warm-up); ``errors`` counts non-2xx answers and failed requests over the
    whole run, warm-up included. ``reused`` counts requests sent a second time because
    the pre-built pool ran out (the ingress does not deduplicate, so it costs the same).
    """

    target: str
    mode: Literal["closed", "paced"]
    concurrency: int | None
    target_rps: float | None
    duration_s: float
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    reused: int = 0
    cpu_percent: dict[str, float] = field(default_factory=dict)


def _summarise(
    target: str,
    mode: Literal["closed", "paced"],
    *,
    concurrency: int | None,
    target_rps: float | None,
    duration_s: float,
    latencies_s: list[float],
    errors: int,
    reused: int,
) -> PhaseResult:
    latencies_s.sort()
    have = bool(latencies_s)
    return PhaseResult(
        target=target,
        mode=mode,
        concurrency=concurrency,
        target_rps=target_rps,
        duration_s=duration_s,
        requests=len(latencies_s),
        errors=errors,
        rps=len(latencies_s) / duration_s,
        p50_ms=1000 * percentile(latencies_s, 50) if have else math.nan,
        p99_ms=1000 * percentile(latencies_s, 99) if have else math.nan,
        max_ms=1000 * latencies_s[-1] if have else math.nan,
        reused=reused,
    )


class _Pool:
    """Hands out pre-built requests in order, wrapping around (and counting) if needed."""

    def __init__(self, requests: Sequence[PreparedRequest]) -> None:
        if not requests:
            raise ValueError("empty request pool")
        self._requests = requests
        self._counter: Iterator[int] = itertools.count()
        self.reused = 0

    def next(self) -> PreparedRequest:
        index = next(self._counter)
        if index >= len(self._requests):
            self.reused += 1
        return self._requests[index % len(self._requests)]


async def _post(session: aiohttp.ClientSession, url: str, request: PreparedRequest) -> bool:
    """POST one request and read the whole answer; True for a 2xx."""
    try:
        async with session.post(url, data=request.body, headers=request.headers) as response:
            await response.read()
            return 200 <= response.status < 300
    except (aiohttp.ClientError, TimeoutError):
        return False


def _session(connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=_CLIENT_TIMEOUT)


async def closed_loop(
    target: str,
    url: str,
    requests: Sequence[PreparedRequest],
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    cpu: CpuMeter | None = None,
) -> PhaseResult:
    """``concurrency`` workers, each sending its next request as soon as the last answers.

    Runs ``warmup_s + duration_s`` seconds and then stops by itself; measures the last
    ``duration_s``.
    """
    if concurrency < 1 or duration_s <= 0 or warmup_s < 0:
        raise ValueError("need concurrency >= 1, duration > 0 and warm-up >= 0")
    pool = _Pool(requests)
    latencies: list[float] = []
    errors = 0
    loop_began = time.perf_counter()
    measure_from = loop_began + warmup_s
    stop_at = measure_from + duration_s

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while (sent := time.perf_counter()) < stop_at:
            ok = await _post(session, url, pool.next())
            answered = time.perf_counter()
            if not ok:
                errors += 1
            elif measure_from <= answered < stop_at:
                latencies.append(answered - sent)

    async def start_meter() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        if cpu is not None:
            cpu.start()

    async with _session(concurrency) as session:
        meter = asyncio.create_task(start_meter())
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        await meter
    usage = cpu.stop() if cpu is not None else {}
    result = _summarise(
        target,
        "closed",
        concurrency=concurrency,
        target_rps=None,
        duration_s=duration_s,
        latencies_s=latencies,
        errors=errors,
        reused=pool.reused,
    )
    result.cpu_percent = usage
    return result


async def paced(
    target: str,
    url: str,
    requests: Sequence[PreparedRequest],
    *,
    rate: float,
    warmup_s: float,
    duration_s: float,
    cpu: CpuMeter | None = None,
) -> PhaseResult:
    """Open loop: one request every ``1/rate`` seconds, whether or not earlier ones answered.

    Latency runs from the request's *scheduled* send time, so a stalled server or a
    client falling behind shows up in it (no coordinated omission). Sends exactly
    ``rate * (warmup_s + duration_s)`` requests and then waits for the last answers.
    """
    if rate <= 0 or duration_s <= 0 or warmup_s < 0:
        raise ValueError("need rate > 0, duration > 0 and warm-up >= 0")
    pool = _Pool(requests)
    latencies: list[float] = []
    errors = 0
    total = round(rate * (warmup_s + duration_s))
    warmup_count = round(rate * warmup_s)
    interval = 1.0 / rate

    async def one(session: aiohttp.ClientSession, scheduled: float, measured: bool) -> None:
        nonlocal errors
        ok = await _post(session, url, pool.next())
        if not ok:
            errors += 1
        elif measured:
            latencies.append(time.perf_counter() - scheduled)

    async with _session(_PACED_MAX_CONNECTIONS) as session:
        in_flight: set[asyncio.Task[None]] = set()
        began = time.perf_counter()
        for index in range(total):
            scheduled = began + index * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if index == warmup_count and cpu is not None:
                cpu.start()
            task = asyncio.create_task(one(session, scheduled, index >= warmup_count))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)
    usage = cpu.stop() if cpu is not None else {}
    result = _summarise(
        target,
        "paced",
        concurrency=None,
        target_rps=rate,
        duration_s=duration_s,
        latencies_s=latencies,
        errors=errors,
        reused=pool.reused,
    )
    result.cpu_percent = usage
    return result


@contextlib.contextmanager
def gc_frozen() -> Iterator[None]:
    """Keep the cyclic garbage collector off everything that exists now (the pre-built
    requests) while the block runs, so its pauses do not land in the latencies."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
