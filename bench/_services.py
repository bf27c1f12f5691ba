"""What the end-to-end benches run on: Kafka and PostgreSQL (given or embedded), the
real ``sluice ingress`` and ``sluice worker`` as child processes, offsets, the thread
that watches PostgreSQL for rows, and the options they share. Each child runs in a
session of its own and is stopped by its pid: nothing outlives the run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from bench._load import CpuMeter, Log, Request, send_items
from bench._report import Phase, progress
from connectors import kafka_reader
from devstack.ports import LOOPBACK, free_port
from devstack.process import ChildProcess
from schemas.codec import make_codec
from tests.fixtures.worker import start_group_at_end

ROOT = Path(__file__).resolve().parent.parent
POLL_EVERY_S = 0.02
POLL_BATCH = 1000
_TIMEOUT_S = 30.0
_SLUICE = (sys.executable, "-m", "sluice")
Offsets = dict[tuple[str, int], int]


@dataclass(frozen=True)
class Service:
    url: str  # Kafka: the bootstrap servers
    description: str
    pid: int | None = None  # embedded


def _given(name: str) -> str | None:
    return os.environ.get(name, "").strip() or None


@contextlib.contextmanager
def kafka(workdir: Path) -> Iterator[Service]:
    """``KAFKA_BOOTSTRAP_SERVERS`` if set, or an embedded broker; catalog topics created."""
    from connectors.kafka_admin import create_topics
    from devstack.kafka import KAFKA_VERSION, KafkaBroker, find_java
    from schemas.catalog import all_topics

    if bootstrap := _given("KAFKA_BOOTSTRAP_SERVERS"):
        create_topics(bootstrap, all_topics())
        yield Service(bootstrap, f"external cluster at {bootstrap}")
        return
    progress("starting an embedded Kafka broker ...")
    with KafkaBroker(workdir / "kafka") as broker:
        create_topics(broker.bootstrap_servers, all_topics())
        java = subprocess.run(
            [find_java(), "-version"], capture_output=True, text=True, check=False
        )
        about = f"embedded, KRaft, 1 broker, Java {[*java.stderr.split(chr(34)), '?', '?'][1]}"
        about = f"Apache Kafka {KAFKA_VERSION} ({about}, heap {broker.heap})"
        yield Service(broker.bootstrap_servers, about, broker.pid)
        progress("stopping Kafka ...")


@contextlib.contextmanager
def postgres(workdir: Path) -> Iterator[Service]:
    """``DATABASE_URL`` if set, or a fresh database on an embedded server with production's
    durability (fsync on); migrations applied."""
    from connectors.migrate import apply_migrations
    from devstack.postgres import PostgresServer

    if url := _given("DATABASE_URL"):
        apply_migrations(url)
        yield Service(url, "external database (DATABASE_URL)")
        return
    progress("starting an embedded PostgreSQL ...")
    with PostgresServer(workdir / "postgres") as server:
        url = server.create_database("sluice_bench")
        apply_migrations(url)
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        version = str(row[0]).split()[0] if row else "?"
        yield Service(url, f"PostgreSQL {version} (embedded, durable commits)", server.pid)
        progress("stopping PostgreSQL ...")


@contextlib.contextmanager
def search(wanted: bool, workdir: Path) -> Iterator[Service | None]:
    """An embedded Elasticsearch for the block, if ``wanted``."""
    if not wanted:
        yield None
        return
    from devstack.elasticsearch import ELASTICSEARCH_VERSION, ElasticsearchServer

    progress("starting an embedded Elasticsearch ...")
    with ElasticsearchServer(workdir / "elasticsearch") as server:
        about = f"Elasticsearch {ELASTICSEARCH_VERSION} (embedded, heap {server.heap})"
        yield Service(server.url, about, server.pid)
        progress("stopping Elasticsearch ...")


@dataclass
class Stack:
    """Where one run happens: its Kafka, its PostgreSQL, its id and work directory, and the
    consumer groups it made (removed at the end from an external cluster)."""

    kafka: Service
    postgres: Service
    run_id: str
    workdir: Path
    groups: list[str] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return self.kafka.url

    def pids(self) -> dict[str, int | None]:
        return {"kafka": self.kafka.pid, "postgres": self.postgres.pid}

    def clean_up(self) -> None:
        """Remove the run's topics and groups from an external cluster (an embedded one
        goes away with its directory). Best effort."""
        if self.kafka.pid is not None:
            return
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        names = [t for t in admin.list_topics(timeout=_TIMEOUT_S).topics if self.run_id in t]
        futures = list(admin.delete_topics(names).values()) if names else []
        futures += admin.delete_consumer_groups(sorted(set(self.groups))).values()
        for future in futures:
            with contextlib.suppress(KafkaException):
                future.result(timeout=_TIMEOUT_S)


@contextlib.contextmanager
def stack(name: str) -> Iterator[Stack]:
    """Kafka and PostgreSQL (use a throwaway cluster), embedded in a temporary directory
    unless given."""
    with (
        tempfile.TemporaryDirectory(prefix=f"sluice-bench-{name}-") as tmp,
        kafka(Path(tmp)) as broker,
        postgres(Path(tmp)) as database,
    ):
        at = Stack(broker, database, uuid.uuid4().hex[:8], Path(tmp))
        try:
            yield at
        finally:
            at.clean_up()


def child_env(settings: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without Sluice's own settings, plus ``settings``."""
    own = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "SCHEMA_REGISTRY_URL")
    prefixes = ("SLUICE_", "PARTNER_", "INGRESS_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes) and k not in own}
    return env | dict(settings)


@contextlib.contextmanager
def running(
    name: str, argv: Sequence[str], env: Mapping[str, str], workdir: Path
) -> Iterator[ChildProcess]:
    """``argv`` for the block, its output in ``workdir/<name>.log``."""
    log, pid_file = workdir / f"{name}.log", workdir / f"{name}.pid"
    child = ChildProcess.spawn(name, argv, log_path=log, pid_file=pid_file, cwd=ROOT, env=env)
    try:
        yield child
    finally:
        progress(f"stopping the {name} ...")
        child.stop(timeout=60.0)


@dataclass(frozen=True)
class Ingress:
    child: ChildProcess
    ports: tuple[int, int]  # public, internal

    def url(self, path: str, *, internal: bool = False) -> str:
        return f"http://{LOOPBACK}:{self.ports[internal]}{path}"


@contextlib.contextmanager
def ingress_process(
    at: Stack, stripe_secret: str, env: Mapping[str, str] | None = None
) -> Iterator[Ingress]:
    """``sluice ingress`` for the block, on two free loopback ports, once it is ready."""
    ports = (free_port(None), free_port(None))
    settings = {
        "KAFKA_BOOTSTRAP_SERVERS": at.bootstrap,
        "STRIPE_WEBHOOK_SECRET": stripe_secret,
        "RAZORPAY_WEBHOOK_SECRET": "rzp_bench_only",  # unused; the ingress needs one
        "INGRESS_PUBLIC_HOST": LOOPBACK,
        "INGRESS_PUBLIC_PORT": str(ports[0]),
        "INGRESS_INTERNAL_HOST": LOOPBACK,
        "INGRESS_INTERNAL_PORT": str(ports[1]),
        **(env or {}),
    }
    progress("starting `sluice ingress` ...")
    with running("ingress", [*_SLUICE, "ingress"], child_env(settings), at.workdir) as child:
        ingress = Ingress(child, ports)

        def ready() -> bool:  # an error answer raises: not ready yet
            with urllib.request.urlopen(ingress.url("/readyz", internal=True), timeout=2) as r:  # noqa: S310
                return bool(r.status == 200)

        child.wait_ready(ready, timeout=60.0, interval=0.2)
        yield ingress


@contextlib.contextmanager
def worker_process(
    at: Stack,
    app_id: str,
    *,
    processes: int = 1,
    start_at: Offsets | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[ChildProcess]:
    """``sluice worker`` for the block, its group (``app_id``) committed at the end of
    every topic it reads (the tests' ``start_group_at_end``: it handles what is sent
    from now on), then at ``start_at`` (the start of an input produced before it)."""
    settings = {
        "KAFKA_BOOTSTRAP_SERVERS": at.bootstrap,
        "DATABASE_URL": at.postgres.url,
        "SLUICE_APP_ID": app_id,
        "SLUICE_STATE_DIR": str(at.workdir / f"{app_id}-state"),
    }
    settings = child_env(settings | dict(env or {}))
    at.groups.append(app_id)
    start_group_at_end(settings)
    commit_group(at.bootstrap, app_id, start_at or {})
    argv = [*_SLUICE, "worker", *(["--processes", str(processes)] if processes > 1 else [])]
    progress(f"starting `{' '.join(argv[2:])}` ...")
    with running(app_id, argv, settings, at.workdir) as child:
        yield child


@dataclass(frozen=True)
class Patience:
    """How long to wait for a child's progress: the first count within ``start_s``, no
    stall longer than ``stall_s``, the whole within ``start_s`` plus ``min_rate``'s time."""

    start_s: float
    stall_s: float
    min_rate: float


def follow(
    child: ChildProcess,
    count: Callable[[], int],
    expected: int,
    patience: Patience,
    on_poll: Callable[[int], object],
    every_s: float,
) -> None:
    """Poll ``count()`` every ``every_s`` (``on_poll`` gets each count) until it reaches
    ``expected``; raises ``RuntimeError`` if the child exits or runs out of patience."""
    began = last_change = time.monotonic()
    last = 0
    while True:
        done, now = count(), time.monotonic()
        on_poll(done)
        if done >= expected:
            return
        if done != last:
            last_change, last = now, done
        if not child.is_running():
            raise RuntimeError(f"it exited after {done:,} of {expected:,}")
        if now - last_change > (patience.stall_s if done else patience.start_s):
            raise RuntimeError(
                f"no progress past {done:,} of {expected:,} in {now - last_change:.0f} s"
            )
        if now > began + patience.start_s + expected / patience.min_rate:
            raise RuntimeError(f"only {done:,} of {expected:,} after {now - began:.0f} s")
        time.sleep(every_s)


# -- offsets --------------------------------------------------------------------------------


def end_offsets(bootstrap: str, topics: Iterable[str]) -> Offsets:
    """The current end (high watermark) of every partition of ``topics``."""
    return {
        (topic, partition): end
        for topic in topics
        for partition, end in kafka_reader.end_offsets(
            bootstrap, topic, timeout_s=_TIMEOUT_S
        ).items()
    }


def commit_group(bootstrap: str, group: str, offsets: Offsets) -> None:
    """Commit ``offsets`` for ``group`` before any member joins, so it starts there."""
    if offsets:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
        try:
            wanted = [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())]
            consumer.commit(offsets=wanted, asynchronous=False)
        finally:
            consumer.close()


def read_records(bootstrap: str, start: Offsets, end: Offsets) -> list[Message]:
    """Every record between ``start`` (default 0) and ``end`` on ``end``'s partitions."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "sluice-bench-reader"})
    wanted = {tp: high for tp, high in end.items() if high > start.get(tp, 0)}
    consumer.assign([TopicPartition(t, p, start.get((t, p), 0)) for (t, p) in wanted])
    records: list[Message] = []
    deadline = time.monotonic() + 60
    try:
        while wanted:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read back {sorted(wanted)} in 60 s")
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                where, offset = (message.topic() or "", message.partition() or 0), message.offset()
                if message.error() is None and where in wanted and offset is not None:
                    records.append(message)
                    if offset + 1 >= wanted[where]:
                        del wanted[where]
        return records
    finally:
        consumer.close()


def written_at(
    bootstrap: str, topic: str, before: Offsets, key: Callable[[Mapping[str, Any]], str | None]
) -> dict[str, float]:
    """``key(record)`` -> when its record was written (its Kafka timestamp, as monotonic
    seconds), for ``topic``'s records written since ``before``."""
    codec, offset = make_codec(None), time.time() - time.monotonic()
    start = {tp: o for tp, o in before.items() if tp[0] == topic}
    found: dict[str, float] = {}
    for message in read_records(bootstrap, start, end_offsets(bootstrap, [topic])):
        value = message.value()
        if value is not None and (k := key(codec.decode(value, topic=topic).record)):
            found.setdefault(k, message.timestamp()[1] / 1000 - offset)
    return found


class Committed:
    """Records some topics hold (``ends``), or a group committed past ``start`` (at-least-
    once: committed means processed), each asked of the broker on one consumer."""

    def __init__(self, bootstrap: str, group: str = "sluice-bench") -> None:
        config = {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        self._consumer = Consumer(config)

    def ends(self, topic: str) -> int:
        marks = kafka_reader.high_watermarks(self._consumer, topic, timeout_s=_TIMEOUT_S)
        return sum(marks.values())

    def past(self, start: Offsets) -> int:
        asked = [TopicPartition(t, p) for (t, p) in sorted(start)]
        committed = self._consumer.committed(asked, timeout=_TIMEOUT_S)  # does not join the group
        return sum(
            max(0, tp.offset - start[(tp.topic, tp.partition)])
            for tp in committed
            if tp.offset >= 0
        )

    def close(self) -> None:
        self._consumer.close()


def create_topic(bootstrap: str, name: str, partitions: int, config: Mapping[str, str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # owns the request: keep it
    topic = NewTopic(name, num_partitions=partitions, replication_factor=1, config=dict(config))
    admin.create_topics([topic])[name].result(timeout=_TIMEOUT_S)


# -- rows -----------------------------------------------------------------------------------


class RowWatcher(threading.Thread):
    """Polls PostgreSQL for the keys it was given, one query for every kind of row it
    waits for (one list parameter per kind; rows ``(kind, key)``), and records when each
    is first seen: ``time.monotonic()`` at the start of the query that returned it.

    Its own connection on its own thread, so queries never stall the load generator. Each
    poll asks for the ``POLL_BATCH`` longest-outstanding keys (rows appear roughly in send
    order) and waits at least twice as long as its query took, so a backlog does not turn
    the watcher into load on PostgreSQL.
    """

    def __init__(self, dsn: str, query: str, kinds: Sequence[str]) -> None:
        super().__init__(name="row-watcher", daemon=True)
        self._dsn, self._query, self._lock = dsn, query, threading.Lock()
        self._pending: dict[str, dict[str, None]] = {kind: {} for kind in kinds}  # ordered sets
        self._seen: dict[str, dict[str, float]] = {kind: {} for kind in kinds}
        self._stop_event = threading.Event()
        self.error: BaseException | None = None

    def expect(self, keys: Iterable[str], *, forget: bool = False) -> None:
        """Wait for these (``forget``: stop waiting for them: their requests failed)."""
        keys = list(keys)
        with self._lock:
            for pending, key in itertools.product(self._pending.values(), keys):
                pending.pop(key, None) if forget else pending.setdefault(key)

    def seen(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {kind: dict(at) for kind, at in self._seen.items()}

    def outstanding(self) -> int:
        with self._lock:
            return sum(len(pending) for pending in self._pending.values())

    def run(self) -> None:
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                while not self._stop_event.is_set():
                    with self._lock:
                        wanted = {
                            k: list(itertools.islice(p, POLL_BATCH))
                            for k, p in self._pending.items()
                        }
                    took = 0.0
                    if any(wanted.values()):
                        at = time.monotonic()
                        rows = conn.execute(self._query, wanted).fetchall()
                        took = time.monotonic() - at
                        with self._lock:
                            for kind, key in rows:
                                self._seen[kind].setdefault(key, at)
                                self._pending[kind].pop(key, None)
                    self._stop_event.wait(max(POLL_EVERY_S, 2 * took))
        except BaseException as exc:  # reported by the waiting side
            self.error = exc

    def drive(self, drive: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``drive()`` on an event loop of its own while this thread polls."""
        self.start()
        try:
            asyncio.run(drive())
        finally:
            self._stop_event.set()
            self.join(timeout=10)

    async def phase(
        self,
        name: str,
        items: Sequence[tuple[str, Sequence[Request]]],
        rate: float,
        c: int,
        worker: ChildProcess,
        meter: CpuMeter,
        timeout_s: float,
    ) -> tuple[Log, Phase]:
        """Send ``items`` (paced at ``rate``, else ``c`` in flight), wait up to ``timeout_s``
        for the rows of those answered, and measure it all, CPU included."""
        keys = [key for key, _ in items]
        self.expect(keys)
        meter.start()
        log = await send_items(items, rate, c)
        self.expect((key for key in keys if key not in log.acked), forget=True)
        await self.wait(worker, timeout_s)
        phase = log.phase(name, keys, self.seen())
        phase.cpu_percent, phase.cpu_wait_percent = meter.stop(), meter.waited
        phase.target_rps, phase.concurrency = rate or None, None if rate else c
        return log, phase

    async def wait(self, worker: ChildProcess, timeout_s: float) -> None:
        """Until every row was seen or ``timeout_s`` passed (the report counts what is
        missing). Raises if the worker exited or polling failed."""
        deadline = time.monotonic() + timeout_s
        while self.outstanding():
            if self.error is not None or not worker.is_running():
                raise RuntimeError(
                    f"polling failed ({self.error}) or the worker exited:\n{worker.log_tail()}"
                )
            if time.monotonic() > deadline:
                progress(f"{self.outstanding()} rows still missing after {timeout_s:g} s")
                return
            await asyncio.sleep(0.05)


# -- options --------------------------------------------------------------------------------


def bench_parser(
    prog: str, description: str, *, rate: float | None = 0, duration: float = 0, burst: int = 0
) -> argparse.ArgumentParser:
    """The options every bench has (``--json``); with ``duration``, those of the paced run
    and the burst, with these defaults (``rate`` ``None``: derived from the run)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add = parser.add_argument
    add("--json", action="store_true", help="print the report as JSON")
    if duration:
        add(
            "--rate",
            type=float,
            default=rate,
            help=f"paced requests/s ({rate or 'half the burst accepted/s'})",
        )
        add("--duration", type=float, default=duration, help=f"paced seconds ({duration:g})")
        add("--warmup", type=float, default=3.0, help="paced warm-up seconds (3)")
        add("--burst", type=int, default=burst, help=f"requests in the burst ({burst}; 0: none)")
        add(
            "--burst-concurrency", type=int, default=32, help="requests in flight in the burst (32)"
        )
    return parser


def check_paced(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if min(args.rate or 1.0, args.duration, args.burst_concurrency) <= 0:
        parser.error("--rate, --duration and --burst-concurrency must be positive")
    if min(args.warmup, args.burst) < 0:
        parser.error("--warmup and --burst must not be negative")
