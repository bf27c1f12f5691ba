"""The one load driver: paced (open loop) and closed-loop senders, what they saw, and
the CPU meter every bench reads its processes with. Requests are built before a run, so
during it the generator only sends bytes and reads answers. Times are monotonic seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bench._report import Phase, distribution, match_latencies

Item = TypeVar("Item")
#: Sends one item; the float is when it was scheduled.
Send = Callable[[aiohttp.ClientSession, Item, float], Coroutine[Any, Any, None]]

_CLK_TCK = os.sysconf("SC_CLK_TCK")


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: Mapping[str, str], status: int
) -> bool:
    """POST and read the whole answer; True if it is ``status``."""
    try:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            return response.status == status
    except (aiohttp.ClientError, TimeoutError):
        return False


def _session(connections: int = 512) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))


async def send_paced(items: Iterable[Item], rate: float, send: Send[Item]) -> None:
    """Open loop: item ``i`` is sent at ``start + i / rate`` whether or not earlier ones
    were answered, so a stalled server shows in the latencies (no coordinated omission)."""
    async with _session() as session:
        in_flight: set[asyncio.Task[None]] = set()
        began = time.monotonic()
        for index, item in enumerate(items):
            scheduled = began + index / rate
            if (delay := scheduled - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(send(session, item, scheduled))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)


async def send_closed(
    items: Iterable[Item], concurrency: int, send: Send[Item], *, until: float = math.inf
) -> None:
    """Closed loop: ``concurrency`` senders, each sending its next item as soon as its last
    was answered, until the items run out or ``until`` (monotonic) passes."""
    shared = iter(items)  # each item is sent once

    async def sender(session: aiohttp.ClientSession) -> None:
        for item in shared:
            if (now := time.monotonic()) >= until:
                return
            await send(session, item, now)

    async with _session(concurrency) as session:
        await asyncio.gather(*(sender(session) for _ in range(concurrency)))


@dataclass
class Log:
    """What the load generator saw, by request key: when the request (the first, for two
    per key) was ``scheduled``; when the first of two was answered (``created``: orders'
    ``order.created``); when the measured one was ``sent`` and its 2xx read (``acked``);
    failed requests (an error status or no answer) by kind (``refused``)."""

    scheduled: dict[str, float] = field(default_factory=dict)
    created: dict[str, float] = field(default_factory=dict)
    sent: dict[str, float] = field(default_factory=dict)
    acked: dict[str, float] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)

    def phase(
        self, name: str, keys: Iterable[str], seen: Mapping[str, Mapping[str, float]] | None = None
    ) -> Phase:
        """The phase's numbers from this log and when each key was first seen, per kind
        of row (the first kind counts as done)."""
        seen = seen or {}
        first_at = min(self.scheduled.values(), default=math.nan)
        last_acked = max(self.acked.values(), default=math.nan)
        done = next(iter(seen.values()), {})
        finished = [done[k] for k in self.acked if k in done]
        last_done = max(finished, default=math.nan)
        latency = {kind: match_latencies(self.acked, at) for kind, at in seen.items()}
        created = [self.created[k] - self.scheduled[k] for k in self.created]
        http = {"order.created": distribution(created)} if self.created else {}
        http["webhook"] = distribution([self.acked[k] - self.sent[k] for k in self.acked])
        return Phase(
            name=name,
            sent=len(list(keys)),
            errors=sum(self.refused.values()),
            accepted_per_s=per_s(len(self.acked), last_acked - first_at),
            http=http,
            done_per_s=per_s(len(finished), last_done - first_at),
            drain_s=last_done - last_acked if finished else math.nan,
            latency={kind: distribution(m.latencies_s) for kind, m in latency.items()},
            missing={kind: m.missing for kind, m in latency.items()},
            early=sum(m.early for m in latency.values()),
            refused=dict(self.refused),
        )


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request of an item; ``kind`` names it in the log's refusals."""

    kind: str
    url: str
    body: bytes
    headers: Mapping[str, str]
    status: int


async def send_items(items: Sequence[tuple[str, Sequence[Request]]], rate: float, c: int) -> Log:
    """Each item's requests in turn, the next once the last was answered ``status``; paced
    at ``rate`` (latency from each item's schedule), else ``c`` in a closed loop. ``sent``
    is when the item's last request went out (its schedule, for a single request)."""
    log = Log()

    async def one(
        session: aiohttp.ClientSession, item: tuple[str, Sequence[Request]], at: float
    ) -> None:
        key, requests = item
        log.scheduled[key] = sent = at
        for index, request in enumerate(requests):
            if not await post(session, request.url, request.body, request.headers, request.status):
                log.refused[request.kind] += 1
                return
            if index < len(requests) - 1:
                sent = log.created[key] = time.monotonic()
        log.sent[key], log.acked[key] = sent, time.monotonic()

    await (send_paced(items, rate, one) if rate else send_closed(items, c, one))
    return log


