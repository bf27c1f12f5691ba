"""A real Apache Kafka broker (KRaft, single node) for ``sluice dev`` and the tests.

The broker is the stock Apache Kafka, run from its Maven Central jars with the
machine's Java: ``ensure_kafka_jars`` resolves them once into a cache with Maven, and
``KafkaBroker`` formats a storage directory and runs ``kafka.Kafka`` as a child process.

Kafka 3.9 is deliberately not 4.x: Kafka 4 removed the old protocol versions that
aiokafka (and so faust) still speaks.

Fetch the jars ahead of time (a Makefile step, CI cache warm-up)::

    python -m devstack.fetch kafka [--cache-dir DIR]
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # where it is defined; .admin does not export it

from devstack.host import exclusive_lock, read_text, run_maven
from devstack.ports import LOOPBACK, free_port
from devstack.process import EmbeddedService, EmbeddedServiceError, run_logged

__all__ = [
    "KAFKA_VERSION",
    "READY_TOPIC",
    "KafkaBroker",
    "default_cache_dir",
    "ensure_kafka_jars",
    "find_java",
]

KAFKA_VERSION = "3.9.1"
#: Throwaway topic the readiness check produces to. Created once per data dir; the
#: double underscore marks it as infrastructure, like ``__consumer_offsets``.
READY_TOPIC = "__sluice_ready"

_POM = Path(__file__).with_name("kafka-pom.xml")
_MARKER = ".complete"
_FORMAT_TIMEOUT = 120.0
_MIB = 1024 * 1024
_MAX_INITIAL_HEAP = 128 * _MIB

_log = logging.getLogger(__name__)


class _DebugOnly(logging.LoggerAdapter[logging.Logger]):
    """Logs everything at DEBUG, whatever level the caller asked for.

    The readiness probe's clients are expected to fail while the broker warms up
    (connection refused, "coordinator load in progress"). librdkafka reports that at
    WARNING and above, which would look like trouble in every start; the probe's last
    error is quoted in ``ServiceStartError`` when it matters.
    """

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG, msg, *args, **kwargs)


# librdkafka's log lines from the readiness probe go here instead of stderr.
_client_log = _DebugOnly(logging.getLogger(f"{__name__}.client"))


def default_cache_dir() -> Path:
    """``$SLUICE_CACHE_DIR`` if set, else ``~/.cache/sluice``."""
    configured = os.environ.get("SLUICE_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "sluice"


def ensure_kafka_jars(cache_dir: Path | None = None) -> Path:
    """Return ``<cache>/kafka-<version>``, whose ``libs/`` holds the broker's runtime jars.

    Idempotent: a marker file (version + hash of the pom) makes later calls return at
    once. The first call runs Maven and blocks until it is done (seconds with a warm
    ``~/.m2``, a minute or more cold). Safe to call from several processes at once: a
    file lock serialises the fetch. Raises ``EmbeddedServiceError`` when Maven is
    missing or cannot resolve the jars.
    """
    home = (cache_dir or default_cache_dir()) / f"kafka-{KAFKA_VERSION}"
    pom = _POM.read_bytes()
    stamp = f"{KAFKA_VERSION} {hashlib.sha256(pom).hexdigest()}\n"
    if read_text(home / _MARKER) == stamp:
        return home
    home.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(home.parent / f"kafka-{KAFKA_VERSION}.lock"):
        if read_text(home / _MARKER) != stamp:  # another process may have just finished
            _fetch_jars(home, pom)
            (home / _MARKER).write_text(stamp)
    return home


def _fetch_jars(home: Path, pom: bytes) -> None:
    staging = home / "libs.partial"
    # Maven runs on a copy in the cache so it never writes next to the source tree.
    home.joinpath("pom.xml").write_bytes(pom)
    shutil.rmtree(staging, ignore_errors=True)
    _log.info("fetching Kafka %s jars into %s", KAFKA_VERSION, home)
    run_maven(
        [
            "-f",
            str(home / "pom.xml"),
            f"-Dkafka.version={KAFKA_VERSION}",
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ],
        what=f"Kafka {KAFKA_VERSION} jars",
        home=home,
        produced=lambda: any(staging.glob("kafka_2.13-*.jar")),
    )
    # Swap in whole: a broker never sees a half-copied libs/ directory.
    libs = home / "libs"
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)


def find_java() -> str:
    """``$JAVA_HOME/bin/java`` if it exists, else ``java`` on ``PATH``.

    Raises ``EmbeddedServiceError`` when there is no Java.
    """
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    on_path = shutil.which("java")
    if on_path is None:
        raise EmbeddedServiceError("no Java found (set JAVA_HOME or put java on PATH)")
    return on_path


def _initial_heap(heap: str) -> str:
    """A ``-Xms`` no larger than 128 MiB: a dev broker rarely needs more, so start small."""
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", heap)
    if match is None:
        raise ValueError(f"heap must look like 512m or 1g, not {heap!r}")
    scale = {"": 1, "k": 1024, "m": _MIB, "g": 1024 * _MIB}[match.group(2).lower()]
    size = int(match.group(1)) * scale
    return heap if size <= _MAX_INITIAL_HEAP else f"{_MAX_INITIAL_HEAP // _MIB}m"


def _accepts_connections(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _new_cluster_id() -> str:
    # Kafka's Uuid.randomUuid format: URL-safe base64 of 16 random bytes, never
    # starting with "-" (that would read as a command-line flag).
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _properties(values: Mapping[str, str]) -> str:
    # Backslash is the escape character of .properties files.
    escaped = {key: value.replace("\\", "\\\\") for key, value in values.items()}
    return "".join(f"{key}={value}\n" for key, value in escaped.items())


def _log4j_properties(log_file: Path) -> str:
    return _properties(
        {
            "log4j.rootLogger": "INFO, file",
            "log4j.appender.file": "org.apache.log4j.RollingFileAppender",
            "log4j.appender.file.File": str(log_file),
            "log4j.appender.file.MaxFileSize": "20MB",
            "log4j.appender.file.MaxBackupIndex": "2",
            "log4j.appender.file.layout": "org.apache.log4j.PatternLayout",
            "log4j.appender.file.layout.ConversionPattern": "[%d] %p %m (%c)%n",
            # The per-request and state-change loggers are for debugging Kafka itself.
            "log4j.logger.kafka.request.logger": "WARN",
            "log4j.logger.state.change.logger": "WARN",
        }
    )


class KafkaBroker(EmbeddedService):
    """One Apache Kafka broker in KRaft combined mode (broker + controller), node id 1.

    Listens on 127.0.0.1 only: clients on ``bootstrap_servers``, the controller on a
    second free port that clients never see. Single-node settings: replication factor
    and min ISR 1 everywhere (transactions and consumer groups work),
    ``auto.create.topics.enable=false`` (topics come from the catalog),
    ``num.partitions=1``, ``group.initial.rebalance.delay.ms=0``. Storage is formatted
    on the first start only; topics and offsets survive ``stop()``/``start()`` and
    ``kill()``/``start()``.

    Ready means metadata answers, an idempotent produce with ``acks=all`` to
    ``READY_TOPIC`` was acknowledged (a broker serves metadata a moment before it can
    take writes), and the consumer-group coordinator answers.

    The first ``start()`` may fetch the jars (see ``ensure_kafka_jars``). Broker logs go
    to ``<data_dir>/logs/server.log``; JVM output to ``<data_dir>/kafka.log``.
    """

    name = "kafka"
    start_timeout = 90.0  # JVM start on a busy 2-core box; a few seconds normally
    stop_timeout = 30.0
    ready_interval = 0.25

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        heap: str = "512m",
        cache_dir: Path | None = None,
    ) -> None:
        super().__init__(data_dir, port)
        self.heap = heap
        self._initial_heap = _initial_heap(heap)  # validates ``heap`` up front
        self._cache_dir = cache_dir
        self._java: str | None = None
        self._classpath: str | None = None
        self._controller_port: int | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def endpoint(self) -> str:
        return self.bootstrap_servers

    @property
    def config_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def storage_dir(self) -> Path:
        """Kafka's ``log.dirs``: topic data and the KRaft metadata log."""
        return self.data_dir / "kraft"

    @property
    def server_log(self) -> Path:
        return self.data_dir / "logs" / "server.log"

    def _prepare(self) -> None:
        home = ensure_kafka_jars(self._cache_dir)
        self._classpath = str(home / "libs" / "*")  # Java expands the wildcard itself
        self._java = find_java()
        # The controller port is private to this process and, with a static voter set,
        # stored nowhere on disk, so a fresh one per start can never be "taken".
        self._controller_port = free_port(None)
        self.server_log.parent.mkdir(exist_ok=True)
        log4j = self.data_dir / "log4j.properties"
        log4j.write_text(_log4j_properties(self.server_log))
        self.config_path.write_text(self._server_properties())
        if not (self.storage_dir / "meta.properties").is_file():
            self._format_storage()

    def _server_properties(self) -> str:
        controller = f"{LOOPBACK}:{self._controller_port}"
        return _properties(
            {
                "process.roles": "broker,controller",
                "node.id": "1",
                "controller.quorum.voters": f"1@{controller}",
                "listeners": f"PLAINTEXT://{self.bootstrap_servers},CONTROLLER://{controller}",
                "advertised.listeners": f"PLAINTEXT://{self.bootstrap_servers}",
                "controller.listener.names": "CONTROLLER",
                "inter.broker.listener.name": "PLAINTEXT",
                "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "log.dirs": str(self.storage_dir),
                "num.partitions": "1",
                "default.replication.factor": "1",
                "min.insync.replicas": "1",
                "offsets.topic.replication.factor": "1",
                "transaction.state.log.replication.factor": "1",
                "transaction.state.log.min.isr": "1",
                "group.initial.rebalance.delay.ms": "0",
                "auto.create.topics.enable": "false",
                # After kill(), the restarted controller keeps the dead incarnation
                # registered until its lease expires, and the new broker cannot register
                # before that: the 9 s default lease would add 9 s to every crash restart.
                # Heartbeats stay on loopback, so a short lease is safe here.
                "broker.heartbeat.interval.ms": "500",
                "broker.session.timeout.ms": "3000",
            }
        )

    def _jvm_args(self, heap: str, initial_heap: str) -> list[str]:
        assert self._java is not None, "_prepare runs first"
        assert self._classpath is not None, "_prepare runs first"
        return [
            self._java,
            f"-Xmx{heap}",
            f"-Xms{initial_heap}",
            "-XX:+ExitOnOutOfMemoryError",  # die loudly rather than limp along
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration={(self.data_dir / 'log4j.properties').as_uri()}",
            f"-Dkafka.logs.dir={self.server_log.parent}",
            "-cp",
            self._classpath,
        ]

    def _format_storage(self) -> None:
        argv = [
            *self._jvm_args("256m", "64m"),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            _new_cluster_id(),
            "--config",
            str(self.config_path),
        ]
        run_logged(self.name, argv, self.log_path, timeout=_FORMAT_TIMEOUT, cwd=self.data_dir)

    def _command(self) -> list[str]:
        return [
            *self._jvm_args(self.heap, self._initial_heap),
            "kafka.Kafka",
            str(self.config_path),
        ]

    def _extra_logs(self) -> list[Path]:
        return [self.server_log]

    def _is_ready(self) -> bool:
        # A plain TCP connect first: until the port is open, librdkafka would only log
        # "connection refused" over and over. Each later step raises if not ready yet.
        if not _accepts_connections(self.port):
            return False
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers}, logger=_client_log)
        self._ensure_ready_topic(admin)
        self._produce_ready_record()
        self._check_group_coordinator(admin)
        return True

    @staticmethod
    def _ensure_ready_topic(admin: AdminClient) -> None:
        """Metadata answers, and ``READY_TOPIC`` exists (created on a fresh broker)."""
        if READY_TOPIC in admin.list_topics(timeout=2).topics:
            return
        topic = NewTopic(READY_TOPIC, num_partitions=1, replication_factor=1)
        future = admin.create_topics([topic], operation_timeout=5, request_timeout=5)[READY_TOPIC]
        try:
            future.result(timeout=10)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise

    def _produce_ready_record(self) -> None:
        """One idempotent ``acks=all`` produce to ``READY_TOPIC`` is acknowledged.

        Idempotent on purpose: the broker hands out its first block of producer ids
        lazily and answers "coordinator load in progress" meanwhile, which would
        otherwise cost the first real (idempotent) producer a retry of about a second.
        """
        config = {
            "bootstrap.servers": self.bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "message.timeout.ms": 5000,  # librdkafka retries within this while not writable
        }
        producer = Producer(config, logger=_client_log)
        outcome: list[KafkaError | None] = []
        producer.produce(READY_TOPIC, b"ready", on_delivery=lambda err, _msg: outcome.append(err))
        producer.flush(10)
        if outcome != [None]:
            raise KafkaException(outcome[0] if outcome else KafkaError(KafkaError._MSG_TIMED_OUT))

    @staticmethod
    def _check_group_coordinator(admin: AdminClient) -> None:
        """The group coordinator answers, so consumer groups can join at once.

        On a fresh broker the first coordinator lookup creates ``__consumer_offsets``;
        until that is done a consumer's first join stalls for seconds, long enough to
        trip short idle timeouts in tools and tests.
        """
        futures = admin.describe_consumer_groups([READY_TOPIC], request_timeout=5)
        futures[READY_TOPIC].result(timeout=10)
