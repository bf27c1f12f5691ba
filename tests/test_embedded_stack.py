"""The embedded stack against itself: real Kafka, PostgreSQL and Redis servers.

Uses the session services from ``tests/fixtures/services.py``; tests that stop or kill
one always bring it back before they end, because later tests share it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from psycopg import sql

import devstack as embedded
from devstack import (
    EmbeddedService,
    EmbeddedStack,
    KafkaBroker,
    PostgresServer,
    RedisServer,
    ServiceStartError,
    free_port,
)
from devstack.postgres import bundled_postgres_bindir

pytestmark = pytest.mark.integration


# --- helpers -------------------------------------------------------------------------


def _new_topic(broker: KafkaBroker, partitions: int = 1) -> str:
    """Create a uniquely named topic (auto-create is off) and return its name."""
    name = f"test.embedded.{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[
        name
    ].result(timeout=15)
    return name


def _produce(bootstrap: str, topic: str, values: list[bytes], **extra: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", **extra})
    errors: list[KafkaError | None] = []
    for value in values:
        producer.produce(topic, value, on_delivery=lambda err, _msg: errors.append(err))
    assert producer.flush(15) == 0
    assert errors == [None] * len(values)


def _consume_all(bootstrap: str, topic: str, expected: int, **extra: str) -> list[bytes]:
    """Read ``expected`` records from the start of ``topic`` with a fresh consumer group."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            **extra,
        }
    )
    consumer.subscribe([topic])
    values: list[bytes] = []
    try:
        for _ in range(60):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                values.append(message.value() or b"")
            if len(values) >= expected:
                break
    finally:
        consumer.close()
    return values


