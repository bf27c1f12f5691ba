"""What ``bench.pipeline`` runs on: Kafka, PostgreSQL, child processes, offsets.

Kafka and PostgreSQL are the given ones (``KAFKA_BOOTSTRAP_SERVERS``, ``DATABASE_URL``)
or embedded ones in the run's temporary directory. Every child process (ingress, worker,
the agents under test) is started in a session of its own and stopped by its pid, with
SIGKILL to its process group if it does not stop in time; nothing outlives the run.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TextIO

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from bench._load import cpu_seconds
from bench.ingress import _java_version
from devstack.process import ChildProcess

__all__ = [
    "ROOT",
    "Child",
    "GroupProgress",
    "Kafka",
    "OutputCounter",
    "Postgres",
    "TreeCpuMeter",
    "child_env",
    "commit_group",
    "create_topic",
    "delete_groups",
    "delete_topics",
    "end_offsets",
    "kafka",
    "machine_info",
    "machine_times",
    "postgres",
    "progress",
    "read_records",
    "run_queue_seconds",
    "running",
    "topics_containing",
    "total",
    "tree_cpu_seconds",
]

ROOT = Path(__file__).resolve().parent.parent
_ADMIN_TIMEOUT_S = 30.0
_LEADER_SETTLING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError._UNKNOWN_PARTITION,
    }
)


def progress(message: str, stream: TextIO = sys.stderr) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=stream, flush=True)


def machine_info() -> dict[str, str]:
    """What the numbers were measured on."""
    import confluent_kafka

    return {
        "cpus": str(os.cpu_count()),
        "cpu_model": _proc_value("/proc/cpuinfo", "model name") or platform.processor() or "?",
        "memory": _memory(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "librdkafka": confluent_kafka.libversion()[0],
        "confluent-kafka": _version("confluent-kafka"),
        "faust-streaming": _version("faust-streaming"),
        "aiokafka": _version("aiokafka"),
        "quixstreams": _version("quixstreams"),
        "rocksdict": _version("rocksdict"),
    }


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _proc_value(path: str, key: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    return None


def _memory() -> str:
    total_kb = _proc_value("/proc/meminfo", "MemTotal")
    with contextlib.suppress(ValueError, AttributeError, IndexError):
        return f"{int(str(total_kb).split()[0]) / 1024 / 1024:.1f} GiB"
    return "unknown"


# -- CPU -----------------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; the fields after it do not.
    return stat[stat.rindex(b")") + 2 :].split()


def tree_cpu_seconds(root: int) -> float | None:
    """CPU time of ``root``, its live descendants and the children it has reaped
    (PostgreSQL's backends are children of the postmaster). ``None`` if it is gone."""
    fields = _stat_fields(root)
    if fields is None:
        return None
    ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat_fields(int(entry.name))) is not None:
            parents[int(entry.name)] = int(stat[1])
    family = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in family and pid not in family:
                family.add(pid)
                grew = True
    for pid in family - {root}:
        stat = _stat_fields(pid)
        if stat is not None:
            ticks += int(stat[11]) + int(stat[12])
    return ticks / _CLK_TCK


def run_queue_seconds(pid: int) -> float | None:
    """Time the threads of ``pid`` spent runnable but waiting for a CPU (summed over its
    live threads; ``/proc/<pid>/task/*/schedstat``). ``None`` if unavailable.

    Next to the CPU time it tells a process that is slow because it is starved of CPU
    (long waits) from one that is slow because it waits for I/O (neither).
    """
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def machine_times() -> tuple[float, float, float] | None:
    """(busy, irq + softirq, steal) CPU seconds of all cores since boot (``/proc/stat``)."""
    try:
        with open("/proc/stat", "rb") as fh:
            first = fh.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy / _CLK_TCK, (irq + softirq) / _CLK_TCK, steal / _CLK_TCK


