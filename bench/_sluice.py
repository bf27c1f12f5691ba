"""``sluice ingress`` and ``sluice worker`` as the end-to-end benches run and drive them.

Both as child processes, as deployed, on loopback ports of their own. The worker's
consumer group is committed at the current end of every topic it reads before it starts,
so it handles the bench's own input only (not what an earlier run left on the broker).
The load shapes (paced open loop, closed-loop burst) and the bounded wait for the rows
are the same for every end-to-end bench; what one item sends is the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import aiohttp

from bench._pipeline_infra import ROOT, Child, child_env, commit_group, end_offsets, progress
from devstack.ports import LOOPBACK, free_port
from streams.topology import WIRING

__all__ = [
    "Ingress",
    "Send",
    "SluiceProcesses",
    "WorkerOptionMissing",
    "client_session",
    "ingress_process",
    "run_watched",
    "send_closed",
    "send_paced",
    "sluice_processes",
    "wait_for_rows",
    "worker_process",
    "worker_takes_processes",
]

RAZORPAY_SECRET: Final = "rzp_bench_only"  # unused by the benches; the ingress needs one
_READY_TIMEOUT_S = 60.0
_CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=30)
_MAX_CONNECTIONS = 512
_SLUICE: Final = (sys.executable, "-m", "sluice")

Item = TypeVar("Item")
#: Sends one item; the float is when it was scheduled (``time.monotonic``).
Send = Callable[[aiohttp.ClientSession, Item, float], Coroutine[Any, Any, None]]


class RowPoller(Protocol):
    """A thread polling Postgres for the rows the bench waits for."""

    @property
    def error(self) -> BaseException | None: ...

    def outstanding(self) -> int: ...


class RowWatcherThread(RowPoller, Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Ingress:
    """A started ``sluice ingress`` and where it listens."""

    child: Child
    public_port: int
    internal_port: int

    def public_url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.public_port}{path}"

    def internal_url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.internal_port}{path}"

    @property
    def ready_url(self) -> str:
        return self.internal_url("/readyz")

    async def wait_ready(self) -> None:
        """Until the ingress answers its readiness probe; raises if it exits or takes
        too long."""
        deadline = time.monotonic() + _READY_TIMEOUT_S
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                if not self.child.alive():
                    raise RuntimeError(f"the ingress exited:\n{self.child.log_tail()}")
                try:
                    async with session.get(self.ready_url) as response:
                        if response.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the ingress was not ready in {_READY_TIMEOUT_S:g} s")
                await asyncio.sleep(0.2)


@dataclass(frozen=True)
class SluiceProcesses:
    """The ingress and the worker, as both end-to-end benches drive them."""

    ingress: Child
    worker: Child
    public_port: int
    internal_port: int

    @property
    def _ingress(self) -> Ingress:
        return Ingress(self.ingress, self.public_port, self.internal_port)

    def public_url(self, path: str) -> str:
        return self._ingress.public_url(path)

    def internal_url(self, path: str) -> str:
        return self._ingress.internal_url(path)

    def pids(self) -> dict[str, int | None]:
        return {"ingress": self.ingress.pid, "worker": self.worker.pid}

    async def wait_ready(self) -> None:
        await self._ingress.wait_ready()


@contextlib.contextmanager
def sluice_processes(
    *,
    bootstrap: str,
    database_url: str,
    app_id: str,
    workdir: Path,
    stripe_secret: str,
    ingress_env: Mapping[str, str] | None = None,
    worker_env: Mapping[str, str] | None = None,
) -> Iterator[SluiceProcesses]:
    """Start the ingress and the worker for the block; stop both after it.

    :param app_id: the worker's ``SLUICE_APP_ID`` (its consumer group and state names).
    :param ingress_env: settings on top of the broker, the webhook secrets and the ports.
    :param worker_env: settings on top of the broker, the database and ``app_id``.
    """
    with (
        ingress_process(
            bootstrap=bootstrap, workdir=workdir, stripe_secret=stripe_secret, env=ingress_env
        ) as ingress,
        worker_process(
            bootstrap=bootstrap,
            database_url=database_url,
            app_id=app_id,
            workdir=workdir,
            env=worker_env,
        ) as worker,
    ):
        yield SluiceProcesses(ingress.child, worker, ingress.public_port, ingress.internal_port)


@contextlib.contextmanager
def ingress_process(
    *,
    bootstrap: str,
    workdir: Path,
    stripe_secret: str,
    env: Mapping[str, str] | None = None,
) -> Iterator[Ingress]:
    """``sluice ingress`` alone for the block, on two free loopback ports.

    :param env: settings on top of the broker, the webhook secrets and the ports.
    """
    public_port, internal_port = free_port(None), free_port(None)
    settings = child_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STRIPE_WEBHOOK_SECRET": stripe_secret,
            "RAZORPAY_WEBHOOK_SECRET": RAZORPAY_SECRET,
            "INGRESS_PUBLIC_HOST": LOOPBACK,
            "INGRESS_PUBLIC_PORT": str(public_port),
            "INGRESS_INTERNAL_HOST": LOOPBACK,
            "INGRESS_INTERNAL_PORT": str(internal_port),
            **(env or {}),
        }
    )
    progress("starting `sluice ingress` ...")
    child = Child("ingress", [*_SLUICE, "ingress"], settings, workdir)
    try:
        yield Ingress(child, public_port, internal_port)
    finally:
        child.stop()


@contextlib.contextmanager
def worker_process(
    *,
    bootstrap: str,
    database_url: str,
    app_id: str,
    workdir: Path,
    processes: int = 1,
    start_at: Mapping[tuple[str, int], int] | None = None,
    env: Mapping[str, str] | None = None,
    name: str = "worker",
) -> Iterator[Child]:
    """``sluice worker`` for the block (``--processes`` when more than one).

    Its consumer group is committed at the current end of every topic it reads, so it
    handles what is sent from now on only; ``start_at`` moves some partitions' start
    (to the beginning of an input produced before it starts, say).

    :param app_id: the worker's ``SLUICE_APP_ID`` (its consumer group and state names).
    :param env: settings on top of the broker, the database and ``app_id``.
    :raises WorkerOptionMissing: ``processes`` > 1 and this ``sluice worker`` has no
        ``--processes`` yet.
    """
    argv = [*_SLUICE, "worker"]
    if processes > 1:
        if not worker_takes_processes():
            raise WorkerOptionMissing("`sluice worker --processes` is not available yet")
        argv += ["--processes", str(processes)]
    worker_topics = sorted({topic for wire in WIRING for topic in wire.reads})
    commit_group(bootstrap, app_id, {**end_offsets(bootstrap, worker_topics), **(start_at or {})})
    settings = child_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "DATABASE_URL": database_url,
            "SLUICE_APP_ID": app_id,
            "SLUICE_STATE_DIR": str(workdir / f"{name}-state"),
            **(env or {}),
        }
    )
    progress(f"starting `{' '.join(argv[2:])}` ...")
    child = Child(name, argv, settings, workdir)
    try:
        yield child
    finally:
        progress(f"stopping the {name} ...")
        child.stop()


class WorkerOptionMissing(RuntimeError):
    """The worker cannot be started as asked: this version has no such option."""


@functools.cache
def worker_takes_processes() -> bool:
    """Whether this checkout's ``sluice worker`` has ``--processes`` (asked once, from
    its help text: the option is being added while these benches already run)."""
    done = subprocess.run(
        [*_SLUICE, "worker", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=child_env({}),
        check=False,
    )
    return "--processes" in done.stdout


def client_session() -> aiohttp.ClientSession:
    """The load generator's session: many connections, a bounded wait per request."""
    connector = aiohttp.TCPConnector(limit=_MAX_CONNECTIONS)
    return aiohttp.ClientSession(connector=connector, timeout=_CLIENT_TIMEOUT)


