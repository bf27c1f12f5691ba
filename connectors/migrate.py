"""Apply the numbered SQL migrations in ``connectors/migrations/`` to a database.

``sluice migrate`` (and ``sluice dev``) call :func:`main_migrate`. Each file
``NNNN_description.sql`` runs in a transaction of its own and is recorded in
``schema_migrations(version, name, applied_at)`` in that same transaction, so a failed
file leaves nothing behind and is retried whole next time. Every transaction first takes
one PostgreSQL advisory lock (``pg_advisory_xact_lock``): processes that start at once
(several workers, ``migrate`` next to ``dev``) apply each file exactly once, the others
wait and then find it done. Versions recorded in the database but unknown to this code
(a newer release migrated first) are left alone.

Synchronous and blocking (one connection); async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Final

import psycopg

from base.errors import SluiceError, TransientError

__all__ = [
    "MIGRATIONS_PACKAGE",
    "Migration",
    "MigrationError",
    "applied_versions",
    "apply_migrations",
    "load_migrations",
    "main_migrate",
]

_log = logging.getLogger(__name__)

MIGRATIONS_PACKAGE: Final = "connectors.migrations"
"""Where the shipped ``NNNN_description.sql`` files live."""

_FILE_NAME: Final = re.compile(r"^(?P<version>\d{4})_(?P<label>[a-z0-9_]+)\.sql$")
# One fixed key for every Sluice migrator ("sluice:m" as a big-endian int64).
_LOCK_KEY: Final = int.from_bytes(b"sluice:m", "big", signed=True)
_CONNECT_TIMEOUT_S: Final = 10

_LOCK: Final = "SELECT pg_advisory_xact_lock(%s)"
_CREATE_LEDGER: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text        PRIMARY KEY,
    name        text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""
_APPLIED: Final = "SELECT version FROM schema_migrations ORDER BY version"
_LEDGER_EXISTS: Final = "SELECT to_regclass('schema_migrations') IS NOT NULL"
_RECORD: Final = "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)"


class MigrationError(SluiceError):
    """The migration files are malformed, or one of them failed to apply."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file.

    :param version: the four-digit number, e.g. ``"0001"`` (the ledger key).
    :param name: the file name without ``.sql``, e.g. ``"0001_webhooks_and_billing"``.
    :param sql: the file's statements, run as they are in one transaction.
    """

    version: str
    name: str
    sql: str


def load_migrations(directory: Traversable | Path | None = None) -> list[Migration]:
    """Read every ``NNNN_description.sql`` in ``directory`` (default: the shipped ones).

    Returns them ordered by version. Raises ``MigrationError`` for a ``.sql`` file whose
    name does not follow the pattern, or for two files with the same number.
    """
    root: Traversable | Path = (
        resources.files(MIGRATIONS_PACKAGE) if directory is None else directory
    )
    found: dict[str, Migration] = {}
    for entry in root.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_NAME.match(entry.name)
        if match is None:
            raise MigrationError(
                f"migration file {entry.name!r} is not named NNNN_description.sql "
                "(four digits, then lower-case letters, digits and underscores)"
            )
        version = match["version"]
        name = entry.name.removesuffix(".sql")
        if version in found:
            raise MigrationError(
                f"migrations {found[version].name!r} and {name!r} share version {version}"
            )
        found[version] = Migration(version, name, entry.read_text(encoding="utf-8"))
    return [found[version] for version in sorted(found)]


def apply_migrations(dsn: str, migrations: Sequence[Migration] | None = None) -> list[str]:
    """Apply every migration not yet recorded in ``schema_migrations``, in version order.

    Returns the names of the migrations this call applied (``[]`` when the database was
    up to date). Idempotent, and safe to run from several processes at once: each file
    is applied exactly once, under the advisory lock, in its own transaction.

    Blocks for as long as the migrations take, plus any wait for a concurrent migrator.

    :param migrations: what to apply; the shipped files by default.
    :raises TransientError: the database cannot be reached, or the connection was lost.
    :raises MigrationError: a migration failed (it was rolled back and is not recorded;
        the ones before it stay applied).
    """
    wanted = load_migrations() if migrations is None else list(migrations)
    applied: list[str] = []
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S) as conn:
            while (migration := _apply_next(conn, wanted)) is not None:
                applied.append(migration.name)
                _log.info("applied migration %s", migration.name)
    except psycopg.OperationalError as exc:
        raise TransientError(f"migrations: database unavailable: {_describe(exc)}") from exc
    return applied


def applied_versions(dsn: str) -> list[str]:
    """The versions recorded in ``schema_migrations``, oldest first (``[]`` if none).

    :raises TransientError: the database cannot be reached.
    """
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S) as conn:
            exists = conn.execute(_LEDGER_EXISTS).fetchone()
            if not exists or not exists[0]:
                return []
            return [str(row[0]) for row in conn.execute(_APPLIED)]
    except psycopg.OperationalError as exc:
        raise TransientError(f"migrations: database unavailable: {_describe(exc)}") from exc


def main_migrate(database_url: str) -> int:
    """Entry point of ``sluice migrate``: apply, print one line per applied file.

    Returns the exit status (0). Raises ``TransientError`` or ``MigrationError`` (both
    ``SluiceError``) for the CLI to report; the URL is never printed (it may hold a
    password).
    """
    applied = apply_migrations(database_url)
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print("database schema is up to date")
    return 0


def _apply_next(
    conn: psycopg.Connection[tuple[object, ...]], wanted: Iterable[Migration]
) -> Migration | None:
    """Apply the first pending migration in one locked transaction; None if none is."""
    with conn.transaction():
        conn.execute(_LOCK, (_LOCK_KEY,))
        conn.execute(_CREATE_LEDGER)
        done = {str(row[0]) for row in conn.execute(_APPLIED)}
        pending = next((m for m in wanted if m.version not in done), None)
        if pending is None:
            return None
        try:
            # bytes: run as written (no placeholder parsing); several statements are fine.
            conn.execute(pending.sql.encode("utf-8"))
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            raise MigrationError(f"migration {pending.name} failed: {_describe(exc)}") from exc
        conn.execute(_RECORD, (pending.version, pending.name))
    return pending


def _describe(exc: psycopg.Error) -> str:
    """Class, SQLSTATE and primary message only: DETAIL lines can quote row values."""
    sqlstate = f" [{exc.sqlstate}]" if exc.sqlstate else ""
    lines = str(exc).strip().splitlines()
    message = exc.diag.message_primary or (lines[0] if lines else "")
    return f"{type(exc).__name__}{sqlstate}: {message}"