class TreeCpuMeter:
    """Like ``bench._load.CpuMeter`` (% of one core per named process between ``start``
    and ``stop``), but the processes named in ``trees`` count with their descendants, and
    the rest of the machine's busy time is split into ``irq`` (interrupts and softirqs:
    mostly loopback networking), ``steal`` (the hypervisor ran someone else) and
    ``other`` (every other process: a noisy neighbour)."""

    def __init__(self, pids: Mapping[str, int | None], trees: Iterable[str] = ()) -> None:
        self._pids = {name: pid for name, pid in pids.items() if pid is not None}
        self._trees = set(trees)
        self._began: dict[str, float] = {}
        self._waits_began: dict[str, float] = {}
        self.waited: dict[str, float] = {}
        """After ``stop``: % of the time each (non-tree) process had a thread waiting
        for a CPU (summed over threads, so it can exceed 100)."""
        self._machine: tuple[float, float, float] | None = None
        self._wall = 0.0

    def _read(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for name, pid in self._pids.items():
            used = tree_cpu_seconds(pid) if name in self._trees else cpu_seconds(pid)
            if used is not None:
                found[name] = used
        return found

    def _read_waits(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for name, pid in self._pids.items():
            waited = None if name in self._trees else run_queue_seconds(pid)
            if waited is not None:
                found[name] = waited
        return found

    def start(self) -> None:
        self._wall = time.monotonic()
        self._machine = machine_times()
        self._began = self._read()
        self._waits_began = self._read_waits()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._wall
        if wall <= 0:
            return {}
        now = self._read()
        usage = {
            name: round(100 * (now[name] - began) / wall, 1)
            for name, began in self._began.items()
            if name in now
        }
        waits = self._read_waits()
        self.waited = {
            name: round(100 * (waits[name] - began) / wall, 1)
            for name, began in self._waits_began.items()
            if name in waits
        }
        machine = machine_times()
        if machine is not None and self._machine is not None:
            busy, irq, steal = (
                100 * (b - a) / wall for a, b in zip(self._machine, machine, strict=True)
            )
            usage["irq"], usage["steal"] = round(irq, 1), round(steal, 1)
            usage["other"] = round(max(0.0, busy - sum(usage.values())), 1)
        return usage


# -- services ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Kafka:
    bootstrap: str
    description: str
    pid: int | None
    embedded: bool


@contextlib.contextmanager
def kafka(bootstrap: str | None, workdir: Path) -> Iterator[Kafka]:
    """The given cluster, or an embedded broker for the block; catalog topics created."""
    from connectors.kafka_admin import create_topics
    from devstack.kafka import KAFKA_VERSION, KafkaBroker
    from schemas.catalog import all_topics

    if bootstrap:
        create_topics(bootstrap, all_topics())
        yield Kafka(bootstrap, f"external cluster at {bootstrap}", None, embedded=False)
        return
    progress("starting an embedded Kafka broker ...")
    with KafkaBroker(workdir / "kafka") as broker:
        create_topics(broker.bootstrap_servers, all_topics())
        description = (
            f"Apache Kafka {KAFKA_VERSION} (embedded, KRaft, 1 broker, "
            f"Java {_java_version()}, heap {broker.heap})"
        )
        yield Kafka(broker.bootstrap_servers, description, broker.pid, embedded=True)
        progress("stopping Kafka ...")


@dataclass(frozen=True)
class Postgres:
    url: str
    description: str
    pid: int | None


@contextlib.contextmanager
def postgres(database_url: str | None, workdir: Path, *, fast: bool = False) -> Iterator[Postgres]:
    """The given database, or a fresh one on an embedded server; migrations applied.

    The embedded server keeps its default durability (fsync and synchronous commit on),
    like a production database, so the projection's commits cost what they would there;
    ``fast`` turns durability off instead (as the tests run it).
    """
    from connectors.migrate import apply_migrations
    from devstack.postgres import PostgresServer

    if database_url:
        apply_migrations(database_url)
        yield Postgres(database_url, "external database (DATABASE_URL)", None)
        return
    progress("starting an embedded PostgreSQL ...")
    with PostgresServer(workdir / "postgres", fast=fast) as server:
        url = server.create_database("sluice_bench")
        apply_migrations(url)
        version = _postgres_version(url)
        mode = "durability off: no fsync" if fast else "durable commits"
        yield Postgres(url, f"PostgreSQL {version} (embedded, {mode})", server.pid)
        progress("stopping PostgreSQL ...")


def _postgres_version(url: str) -> str:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]).split()[0] if row else "unknown"


# -- child processes ---------------------------------------------------------------------


def child_env(settings: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without Sluice's own settings, plus ``settings``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("SLUICE_", "PARTNER_", "INGRESS_"))
        and name not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "SCHEMA_REGISTRY_URL")
    }
    env.update(settings)
    return env


class Child:
    """One child process of the bench (ingress, worker, agent under test)."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], workdir: Path):
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._process = ChildProcess.spawn(
            name,
            argv,
            log_path=self.log_path,
            pid_file=workdir / f"{name}.pid",
            cwd=ROOT,
            env=env,
        )

    @property
    def pid(self) -> int:
        return self._process.pid

    def alive(self) -> bool:
        return self._process.is_running()

    def log_tail(self, lines: int = 30) -> str:
        return self._process.log_tail(lines)

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM, then SIGKILL to its process group after ``timeout_s``; reaps it."""
        self._process.stop(signal.SIGTERM, timeout_s)


@contextlib.contextmanager
def running(
    name: str, argv: Sequence[str], env: Mapping[str, str], workdir: Path
) -> Iterator[Child]:
    child = Child(name, argv, env, workdir)
    try:
        yield child
    finally:
        child.stop()


# -- topics and offsets ------------------------------------------------------------------


def _admin(bootstrap: str) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap})


def create_topic(
    bootstrap: str, name: str, partitions: int, config: Mapping[str, str] | None = None
) -> None:
    admin = _admin(bootstrap)  # referenced until the result is in: it owns the request
    topic = NewTopic(
        name, num_partitions=partitions, replication_factor=1, config=dict(config or {})
    )
    futures = admin.create_topics([topic], operation_timeout=_ADMIN_TIMEOUT_S)
    futures[name].result(timeout=_ADMIN_TIMEOUT_S)