def per_s(count: int, seconds: float) -> float:
    return count / seconds if count and seconds > 0 else math.nan


@contextlib.contextmanager
def gc_frozen() -> Iterator[None]:
    """Keep the cyclic GC off everything that exists now (the pre-built requests) while
    the block runs, so its pauses do not land in the latencies."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# -- CPU ------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()  # the name (field 2) may hold spaces


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` (all its threads); ``None`` if it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / _CLK_TCK


def tree_cpu_seconds(root: int) -> float | None:
    """CPU time of ``root``, its live descendants and the children it reaped
    (PostgreSQL's backends are children of the postmaster); ``None`` if it is gone."""
    if (fields := _stat_fields(root)) is None:
        return None
    ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    parents = {
        int(entry.name): int(stat[1])
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and (stat := _stat_fields(int(entry.name))) is not None
    }
    family, grew = {root}, True
    while grew:
        before = len(family)
        family |= {pid for pid, parent in parents.items() if parent in family}
        grew = len(family) > before
    for pid in family - {root}:
        ticks += round((cpu_seconds(pid) or 0.0) * _CLK_TCK)
    return ticks / _CLK_TCK


def run_queue_seconds(pid: int) -> float | None:
    """Time the threads of ``pid`` were runnable but waiting for a CPU (schedstat): it
    tells a process starved of CPU from one waiting for I/O."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    total = 0
    for task in tasks:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def machine_times() -> tuple[float, float, float] | None:
    """(busy, irq + softirq, steal) CPU seconds of all cores since boot (``/proc/stat``)."""
    try:
        first = Path("/proc/stat").read_bytes().split(b"\n", 1)[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy / _CLK_TCK, (irq + softirq) / _CLK_TCK, steal / _CLK_TCK


@dataclass(frozen=True)
class CpuSample:
    at: float  # time.time(), comparable with Kafka record timestamps
    cpu: dict[str, float]
    waits: dict[str, float]
    machine: tuple[float, float, float] | None


class CpuMeter:
    """CPU use between two samples, in % of one core, per named process (those named in
    ``trees`` with their descendants), plus ``irq`` (mostly loopback networking),
    ``steal`` (the hypervisor ran someone else) and ``other`` (every other process: a
    noisy neighbour). ``waited``: % of the time each process had a thread runnable but
    without a CPU (summed over threads, so it can exceed 100)."""

    def __init__(self, pids: Mapping[str, int | None], trees: Iterable[str] = ()) -> None:
        self._pids = {name: pid for name, pid in pids.items() if pid is not None}
        self._trees = set(trees)
        self._began: CpuSample | None = None
        self.waited: dict[str, float] = {}

    def sample(self) -> CpuSample:
        cpu: dict[str, float] = {}
        waits: dict[str, float] = {}
        for name, pid in self._pids.items():
            tree = name in self._trees
            if (used := tree_cpu_seconds(pid) if tree else cpu_seconds(pid)) is not None:
                cpu[name] = used
            if not tree and (waited := run_queue_seconds(pid)) is not None:
                waits[name] = waited
        return CpuSample(time.time(), cpu, waits, machine_times())

    def start(self) -> None:
        self._began = self.sample()

    def stop(self) -> dict[str, float]:
        assert self._began is not None, "start() first"
        usage, self.waited = between(self._began, self.sample())
        return usage


def between(a: CpuSample, b: CpuSample) -> tuple[dict[str, float], dict[str, float]]:
    """(% of one core per process plus irq, steal, other; % waiting per process)."""
    wall = b.at - a.at
    if wall <= 0:
        return {}, {}

    def percent(x: Mapping[str, float], y: Mapping[str, float]) -> dict[str, float]:
        return {k: round(100 * (y[k] - x[k]) / wall, 1) for k in x if k in y}

    usage = percent(a.cpu, b.cpu)
    if a.machine is not None and b.machine is not None:
        busy, irq, steal = (100 * (y - x) / wall for x, y in zip(a.machine, b.machine, strict=True))
        usage["irq"], usage["steal"] = round(irq, 1), round(steal, 1)
        usage["other"] = round(max(0.0, busy - sum(usage.values())), 1)
    return usage, percent(a.waits, b.waits)
