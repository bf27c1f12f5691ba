"""A real Elasticsearch node for ``sluice dev --with-search`` and the tests.

The node is the stock Elasticsearch, run from the distribution Elastic publishes on
Maven Central for integration tests (``org.elasticsearch.distribution.integ-test-zip``:
the server with the security and transport modules, no bundled JDK, no ML) with the
machine's Java: ``ensure_elasticsearch`` resolves the zip once with Maven and unpacks it
into the same cache as the Kafka jars, and ``ElasticsearchServer`` runs its
``bin/elasticsearch`` as a child process.

Elasticsearch 8.19 still runs on Java 17 (checked: the launcher's Java version check
passes and the node starts on OpenJDK 17.0.15), so the Java that runs Kafka will do.

Elasticsearch refuses to run as root. When we are root (CI containers, this dev box)
the node runs as a dedicated unprivileged system user, exactly as the embedded
PostgreSQL does: its configuration, data, logs and temporary directories are handed
over to that user, and the cached distribution is made reachable (search bit only) but
stays root's and read-only.

Start-up, measured on a 2-core machine (other work running, load about 1.8): 7.1-7.7 s
from ``start()`` to ready, fresh or restarted (the launcher JVM with its Java version
check, then the node JVM). Running the node on the C1 compiler only cut that from
about 9.5 s. Single-node discovery skips the production bootstrap checks, so neither
``vm.max_map_count`` nor the file descriptor limit needs raising: the node only logs
warnings about them.

The integ-test-zip holds the server core only: no ``GET /`` banner (``rest-root``),
no painless scripts, no ``analysis-common`` analyzers, no ingest pipelines, ILM or
data streams. Index, bulk, get, search, mappings and refresh, all Sluice uses, are
core; the production compose stack runs the full distribution.

Fetch the distribution ahead of time (a Makefile step, CI cache warm-up)::

    python -m devstack.fetch elasticsearch [--cache-dir DIR]
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from pathlib import Path

from devstack.host import (
    chown_tree,
    ensure_system_user,
    exclusive_lock,
    make_traversable,
    read_text,
    run_maven,
)
from devstack.kafka import default_cache_dir, find_java
from devstack.ports import LOOPBACK, is_port_free
from devstack.process import EmbeddedService, EmbeddedServiceError

__all__ = [
    "ELASTICSEARCH_VERSION",
    "SYSTEM_USER",
    "ElasticsearchServer",
    "ensure_elasticsearch",
    "find_java_home",
]

ELASTICSEARCH_VERSION = "8.19.7"
#: Unprivileged account the node runs as when we are root.
SYSTEM_USER = "sluice-es"
#: Also the prefix of the node's log files (``logs/<cluster>.log``).
CLUSTER_NAME = "sluice"

_ARTIFACT = (
    f"org.elasticsearch.distribution.integ-test-zip:elasticsearch:{ELASTICSEARCH_VERSION}:zip"
)
_MARKER = ".complete"
_PROBE_TIMEOUT = 2.0
_RELEASE_TIMEOUT = 15.0  # a SIGKILLed 512 MiB JVM is gone in well under a second
# Distribution files copied into each node's own configuration directory. The security
# files the zip also ships are not needed: security is off.
_DISTRIBUTION_CONFIG = ("jvm.options", "log4j2.properties")

_log = logging.getLogger(__name__)


def ensure_elasticsearch(cache_dir: Path | None = None) -> Path:
    """Return ``<cache>/elasticsearch-<version>``, the unpacked distribution.

    Idempotent: a marker file makes later calls return at once. The first call runs
    Maven (seconds with a warm ``~/.m2``, a minute or more cold) and unpacks the zip
    into a temporary directory that is renamed into place only when complete, so a node
    never sees half a distribution. Safe to call from several processes at once: a file
    lock serialises the fetch. Raises ``EmbeddedServiceError`` when Maven is missing or
    cannot resolve the artifact.
    """
    cache = cache_dir or default_cache_dir()
    home = cache / f"elasticsearch-{ELASTICSEARCH_VERSION}"
    stamp = f"{_ARTIFACT}\n"
    if read_text(home / _MARKER) == stamp:
        return home
    cache.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(cache / f"elasticsearch-{ELASTICSEARCH_VERSION}.lock"):
        if read_text(home / _MARKER) != stamp:  # another process may have just finished
            _fetch_distribution(home, stamp)
    return home


def _fetch_distribution(home: Path, stamp: str) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{home.name}.", dir=home.parent))
    try:
        _log.info("fetching Elasticsearch %s into %s", ELASTICSEARCH_VERSION, home)
        archive = staging / f"elasticsearch-{ELASTICSEARCH_VERSION}.zip"
        # Standalone goal, run in an empty directory: no pom.xml, so no project of the
        # caller's can get in the way.
        run_maven(
            ["dependency:copy", f"-Dartifact={_ARTIFACT}", f"-DoutputDirectory={staging}"],
            what=f"Elasticsearch {ELASTICSEARCH_VERSION}",
            home=home,
            produced=archive.is_file,
            cwd=staging,
        )
        unpacked = _unpack(archive, staging / "unpacked")
        (unpacked / _MARKER).write_text(stamp)
        # Swap in whole. A directory without the marker is an interrupted older attempt.
        shutil.rmtree(home, ignore_errors=True)
        unpacked.rename(home)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unpack(archive: Path, target: Path) -> Path:
    """Extract ``archive`` into ``target``, keeping the Unix modes; return its top directory.

    ``zipfile`` drops the modes (``bin/elasticsearch`` would not be executable), so they
    are put back from each entry's external attributes.
    """
    top = target / f"elasticsearch-{ELASTICSEARCH_VERSION}"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(target)  # refuses absolute and ".." member names
        for info in zf.infolist():
            mode = stat.S_IMODE(info.external_attr >> 16)
            if mode:
                (target / info.filename).chmod(mode)
    if not (top / "bin" / "elasticsearch").is_file():
        raise EmbeddedServiceError(f"{archive.name} does not hold {top.name}/bin/elasticsearch")
    return top


def find_java_home() -> Path:
    """The Java installation ``find_java`` picks, as a home directory (``ES_JAVA_HOME``).

    Follows symlinks (``/usr/bin/java`` -> ``/etc/alternatives`` -> the JDK), because
    Elasticsearch wants the directory holding ``bin/java``. Raises
    ``EmbeddedServiceError`` when there is no Java.
    """
    return Path(find_java()).resolve().parent.parent


def _heap_option(heap: str) -> str:
    if re.fullmatch(r"\d+[kKmMgG]?", heap) is None:
        raise ValueError(f"heap must look like 512m or 1g, not {heap!r}")
    return heap


def _jvm_options(heap: str) -> list[str]:
    """What this node adds to the distribution's ``jvm.options``; later options win."""
    return [
        f"-Xms{heap}",
        f"-Xmx{heap}",
        # C1 only: start-up is mostly JIT work competing for the two cores, and a dev or
        # test node never runs long or hot enough for C2 to pay off (7 s instead of 9.5 s).
        "-XX:TieredStopAtLevel=1",
        # The distribution pre-touches the whole heap; untouched pages stay free for the
        # rest of the dev stack. No effect on start-up time measured.
        "-XX:-AlwaysPreTouch",
    ]