def delete_topics(bootstrap: str, names: Iterable[str]) -> None:
    """Delete ``names`` (best effort: a topic already gone is fine)."""
    wanted = sorted(set(names))
    if not wanted:
        return
    admin = _admin(bootstrap)
    futures = admin.delete_topics(wanted, operation_timeout=_ADMIN_TIMEOUT_S)
    for future in futures.values():
        with contextlib.suppress(KafkaException):
            future.result(timeout=_ADMIN_TIMEOUT_S)


def topics_containing(bootstrap: str, text: str) -> list[str]:
    metadata = _admin(bootstrap).list_topics(timeout=_ADMIN_TIMEOUT_S)
    return sorted(name for name in metadata.topics if text in name)


def delete_groups(bootstrap: str, groups: Iterable[str]) -> None:
    wanted = sorted(set(groups))
    if not wanted:
        return
    admin = _admin(bootstrap)
    futures = admin.delete_consumer_groups(wanted, request_timeout=_ADMIN_TIMEOUT_S)
    for future in futures.values():
        with contextlib.suppress(KafkaException):
            future.result(timeout=_ADMIN_TIMEOUT_S)


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=_ADMIN_TIMEOUT_S).topics[topic]
    if metadata.error is not None:
        raise KafkaException(metadata.error)
    return sorted(metadata.partitions)


def end_offsets(bootstrap: str, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """The current end (high watermark) of every partition of ``topics``."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "sluice-bench-probe"})
    try:
        ends: dict[tuple[str, int], int] = {}
        for topic in topics:
            for partition in _partitions(consumer, topic):
                ends[(topic, partition)] = _high_watermark(consumer, topic, partition)
        return ends
    finally:
        consumer.close()


def _high_watermark(consumer: Consumer, topic: str, partition: int) -> int:
    """The partition's end; asked again while the broker has no settled leader for it (a
    topic created moments ago may still be electing one). librdkafka does not flag
    NOT_LEADER_FOR_PARTITION as retriable here, so those codes are named."""
    deadline = time.monotonic() + _ADMIN_TIMEOUT_S
    while True:
        try:
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=_ADMIN_TIMEOUT_S, cached=False
            )
            return int(high)
        except KafkaException as exc:
            error = exc.args[0]
            settling = error.retriable() or error.code() in _LEADER_SETTLING
            if not settling or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def total(offsets: Mapping[tuple[str, int], int]) -> int:
    return sum(offsets.values())


def commit_group(bootstrap: str, group: str, offsets: Mapping[tuple[str, int], int]) -> None:
    """Commit ``offsets`` for consumer group ``group`` before any member joins it, so its
    consumers start exactly there (and not at the topics' history)."""
    if not offsets:
        return
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items())],
            asynchronous=False,
        )
    finally:
        consumer.close()


def read_records(
    bootstrap: str,
    start: Mapping[tuple[str, int], int],
    end: Mapping[tuple[str, int], int],
    *,
    timeout_s: float = 60.0,
) -> list[Message]:
    """Every record between ``start`` (default: 0) and ``end`` on ``end``'s partitions."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "sluice-bench-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    wanted = {tp: high for tp, high in end.items() if high > start.get(tp, 0)}
    consumer.assign([TopicPartition(t, p, start.get((t, p), 0)) for (t, p) in wanted])
    records: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while wanted:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read back {sorted(wanted)} in {timeout_s:g} s")
            for message in consumer.consume(num_messages=1000, timeout=0.5):
                if message.error() is not None:
                    continue
                topic, partition, offset = message.topic(), message.partition(), message.offset()
                if topic is None or partition is None or offset is None:
                    continue
                if (topic, partition) in wanted:
                    records.append(message)
                    if offset + 1 >= wanted[(topic, partition)]:
                        del wanted[(topic, partition)]
        return records
    finally:
        consumer.close()


class OutputCounter:
    """Counts the records on some topics by polling their high watermarks."""

    def __init__(self, bootstrap: str, topics: Sequence[str]) -> None:
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "sluice-bench-counter"}
        )
        self._partitions = [
            TopicPartition(topic, partition)
            for topic in topics
            for partition in _partitions(self._consumer, topic)
        ]

    def count(self) -> int:
        return sum(
            self._consumer.get_watermark_offsets(tp, timeout=_ADMIN_TIMEOUT_S, cached=False)[1]
            for tp in self._partitions
        )

    def close(self) -> None:
        self._consumer.close()


class GroupProgress:
    """How many records of some partitions a consumer group has committed past ``start``
    (at-least-once: a committed offset means the records before it were processed)."""

    def __init__(self, bootstrap: str, group: str, start: Mapping[tuple[str, int], int]) -> None:
        # Asking a group for its committed offsets does not join it: the worker keeps
        # every partition.
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
        )
        self._start = dict(start)
        self._partitions = [TopicPartition(t, p) for (t, p) in sorted(start)]

    def done(self) -> int:
        committed = self._consumer.committed(self._partitions, timeout=_ADMIN_TIMEOUT_S)
        return sum(
            max(0, tp.offset - self._start[(tp.topic, tp.partition)])
            for tp in committed
            if tp.offset >= 0  # negative: nothing committed yet
        )

    def close(self) -> None:
        self._consumer.close()
