"""A real Confluent-compatible schema registry: Apicurio Registry, for the tests.

Apicurio Registry serves the Confluent schema registry REST API (its "ccompat" API) at
``/apis/ccompat/v7``, which is what ``confluent_kafka.schema_registry`` speaks, so the
codec's registry mode is tested against a real registry. It is the stock Quarkus
application from Maven Central (``io.apicurio:apicurio-registry-app``, the ``all``
tarball), run with the machine's Java: ``ensure_registry_app`` fetches and unpacks it
once into the cache (~110 MB), and ``SchemaRegistry`` runs it as a child process with its
in-memory storage (nothing survives a restart, which is what tests want).

3.0.9 is deliberately not the newest 3.x: later releases are compiled for Java 21, and
Java 17 is the Java every Sluice machine has.

The registry starts BACKWARD compatible (``PUT /config``), like a Confluent registry's
default; Apicurio itself checks nothing until a rule is set. Deleting subjects is enabled,
so tests can start from an empty registry (:meth:`SchemaRegistry.delete_all_subjects`).

Fetch the application ahead of time (a CI cache warm-up)::

    python -m devstack.fetch registry [--cache-dir DIR]
"""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from devstack.host import exclusive_lock, read_text, run_maven
from devstack.kafka import default_cache_dir, find_java
from devstack.ports import LOOPBACK
from devstack.process import EmbeddedService, EmbeddedServiceError

__all__ = ["APICURIO_VERSION", "SchemaRegistry", "ensure_registry_app"]

APICURIO_VERSION = "3.0.9"
_ARTIFACT = f"io.apicurio:apicurio-registry-app:{APICURIO_VERSION}:tar.gz:all"
_RUNNER = f"apicurio-registry-app-{APICURIO_VERSION}-runner.jar"
_MARKER = ".complete"
_CCOMPAT = "/apis/ccompat/v7"
_JSON = "application/vnd.schemaregistry.v1+json"

_log = logging.getLogger(__name__)


def ensure_registry_app(cache_dir: Path | None = None) -> Path:
    """Return ``<cache>/apicurio-registry-<version>``, which holds the runner jar.

    Idempotent (a marker file), safe across processes (a file lock). The first call runs
    Maven and blocks until the download is unpacked. Raises ``EmbeddedServiceError`` when
    Maven is missing or cannot fetch the application.
    """
    home = (cache_dir or default_cache_dir()) / f"apicurio-registry-{APICURIO_VERSION}"
    stamp = f"{_ARTIFACT}\n"
    if read_text(home / _MARKER) == stamp:
        return home
    home.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(home.parent / f"apicurio-registry-{APICURIO_VERSION}.lock"):
        if read_text(home / _MARKER) != stamp:
            _fetch(home)
            (home / _MARKER).write_text(stamp)
    return home


def _fetch(home: Path) -> None:
    staging = home.with_name(home.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _log.info("fetching Apicurio Registry %s into %s", APICURIO_VERSION, home)
    # The application's parent POM (io.apicurio:apicurio-registry) is not served for this
    # version, and ``copy`` or a newer plugin's ``get`` read it before fetching anything;
    # plugin 2.8's ``get`` without dependencies does not. The local repository is named
    # so the file is found where Maven put it.
    repository = Path.home() / ".m2" / "repository"
    archive_path = (
        repository
        / "io/apicurio/apicurio-registry-app"
        / APICURIO_VERSION
        / f"apicurio-registry-app-{APICURIO_VERSION}-all.tar.gz"
    )
    run_maven(
        [
            f"-Dmaven.repo.local={repository}",
            "org.apache.maven.plugins:maven-dependency-plugin:2.8:get",
            f"-Dartifact={_ARTIFACT}",
            "-Dtransitive=false",
        ],
        what=f"Apicurio Registry {APICURIO_VERSION}",
        home=home,
        produced=archive_path.is_file,
        cwd=staging,
    )
    with tarfile.open(archive_path) as archive:
        archive.extractall(staging, filter="data")
    if not (staging / _RUNNER).is_file():
        raise EmbeddedServiceError(f"the Apicurio Registry archive has no {_RUNNER}")
    # Swap in whole: a registry never starts from a half-unpacked directory.
    shutil.rmtree(home, ignore_errors=True)
    staging.rename(home)


class SchemaRegistry(EmbeddedService):
    """Apicurio Registry on 127.0.0.1, in-memory, BACKWARD compatible by default.

    :attr:`url` is the Confluent-compatible API's base URL (give it to
    ``SCHEMA_REGISTRY_URL``). Ready means ``GET /subjects`` answered and the global
    compatibility level is set.
    """

    name = "schema-registry"
    start_timeout = 180.0  # a Quarkus start on a busy two-CPU machine takes 10-40 s
    stop_timeout = 30.0
    ready_interval = 0.25

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        heap: str = "256m",
        cache_dir: Path | None = None,
    ) -> None:
        super().__init__(data_dir, port)
        self._heap = heap
        self._cache_dir = cache_dir
        self._home: Path | None = None
        self._java: str | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}{_CCOMPAT}"

    @property
    def endpoint(self) -> str:
        return self.url

    def delete_all_subjects(self) -> None:
        """Delete every subject and its versions for good (soft, then permanently)."""
        for subject in self.request("GET", "/subjects"):
            for permanent in ("false", "true"):
                self.request("DELETE", f"/subjects/{_quote(subject)}?permanent={permanent}")

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One call to the Confluent-compatible API; the decoded JSON answer.

        :raises EmbeddedServiceError: on an error status.
        """
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 (a loopback http URL we built)
            self.url + path, data=data, method=method, headers={"Content-Type": _JSON}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise EmbeddedServiceError(
                f"schema registry {method} {path}: HTTP {exc.code} {detail}"
            ) from None

    def _prepare(self) -> None:
        self._home = ensure_registry_app(self._cache_dir)
        self._java = find_java()

    def _command(self) -> list[str]:
        assert self._home is not None, "_prepare runs first"
        assert self._java is not None, "_prepare runs first"
        return [
            self._java,
            f"-Xmx{self._heap}",
            "-Xms64m",
            f"-Dquarkus.http.host={LOOPBACK}",
            f"-Dquarkus.http.port={self.port}",
            # Tests delete subjects to start from an empty registry.
            "-Dapicurio.rest.deletion.artifact.enabled=true",
            "-Dapicurio.rest.deletion.artifact-version.enabled=true",
            "-Dapicurio.rest.deletion.group.enabled=true",
            "-Dquarkus.log.level=WARN",
            "-jar",
            str(self._home / _RUNNER),
        ]

    def _is_ready(self) -> bool:
        try:
            self.request("GET", "/subjects")
            self.request("PUT", "/config", {"compatibility": "BACKWARD"})
        except (OSError, EmbeddedServiceError):
            return False
        return True


def _quote(subject: str) -> str:
    from urllib.parse import quote

    return quote(subject, safe="")
