"""A real PostgreSQL server for ``sluice dev`` and the tests.

Binaries come from the system when it has them (``pg_config --bindir``, else the highest
``/usr/lib/postgresql/*/bin``), else from the ``pgserver`` wheel, so a plain ``uv sync``
is enough to get a PostgreSQL.

PostgreSQL refuses to run as root. When we are root (CI containers, this dev box) the
cluster is owned by, and the server runs as, a dedicated unprivileged system user; the
child drops privileges itself, so the rest of the process stays root.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import psycopg
from psycopg import errors, sql

from devstack.host import chown_tree, ensure_system_user, make_traversable
from devstack.ports import LOOPBACK
from devstack.process import EmbeddedService, EmbeddedServiceError, run_logged

__all__ = ["SYSTEM_USER", "PostgresServer", "bundled_postgres_bindir", "find_postgres_bindir"]

#: Unprivileged account the server runs as when we are root.
SYSTEM_USER = "sluice-pg"

_INITDB_TIMEOUT = 180.0
# sun_path holds 108 bytes including the NUL; PostgreSQL appends "/.s.PGSQL.<port>".
_MAX_SOCKET_PATH = 107
# Durability off: for throwaway test clusters only, where speed is all that matters.
_FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def find_postgres_bindir(major: str | None = None) -> Path:
    """Return a directory holding ``postgres`` and ``initdb``.

    Order of preference: ``pg_config --bindir``, the highest ``/usr/lib/postgresql/*/bin``,
    then pgserver's bundled binaries. With ``major`` (an existing cluster's
    ``PG_VERSION``) only a matching major version will do, because a cluster cannot be
    opened by another major version. Runs ``postgres --version`` (blocks briefly).
    Raises ``EmbeddedServiceError`` when nothing suitable is found.
    """
    candidates = _candidate_bindirs()
    if not candidates:
        raise EmbeddedServiceError(
            "no PostgreSQL binaries found: install PostgreSQL or the pgserver package (`uv sync`)"
        )
    if major is None:
        return candidates[0]
    for bindir in candidates:
        if _major_version(bindir) == major:
            return bindir
    found = ", ".join(f"{d} ({_major_version(d)})" for d in candidates)
    raise EmbeddedServiceError(
        f"the cluster was created by PostgreSQL {major} but only these binaries exist: {found}"
    )


def _candidate_bindirs() -> list[Path]:
    found: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=10
        )
        if out.returncode == 0:
            found.append(Path(out.stdout.strip()))
    system = Path("/usr/lib/postgresql")
    if system.is_dir():
        versioned = (p / "bin" for p in system.iterdir() if p.name.isdigit())
        found.extend(sorted(versioned, key=lambda p: int(p.parent.name), reverse=True))
    bundled = bundled_postgres_bindir()
    if bundled is not None:
        found.append(bundled)
    usable = [d for d in found if (d / "postgres").is_file() and (d / "initdb").is_file()]
    return list(dict.fromkeys(usable))  # de-duplicate, keep order


def bundled_postgres_bindir() -> Path | None:
    """The binaries shipped in the pgserver wheel, if it is installed."""
    spec = importlib.util.find_spec("pgserver")  # located, not imported: its import is heavy
    if spec is None or spec.origin is None:
        return None
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    return bindir if (bindir / "postgres").is_file() else None


def _major_version(bindir: Path) -> str | None:
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=10,
    )
    match = re.search(r"\(PostgreSQL\) (\d+)", out.stdout)
    return match.group(1) if match else None


class PostgresServer(EmbeddedService):
    """A PostgreSQL cluster under ``data_dir`` served on 127.0.0.1 with trust auth.

    ``initdb`` runs on the first start only (superuser ``postgres``, UTF8, C locale);
    data survives ``stop()``/``start()`` and ``kill()``/``start()`` (crash recovery).
    ``fast=True`` turns durability off (fsync, synchronous commit, full-page writes):
    for test sessions only. Note that with ``synchronous_commit=off`` a ``kill()`` can
    lose the last few hundred milliseconds of acknowledged commits (the WAL writer had
    not written them yet); ``stop()`` loses nothing. Ready means a psycopg connection
    ran ``SELECT 1``.
    """

    name = "postgres"
    # SIGINT is PostgreSQL's "fast" shutdown. SIGTERM ("smart") waits for every client
    # to disconnect, so a test holding a pool would make stop() hang until SIGKILL.
    stop_signal = signal.SIGINT
    start_timeout = 60.0
    stop_timeout = 30.0

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        fast: bool = False,
        bindir: Path | None = None,
    ) -> None:
        """``bindir`` pins the binaries; by default ``find_postgres_bindir`` picks them."""
        super().__init__(data_dir, port)
        self.fast = fast
        self._bindir = bindir
        self._user: str | None = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def url(self) -> str:
        return self._url("postgres")

    @property
    def endpoint(self) -> str:
        return self.url

    def create_database(self, name: str) -> str:
        """Create database ``name`` unless it exists; return its URL.

        Idempotent. Blocks on one connection. Requires a running server; raises
        ``psycopg.Error`` otherwise.
        """
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            query = "SELECT 1 FROM pg_database WHERE datname = %s"
            if conn.execute(query, (name,)).fetchone() is None:
                # Created concurrently meanwhile? The end state is what was asked for.
                with contextlib.suppress(errors.DuplicateDatabase):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self._url(name)

    def _url(self, database: str) -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/{database}"

    def _prepare(self) -> None:
        existing = self.pgdata / "PG_VERSION"
        major = existing.read_text().strip() if existing.is_file() else None
        if self._bindir is None:  # keep the binaries that created the cluster
            self._bindir = find_postgres_bindir(major)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            self._hand_over_to_system_user()
        if major is None:
            self._initdb()

    def _hand_over_to_system_user(self) -> None:
        assert self._bindir is not None
        entry = ensure_system_user(SYSTEM_USER, "PostgreSQL")
        self._user = entry.pw_name
        make_traversable(self.data_dir)
        make_traversable(self._bindir)
        chown_tree(self.pgdata, entry)
        chown_tree(self.socket_dir, entry)

    def _initdb(self) -> None:
        assert self._bindir is not None
        argv = [
            str(self._bindir / "initdb"),
            "-D",
            str(self.pgdata),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",  # C collation: same sort order on every machine
        ]
        if self.fast:
            argv.append("--no-sync")
        run_logged(
            self.name,
            argv,
            self.log_path,
            timeout=_INITDB_TIMEOUT,
            user=self._user,
            cwd=self.data_dir,
        )

    def _run_as(self) -> str | None:
        return self._user

    def _command(self) -> list[str]:
        assert self._bindir is not None, "_prepare runs first"
        argv = [
            str(self._bindir / "postgres"),
            "-D",
            str(self.pgdata),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={LOOPBACK}",
        ]
        socket = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(str(socket)) <= _MAX_SOCKET_PATH:
            argv += ["-k", str(self.socket_dir)]
        else:
            # A deep data dir cannot hold the socket; we only ever connect over TCP.
            argv += ["-c", "unix_socket_directories="]
        if self.fast:
            for setting in _FAST_SETTINGS:
                argv += ["-c", setting]
        return argv

    def _is_ready(self) -> bool:
        # Connecting fails with "the database system is starting up" until recovery
        # is over, so a successful query means clients can really use the server.
        with psycopg.connect(self.url, autocommit=True, connect_timeout=2) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