@pytest.fixture
def occupied_port() -> Iterator[int]:
    """A port with a listening socket on 127.0.0.1, held for the test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# --- Kafka ---------------------------------------------------------------------------


def test_confluent_kafka_round_trip(kafka_broker: KafkaBroker) -> None:
    topic = _new_topic(kafka_broker)
    _produce(kafka_broker.bootstrap_servers, topic, [b"one", b"two", b"three"])
    got = _consume_all(kafka_broker.bootstrap_servers, topic, expected=3)
    assert got == [b"one", b"two", b"three"]


async def test_aiokafka_round_trip_with_consumer_group(kafka_broker: KafkaBroker) -> None:
    # faust speaks Kafka through aiokafka, including consumer groups and offset commits.
    topic = _new_topic(kafka_broker)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap_servers, acks="all")
    await producer.start()
    try:
        for i in range(3):
            await producer.send_and_wait(topic, f"m{i}".encode(), key=b"k")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_broker.bootstrap_servers,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        values: list[bytes] = []
        for _ in range(20):
            batches = await consumer.getmany(timeout_ms=500)
            values += [record.value for records in batches.values() for record in records]
            if len(values) >= 3:
                break
        await consumer.commit()
    finally:
        await consumer.stop()
    assert values == [b"m0", b"m1", b"m2"]


def test_transactions_work_on_a_single_broker(kafka_broker: KafkaBroker) -> None:
    topic = _new_topic(kafka_broker)
    producer = Producer(
        {
            "bootstrap.servers": kafka_broker.bootstrap_servers,
            "transactional.id": f"test-{uuid.uuid4().hex[:8]}",
        }
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b"committed")
    producer.commit_transaction(30)
    got = _consume_all(
        kafka_broker.bootstrap_servers, topic, expected=1, **{"isolation.level": "read_committed"}
    )
    assert got == [b"committed"]


def test_kafka_keeps_topic_data_across_stop_and_kill(kafka_broker: KafkaBroker) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    topic = _new_topic(kafka_broker)
    _produce(bootstrap, topic, [b"before-stop"])
    try:
        kafka_broker.stop()
        assert not kafka_broker.is_running()
        kafka_broker.start()
        assert kafka_broker.bootstrap_servers == bootstrap
        _produce(bootstrap, topic, [b"before-kill"])

        pgid = kafka_broker.pid
        assert pgid is not None
        kafka_broker.kill()
        assert not _group_alive(pgid)
        kafka_broker.start()
        assert kafka_broker.bootstrap_servers == bootstrap
    finally:
        kafka_broker.start()  # a no-op unless a step above failed half-way
    assert _consume_all(bootstrap, topic, expected=2) == [b"before-stop", b"before-kill"]


# --- PostgreSQL ----------------------------------------------------------------------


def test_postgres_keeps_data_across_stop_and_kill(postgres_server: PostgresServer) -> None:
    url = postgres_server.url
    table = sql.Identifier(f"embedded_{uuid.uuid4().hex[:8]}")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (v text)").format(table))
        conn.execute(sql.SQL("INSERT INTO {} VALUES ('kept')").format(table))
    idle = psycopg.connect(url)  # an open client must not hold up the shutdown
    try:
        postgres_server.stop()
        assert not postgres_server.is_running()
        postgres_server.start()
        assert postgres_server.url == url

        pgid = postgres_server.pid
        assert pgid is not None
        postgres_server.kill()
        assert not _group_alive(pgid), "backends must die with the postmaster"
        postgres_server.start()
    finally:
        idle.close()
        postgres_server.start()
    with psycopg.connect(url) as conn:
        assert conn.execute(sql.SQL("SELECT v FROM {}").format(table)).fetchall() == [("kept",)]


def test_postgres_create_database_is_idempotent(postgres_server: PostgresServer) -> None:
    name = f"embedded_{uuid.uuid4().hex[:8]}"
    url = postgres_server.create_database(name)
    assert postgres_server.create_database(name) == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (name,)


def test_postgres_runs_from_the_pgserver_wheel(tmp_path: Path) -> None:
    # Machines without a system PostgreSQL fall back to these binaries.
    bindir = bundled_postgres_bindir()
    if bindir is None:
        pytest.skip("pgserver is not installed")
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    expected = out.split("(PostgreSQL) ")[1].split()[0]  # "postgres (PostgreSQL) 16.2"
    with (
        PostgresServer(tmp_path, fast=True, bindir=bindir) as server,
        psycopg.connect(server.url) as conn,
    ):
        assert conn.execute("SHOW server_version").fetchone() == (expected,)


# --- Redis ---------------------------------------------------------------------------


def test_redis_ping_set_get_and_restart(redis_server: RedisServer) -> None:
    key = f"embedded:{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.ping()
        client.set(key, b"value")
        assert client.get(key) == b"value"
        redis_server.stop()
        redis_server.start()
        assert client.get(key) == b"value"  # append-only file, redis-py reconnects
    finally:
        redis_server.start()
        client.close()


# --- ports, failures, stack ----------------------------------------------------------


def test_free_port_prefers_the_given_port_and_falls_back(occupied_port: int) -> None:
    assert free_port(occupied_port) != occupied_port
    assert free_port(0) > 0
    vacant = free_port(None)
    assert free_port(vacant) == vacant


def test_service_falls_back_to_a_free_port(tmp_path: Path, occupied_port: int) -> None:
    with RedisServer(tmp_path, port=occupied_port) as server:
        assert server.port != occupied_port
        with redis.Redis.from_url(server.url) as client:
            assert client.ping()
    assert not server.is_running()


class _Scripted(EmbeddedService):
    """A stand-in service running a Python one-liner: exercises only the process plumbing."""

    name = "scripted"

    def __init__(self, data_dir: Path, script: str, *, ready_line: str | None = None) -> None:
        super().__init__(data_dir)
        self._script = script
        self._ready_line = ready_line

    @property
    def endpoint(self) -> str:
        return f"scripted://127.0.0.1:{self.port}"

    def _prepare(self) -> None:
        pass

    def _command(self) -> list[str]:
        return [sys.executable, "-c", self._script]

    def _is_ready(self) -> bool:
        return self._ready_line is not None and self._ready_line in self.log_path.read_text()


def test_start_failure_quotes_the_log_tail(tmp_path: Path) -> None:
    service = _Scripted(tmp_path, "print('fatal: bad setting', flush=True); raise SystemExit(3)")
    with pytest.raises(ServiceStartError, match="exited with status 3") as caught:
        service.start(timeout=30)
    assert "fatal: bad setting" in str(caught.value)
    assert not service.is_running()


def test_start_timeout_kills_the_child(tmp_path: Path) -> None:
    service = _Scripted(tmp_path, "import os, time; print(os.getpid(), flush=True); time.sleep(60)")
    with pytest.raises(ServiceStartError, match="not ready after"):
        service.start(timeout=0.5)
    pid = int((tmp_path / "scripted.log").read_text().splitlines()[-1])
    assert not _group_alive(pid)
    assert not (tmp_path / "scripted.pid").exists()


def test_stop_kills_a_child_that_ignores_the_stop_signal(tmp_path: Path) -> None:
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('armed', flush=True); time.sleep(60)"
    )
    service = _Scripted(tmp_path, script, ready_line="armed\n")
    service.start()
    pgid = service.pid
    assert pgid is not None
    service.stop(timeout=0.5)
    assert not service.is_running()
    assert not _group_alive(pgid)


def test_stack_reuses_settings_from_env_and_starts_the_rest(
    tmp_path: Path, kafka_broker: KafkaBroker, postgres_server: PostgresServer
) -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
        "DATABASE_URL": postgres_server.url,
        "REDIS_URL": "",  # empty counts as unset
    }
    with EmbeddedStack(tmp_path, env=env) as stack:
        settings = stack.start()  # again: same answer, nothing new started
        assert settings["KAFKA_BOOTSTRAP_SERVERS"] == kafka_broker.bootstrap_servers
        assert settings["DATABASE_URL"] == postgres_server.url
        assert list(stack.started) == ["REDIS_URL"]
        with redis.Redis.from_url(settings["REDIS_URL"]) as client:
            assert client.ping()
        started = stack.started["REDIS_URL"]
    assert not started.is_running()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["redis"]


def test_package_exports_resolve() -> None:
    for name in embedded.__all__:
        assert getattr(embedded, name) is not None