def _yaml(values: dict[str, str]) -> str:
    # JSON strings are valid YAML scalars, and quoting keeps "false" a string for
    # Elasticsearch to parse as it likes.
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in values.items())


class ElasticsearchServer(EmbeddedService):
    """One Elasticsearch node (single-node discovery) on 127.0.0.1, security off.

    HTTP on ``port`` (``url``); the transport port is picked by the node itself
    (``transport.port: 0``), it is private to this single node. Settings beyond the
    single-node ones: disk-based shard allocation off (a nearly full dev disk never
    turns indices read-only), ``action.destructive_requires_name: false`` (tests may
    delete by pattern), ``-Xms`` = ``-Xmx`` = ``heap``. Data survives ``stop()``/
    ``start()`` and ``kill()``/``start()``.

    Ready means ``GET /_cluster/health?wait_for_status=yellow`` answered yellow or
    green: the HTTP layer is up, a master is elected, and after a restart every primary
    shard is allocated again.

    The first ``start()`` may fetch the distribution (see ``ensure_elasticsearch``).
    Configuration lives in ``<data_dir>/config`` (rewritten each start), the node's logs
    in ``<data_dir>/logs/sluice.log``, JVM output in ``<data_dir>/elasticsearch.log``.
    """

    name = "elasticsearch"
    start_timeout = 120.0  # two JVM starts on a busy 2-core box; about 7 s normally
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
        self.heap = _heap_option(heap)  # validates ``heap`` up front
        self._cache_dir = cache_dir
        self._home: Path | None = None
        self._java_home: Path | None = None
        self._env: str | None = None
        self._user: str | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def endpoint(self) -> str:
        return self.url

    @property
    def config_dir(self) -> Path:
        """``ES_PATH_CONF``: this node's own copy of the configuration."""
        return self.data_dir / "config"

    @property
    def storage_dir(self) -> Path:
        """Elasticsearch's ``path.data``: indices and cluster state."""
        return self.data_dir / "data"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def tmp_dir(self) -> Path:
        """``ES_TMPDIR``, instead of a fresh directory under /tmp per start."""
        return self.data_dir / "tmp"

    @property
    def server_log(self) -> Path:
        return self.logs_dir / f"{CLUSTER_NAME}.log"

    def stop(self, timeout: float | None = None) -> None:
        was_running = self.is_running()
        super().stop(timeout)
        if was_running:
            self._wait_until_port_released()

    def kill(self) -> None:
        was_running = self.is_running()
        super().kill()
        if was_running:
            self._wait_until_port_released()

    def _wait_until_port_released(self) -> None:
        """Block until the node's HTTP port is free again (at most 15 s).

        The node is the launcher's child, not the process the base class waits for.
        After a clean stop the launcher outlives it, but after SIGKILL of the group the
        launcher is reaped while the node JVM may still be exiting and holding the
        port, and an immediate ``start()`` would find its own port taken.
        """
        deadline = time.monotonic() + _RELEASE_TIMEOUT
        while not is_port_free(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _prepare(self) -> None:
        self._home = ensure_elasticsearch(self._cache_dir)
        self._java_home = find_java_home()
        self._env = shutil.which("env")
        if self._env is None:
            raise EmbeddedServiceError("`env` is not on PATH")
        for directory in (self.config_dir, self.storage_dir, self.logs_dir, self.tmp_dir):
            directory.mkdir(exist_ok=True)
        self._write_config(self._home)
        if os.geteuid() == 0:
            self._hand_over_to_system_user(self._home)

    def _write_config(self, home: Path) -> None:
        for name in _DISTRIBUTION_CONFIG:
            shutil.copyfile(home / "config" / name, self.config_dir / name)
        options = self.config_dir / "jvm.options.d"
        options.mkdir(exist_ok=True)
        (options / "sluice.options").write_text("\n".join([*_jvm_options(self.heap), ""]))
        settings = {
            "cluster.name": CLUSTER_NAME,
            "node.name": CLUSTER_NAME,
            "discovery.type": "single-node",
            "network.host": LOOPBACK,
            "http.port": str(self.port),
            "transport.port": "0",
            "path.data": str(self.storage_dir),
            "path.logs": str(self.logs_dir),
            "cluster.routing.allocation.disk.threshold_enabled": "false",
            "action.destructive_requires_name": "false",
            # On by default in 8.x: every request would need credentials over TLS.
            "xpack.security.enabled": "false",
        }
        (self.config_dir / "elasticsearch.yml").write_text(_yaml(settings))

    def _hand_over_to_system_user(self, home: Path) -> None:
        entry = ensure_system_user(SYSTEM_USER, "Elasticsearch")
        self._user = entry.pw_name
        make_traversable(self.data_dir)
        make_traversable(home)
        for directory in (self.storage_dir, self.logs_dir, self.tmp_dir):
            chown_tree(directory, entry)
        # Rewritten by us (root) on every start, and the node creates its keystore in
        # there: always hand the whole (small) directory over again.
        for path in (self.config_dir, *self.config_dir.rglob("*")):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run_as(self) -> str | None:
        return self._user

    def _command(self) -> list[str]:
        assert self._home is not None, "_prepare runs first"
        assert self._java_home is not None, "_prepare runs first"
        assert self._env is not None, "_prepare runs first"
        # The start script reads its settings from the environment; EmbeddedService
        # spawns with ours, so they are passed through env(1). JAVA_HOME is dropped
        # because the script warns that it ignores it, ES_JAVA_OPTS so that a
        # developer's own cannot change this node's heap.
        return [
            self._env,
            "-u",
            "JAVA_HOME",
            "-u",
            "ES_JAVA_OPTS",
            f"ES_JAVA_HOME={self._java_home}",
            f"ES_PATH_CONF={self.config_dir}",
            f"ES_TMPDIR={self.tmp_dir}",
            str(self._home / "bin" / "elasticsearch"),
        ]

    def _extra_logs(self) -> list[Path]:
        return [self.server_log]

    def _is_ready(self) -> bool:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=_PROBE_TIMEOUT)
        try:
            conn.request("GET", "/_cluster/health?wait_for_status=yellow&timeout=1s")
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        # 408 means "not yellow within the timeout": not ready yet.
        return response.status == 200 and json.loads(body)["status"] in ("yellow", "green")