async def send_paced(items: Sequence[Item], rate: float, send: Send[Item]) -> None:
    """Open loop: item ``i`` is sent at ``start + i / rate``, whether or not earlier ones
    were answered."""
    async with client_session() as session:
        in_flight: set[asyncio.Task[None]] = set()
        began = time.monotonic()
        for index, item in enumerate(items):
            scheduled = began + index / rate
            delay = scheduled - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(send(session, item, scheduled))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)


async def send_closed(items: Sequence[Item], concurrency: int, send: Send[Item]) -> None:
    """Closed loop: ``concurrency`` senders, each sending its next item at once."""
    queue = iter(items)

    async def sender(session: aiohttp.ClientSession) -> None:
        for item in queue:  # shared iterator: each item is sent once
            await send(session, item, time.monotonic())

    async with client_session() as session:
        await asyncio.gather(*(sender(session) for _ in range(concurrency)))


def run_watched(watcher: RowWatcherThread, drive: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``drive()`` on an event loop of its own while ``watcher`` polls Postgres on
    its thread; the watcher is stopped however the drive ends."""
    watcher.start()
    try:
        asyncio.run(drive())
    finally:
        watcher.stop()


async def wait_for_rows(poller: RowPoller, worker: Child, timeout_s: float) -> None:
    """Until ``poller`` has seen every row, or ``timeout_s`` passed (then says how many
    are missing and returns: the report counts them).

    :raises RuntimeError: the worker exited, or polling failed.
    """
    deadline = time.monotonic() + timeout_s
    while poller.outstanding():
        if poller.error is not None:
            raise RuntimeError(f"polling Postgres failed: {poller.error}")
        if not worker.alive():
            raise RuntimeError(f"the worker exited:\n{worker.log_tail()}")
        if time.monotonic() > deadline:
            progress(f"{poller.outstanding()} rows still missing after {timeout_s:g} s")
            return
        await asyncio.sleep(0.05)
